"""``loka-trainer``: render the verl command for a TrainingRun, run it, build a dataset from task files, or write
the toy arithmetic task's data (RL prompts and SFT demonstrations).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
TOY_VALIDATION_FRACTION = 0.125


def _dataset(args: argparse.Namespace) -> int:
    from loka_api.dataset import DatasetError, build_dataset

    try:
        summary = build_dataset(
            args.tasks,
            args.output,
            validation_fraction=args.validation_fraction,
            seed=args.seed,
            data_source=args.data_source,
            ability=args.ability,
        )
    except DatasetError as error:
        for problem in error.problems:
            print(problem, file=sys.stderr)
        print(f"nothing written to {args.output}: fix the rows above and run again", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (OSError, ValueError) as error:
        print(f"loka-trainer dataset: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"{summary.train} ({summary.train_rows} rows)")
    print(f"{summary.validation} ({summary.validation_rows} rows)")
    return EXIT_OK


def _toy_data(args: argparse.Namespace) -> int:
    from loka_api.dataset import build_dataset
    from loka_trainer.tiny import write_sft_demonstrations, write_tasks

    # The same split on both sides: no task SFT trains on is held out for GRPO's validation.
    tasks = write_tasks(args.output / "tasks.jsonl", args.count)
    rl = build_dataset(tasks, args.output / "rl", validation_fraction=TOY_VALIDATION_FRACTION)
    sft_train, sft_validation = write_sft_demonstrations(
        args.output / "sft", args.count, validation_fraction=TOY_VALIDATION_FRACTION
    )
    for path in (rl.train, rl.validation, sft_train, sft_validation):
        print(path)
    return EXIT_OK


def _render(args: argparse.Namespace) -> int:
    from loka_trainer.runner import RenderError, render_command_line

    try:
        print(render_command_line(args.file, namespace=args.namespace, name=args.name))
    except RenderError as error:
        print(f"loka-trainer render: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    from loka_trainer.runner import run_from_environment

    return run_from_environment(work_dir=args.work_dir, kubeconfig=args.kubeconfig)


def _release(args: argparse.Namespace) -> int:
    from loka_trainer.release import release

    return release(stop=not args.wait, address=args.address)


def _evaluate(args: argparse.Namespace) -> int:
    from loka_trainer.evaluate import evaluate_from_environment

    return evaluate_from_environment(kubeconfig=args.kubeconfig)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loka-trainer", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    render = commands.add_parser("render", help="print the verl command for a TrainingRun manifest (no cluster)")
    render.add_argument("-f", "--file", type=Path, required=True, help="TrainingRun manifest (YAML)")
    render.add_argument("--namespace", help="namespace when the manifest has none (default: default)")
    render.add_argument("--name", help="which TrainingRun, when the file holds several (a pipeline)")
    render.set_defaults(handler=_render)

    run = commands.add_parser("run", help="run this pod's TrainingRun (LOKA_RUN_NAME / LOKA_RUN_NAMESPACE)")
    run.add_argument("--work-dir", type=Path, default=None, help="local staging folder (default: $HOME/loka-work)")
    run.add_argument("--kubeconfig", default=None, help="kubeconfig outside a pod (default: in-cluster, $KUBECONFIG)")
    run.set_defaults(handler=_run)

    release = commands.add_parser(
        "release", help="a Ray pod's preStop: stop the Ray jobs gracefully (head) and wait until they end"
    )
    release.add_argument("--wait", action="store_true", help="only wait until the head's jobs end (workers)")
    release.add_argument("--address", default=None, help="Ray dashboard URL (default: this pod's head)")
    release.set_defaults(handler=_release)
    evaluate = commands.add_parser(
        "evaluate", help="judge this pod's Evaluation (LOKA_EVALUATION_NAME / LOKA_EVALUATION_NAMESPACE)"
    )
    evaluate.add_argument("--kubeconfig", default=None, help="kubeconfig outside a pod (default: in-cluster)")
    evaluate.set_defaults(handler=_evaluate)

    dataset = commands.add_parser("dataset", help="turn a task file into verl's RL parquet files")
    dataset.add_argument("tasks", type=Path, help="JSON Lines, or JSON (a task or a list of them)")
    dataset.add_argument("-o", "--output", type=Path, required=True, help="folder for train/validation.parquet")
    dataset.add_argument("--validation-fraction", type=float, default=0.1, help="share of tasks held out (0.1)")
    dataset.add_argument("--seed", default="loka", help="split seed; the same seed gives the same split")
    dataset.add_argument("--data-source", default="loka", help="data_source column (verl's reward routing key)")
    dataset.add_argument("--ability", default="math", help="ability column")
    dataset.set_defaults(handler=_dataset)

    toy = commands.add_parser("toy-data", help="write the toy arithmetic task: RL parquet and SFT demonstrations")
    toy.add_argument("-o", "--output", type=Path, required=True, help="folder for rl/ and sft/ (train, validation)")
    toy.add_argument("--count", type=int, default=512, help="tasks to generate (512)")
    toy.set_defaults(handler=_toy_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        from loka_trainer.settings import redact_process_output

        # Before logging binds to stderr: the run's log becomes Ray's job log and KubeRay's RayJob message.
        redact_process_output()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
