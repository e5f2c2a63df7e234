# PYTHON_ARGCOMPLETE_OK
"""loka: train with Loka from your terminal. Every command talks to the cluster of your kubeconfig, like kubectl.

A day with Loka:
  loka init qwen-math --model hf://Qwen/Qwen2.5-1.5B-Instruct --data s3://data/math/ --gpus 8 --queue team-a
  loka secrets sync                      # W&B key, HF token, S3 keys from .env into the run's Secrets
  loka dataset tasks.jsonl -o data --upload s3://data/math/
  loka submit -f qwen-math.yaml --wait
  loka status qwen-math -w               # loka logs qwen-math -f, loka dashboard qwen-math
  loka checkpoints qwen-math --download 300 ./weights
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from loka_cli.errors import EXIT_CODES, EXIT_INTERRUPTED, CliError, exit_code
from loka_client.errors import LokaError

Handler = Callable[[argparse.Namespace], int]


def _client(args: argparse.Namespace, env: dict[str, str] | None = None, endpoint: str | None = None) -> Any:
    """The client library, pointed where kubectl would point (and at S3 with ``env``'s settings)."""
    from loka_client import Client

    return Client(args.namespace, kubeconfig=args.kubeconfig, context=args.context, s3_settings=env,
                  s3_endpoint=endpoint)  # fmt: skip


def _env(args: argparse.Namespace) -> dict[str, str]:
    from loka_cli.envfile import load_env

    return load_env(getattr(args, "env_file", None))


# ----------------------------------------------------------------------------------------- commands


def cmd_init(args: argparse.Namespace) -> int:
    from loka_cli.environments import EnvOptions, parse_headers, parse_secrets
    from loka_cli.init import InitOptions, write_init

    env = _env(args)
    environment = None
    if args.env_url:
        environment = EnvOptions(
            url=args.env_url, headers=parse_headers(args.env_header), secrets=parse_secrets(args.env_secret),
            tokenizer=args.tokenizer,
        )  # fmt: skip
    namespace = args.namespace or _context_namespace(args) or "default"
    options = InitOptions(
        name=args.name, namespace=namespace, model=args.model, data=args.data, gpus=args.gpus, workers=args.workers,
        queue=args.queue, cluster_queue=args.cluster_queue, image=args.image, steps=args.steps,
        checkpoints=args.checkpoints, reward=args.reward, builtin=args.builtin, environment=environment,
    )  # fmt: skip
    return write_init(options, env, output=args.output, force=args.force)


def _context_namespace(args: argparse.Namespace) -> str | None:
    """The kube context's namespace, read from the kubeconfig only (init works without a cluster)."""
    try:
        from kubernetes import config

        contexts, active = config.list_kube_config_contexts(config_file=args.kubeconfig)  # type: ignore[no-untyped-call]
    except Exception:
        return None
    chosen = next((c for c in contexts if c["name"] == args.context), None) if args.context else active
    namespace: str | None = ((chosen or {}).get("context") or {}).get("namespace")
    return namespace


def cmd_secrets_sync(args: argparse.Namespace) -> int:
    from loka_cli.secret_sync import sync

    return sync(_client(args), _env(args), run_secret=args.secret, s3_secret=args.s3_secret)


def cmd_dataset(args: argparse.Namespace) -> int:
    from loka_cli.datasets import dataset

    return dataset(
        args.tasks, args.output, validation_fraction=args.validation_fraction, seed=args.seed,
        data_source=args.data_source, ability=args.ability, upload=args.upload,
        env=_env(args) if args.upload else {}, allowed_hosts=args.allowed_host, run_file=args.run,
    )  # fmt: skip


def cmd_submit(args: argparse.Namespace) -> int:
    from loka_cli import resources, runs

    return resources.submit(_client(args), runs.PRINTER, args.file, wait=args.wait, timeout=args.timeout,
                            force_conflicts=args.force_conflicts, dry_run=args.dry_run)  # fmt: skip


def cmd_status(args: argparse.Namespace) -> int:
    from loka_cli import resources, runs

    client = _client(args)
    return resources.status(
        client, runs.PRINTER, args.name, watch=args.watch, all_namespaces=args.all_namespaces, output=args.output,
        timeout=args.timeout,
        watcher=lambda name: runs.watch_live(client, name, timeout=args.timeout, output=args.output),
    )  # fmt: skip


def cmd_logs(args: argparse.Namespace) -> int:
    from loka_cli.ray import logs

    return logs(_client(args), args.name, follow=args.follow, attempt=args.attempt)


def cmd_dashboard(args: argparse.Namespace) -> int:
    from loka_cli.ray import dashboard

    return dashboard(_client(args), args.name, port=args.port, address=args.address)


def cmd_checkpoints(args: argparse.Namespace) -> int:
    from loka_cli import checkpoints

    if args.download:
        step, folder = args.download
        try:
            number = int(step)
        except ValueError as error:
            raise CliError(f"--download: step {step!r} is not a number", code=2) from error
        return checkpoints.download(_client(args, _env(args), args.endpoint), args.name, number, Path(folder))
    return checkpoints.show(_client(args, _env(args), args.endpoint), args.name, output=args.output)


def cmd_suspend(args: argparse.Namespace) -> int:
    from loka_cli.runs import set_suspend

    return set_suspend(_client(args), args.name, True)


def cmd_resume(args: argparse.Namespace) -> int:
    from loka_cli.runs import set_suspend

    return set_suspend(_client(args), args.name, False)


def cmd_delete(args: argparse.Namespace) -> int:
    from loka_cli import resources, runs

    return resources.delete(_client(args), runs.PRINTER, args.name, wait=args.wait, timeout=args.timeout)


# `loka eval` and `loka cycle`: the same commands on another kind, each printed by its module's PRINTER.
KIND_MODULES = {"eval": "loka_cli.evaluations", "cycle": "loka_cli.cycles"}


def _printer(args: argparse.Namespace) -> Any:
    from importlib import import_module

    return import_module(KIND_MODULES[args.command]).PRINTER


def cmd_kind_submit(args: argparse.Namespace) -> int:
    from loka_cli import resources

    return resources.submit(_client(args), _printer(args), args.file, wait=args.wait, timeout=args.timeout,
                            dry_run=args.dry_run)  # fmt: skip


def cmd_kind_list(args: argparse.Namespace) -> int:
    from loka_cli import resources

    return resources.listing(_client(args), _printer(args), all_namespaces=args.all_namespaces, output=args.output)


def cmd_kind_status(args: argparse.Namespace) -> int:
    from loka_cli import resources

    return resources.status(_client(args), _printer(args), args.name, watch=args.watch,
                            all_namespaces=args.all_namespaces, output=args.output, timeout=args.timeout)  # fmt: skip


def cmd_kind_wait(args: argparse.Namespace) -> int:
    from loka_cli import resources

    return resources.wait(_client(args), _printer(args), args.name, timeout=args.timeout)


def cmd_kind_delete(args: argparse.Namespace) -> int:
    from loka_cli import resources

    return resources.delete(_client(args), _printer(args), args.name, wait=args.wait, timeout=args.timeout)


def cmd_completion(args: argparse.Namespace) -> int:
    from argcomplete.shell_integration import shellcode

    print(shellcode(["loka", "kubectl-loka"], shell=args.shell))
    return 0


# ------------------------------------------------------------------------------------------- parser


def _run_names(prefix: str, parsed_args: argparse.Namespace, **_: Any) -> list[str]:
    """Shell completion of run names in the namespace the command line names."""
    try:
        runs = _client(parsed_args).list()
    except Exception:
        return []
    return [r.name for r in runs if r.name.startswith(prefix)]


def build_parser() -> argparse.ArgumentParser:  # noqa: PLR0915  (one place lists every command)
    cluster_flags = argparse.ArgumentParser(add_help=False)
    group = cluster_flags.add_argument_group("cluster (as kubectl)")
    group.add_argument(
        "-n", "--namespace", default=argparse.SUPPRESS, help="namespace (default: the context's, else default)"
    )
    group.add_argument("--context", default=argparse.SUPPRESS, help="kubeconfig context (default: the current one)")
    group.add_argument(
        "--kubeconfig", default=argparse.SUPPRESS, help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)"
    )
    output_flag = argparse.ArgumentParser(add_help=False)
    output_flag.add_argument("-o", "--output", choices=("json", "yaml"), help="print the objects as JSON or YAML")
    env_flag = argparse.ArgumentParser(add_help=False)
    env_flag.add_argument("--env-file", "--from", dest="env_file", type=Path, default=None,
                          help="settings file (default: ./.env when it exists; the environment fills in)")  # fmt: skip

    parser = argparse.ArgumentParser(
        prog="loka", description=__doc__, epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[cluster_flags],
    )  # fmt: skip
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, handler: Handler, help_: str, *parents: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_, description=help_, parents=[cluster_flags, *parents])
        sub.set_defaults(handler=handler)
        return sub

    def run_name(sub: argparse.ArgumentParser, *, optional: bool = False) -> None:
        action = sub.add_argument("name", metavar="NAME", nargs="?" if optional else None, help="the TrainingRun")
        action.completer = _run_names  # type: ignore[attr-defined]

    init = command(
        "init", cmd_init, "write a commented NAME.yaml for a new run (from flags, .env and the kube context)", env_flag
    )
    init.add_argument("name", metavar="NAME", help="the run's name (lowercase letters, digits, '-')")
    init.add_argument(
        "--model",
        help="hf://org/model, s3://bucket/prefix or builtin://tiny-qwen2 (default: $LOKA_MODEL, else Qwen2.5-0.5B)",
    )
    init.add_argument(
        "--data",
        help="s3:// prefix holding train/validation.parquet, a .parquet, or builtin://arithmetic (default: $LOKA_DATA)",
    )
    init.add_argument(
        "--builtin",
        action="store_true",
        help="try Loka with nothing uploaded: model builtin://tiny-qwen2 and data builtin://arithmetic, which the "
        "trainer builds itself (a tiny random Qwen2 and toy sums); --model/--data still win",
    )
    init.add_argument(
        "--gpus", type=int, default=8, help="GPUs per worker (default 8); 0 writes a CPU run (engine trl)"
    )
    init.add_argument("--workers", type=int, help="Ray worker pods (default 1)")
    init.add_argument("--queue", help="Kueue LocalQueue (default: $LOKA_QUEUE)")
    init.add_argument("--cluster-queue", help="the ClusterQueue, when Loka should create the LocalQueue")
    init.add_argument("--image", help="trainer image (default: $LOKA_IMAGE, else ghcr.io/loka-dev/loka:rl-train)")
    init.add_argument("--steps", type=int, help="stop after this many steps (training.maxSteps)")
    init.add_argument(
        "--checkpoints",
        help="s3:// prefix for checkpoints (default: $LOKA_CHECKPOINTS, else s3://<data bucket>/checkpoints/)",
    )
    init.add_argument("--reward", help="reward function module:function (default: the GSM8K reward)")
    init.add_argument(
        "--env", dest="env_url", metavar="URL",
        help="an MCP environment (streamable HTTP): list its tools and write an agent run on it, with its prompt",
    )  # fmt: skip
    init.add_argument(
        "--env-header", action="append", metavar="NAME=VALUE",
        help="a header to send it; ${VAR} is read from .env to connect and kept as a reference (repeat it)",
    )  # fmt: skip
    init.add_argument("--env-secret", action="append", metavar="VAR=SECRET/KEY", help="the Secret key behind ${VAR}")
    init.add_argument("--tokenizer", type=Path, metavar="DIR", help="with --env: preview the prompt in its template")
    init.add_argument("--output", "-f", dest="output", type=Path, help="file to write (default: NAME.yaml)")
    init.add_argument("--force", action="store_true", help="overwrite the file if it exists")

    secrets = commands.add_parser(
        "secrets", help="manage the Secrets a run refers to", description="manage the Secrets a run refers to"
    )
    secrets_commands = secrets.add_subparsers(dest="secrets_command", metavar="COMMAND", required=True)
    sync = secrets_commands.add_parser(
        "sync", parents=[cluster_flags, env_flag],
        help="create or update loka-secrets (W&B, HF, Slack) and loka-s3 (S3 keys) from .env; prints key names only",
        description="create or update loka-secrets (wandb-api-key, hf-token, slack-webhook) and loka-s3 "
        "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) from .env or the environment; prints key names only",
    )  # fmt: skip
    sync.add_argument("--secret", default="loka-secrets", help="the run's Secret (default loka-secrets)")
    sync.add_argument("--s3-secret", default="loka-s3", help="the S3 credentials Secret (default loka-s3)")
    sync.set_defaults(handler=cmd_secrets_sync)

    data = command(
        "dataset", cmd_dataset, "turn a task file into verl's train/validation parquet (and upload it)", env_flag
    )
    data.add_argument("tasks", type=Path, metavar="TASKS", help="JSON Lines, or JSON holding a task or a list of tasks")
    data.add_argument(
        "-o", "--output", type=Path, required=True, help="folder for train.parquet and validation.parquet"
    )
    data.add_argument("--validation-fraction", type=float, default=0.1, help="share held out for validation (0.1)")
    data.add_argument("--upload", metavar="S3_PREFIX", help="upload both files there (all or nothing)")
    data.add_argument("--seed", default="loka", help="split seed: the same seed keeps each task on its side")
    data.add_argument("--data-source", default="loka", help="the data_source column (routes verl's reward)")
    data.add_argument("--ability", default="math", help="the ability column")
    data.add_argument(
        "--allowed-host", action="append", metavar="PATTERN",
        help="a host tasks' mcp_config URLs may name (glob, host:port pins the port; repeat it)",
    )  # fmt: skip
    data.add_argument(
        "--run", type=Path, metavar="RUN_YAML", help="take the allowed hosts from this run's spec.environment"
    )

    submit = command("submit", cmd_submit, "apply a run (server-side); with --wait, follow it to the end")
    submit.add_argument("-f", "--file", required=True, help="the run's YAML (- for stdin)")
    submit.add_argument(
        "--wait", action="store_true", help="follow the run until it succeeds (exit 0) or fails (exit 1)"
    )
    submit.add_argument("--timeout", type=float, default=24 * 3600, help="seconds --wait waits (default a day)")
    submit.add_argument("--force-conflicts", action="store_true", help="take over fields another manager owns")
    submit.add_argument("--dry-run", action="store_true", help="let the API server validate it, and change nothing")

    status = command(
        "status", cmd_status, "list runs, or show one run live (phase, progress, reward, queue, ETA)", output_flag
    )
    run_name(status, optional=True)
    status.add_argument("-w", "--watch", action="store_true", help="keep the view of NAME live until the run ends")
    status.add_argument("-A", "--all-namespaces", action="store_true", help="runs of every namespace")
    status.add_argument("--timeout", type=float, default=24 * 3600, help="seconds -w watches (default a day)")

    logs = command("logs", cmd_logs, "print the trainer's output (the Ray job's logs) of the current attempt")
    run_name(logs)
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing until the run ends")
    logs.add_argument("--attempt", type=int, help="an earlier attempt, while its Ray cluster still holds its logs")

    dash = command("dashboard", cmd_dashboard, "port-forward the run's Ray dashboard to localhost:8265")
    run_name(dash)
    dash.add_argument("--port", type=int, default=8265, help="local port (default 8265)")
    dash.add_argument("--address", default="127.0.0.1", help="local address to listen on (default 127.0.0.1)")

    ckpt = command(
        "checkpoints",
        cmd_checkpoints,
        "list a run's complete checkpoints, or download one verified",
        output_flag,
        env_flag,
    )
    run_name(ckpt)
    ckpt.add_argument(
        "--download",
        nargs=2,
        metavar=("STEP", "DIR"),
        help="download step STEP into a folder of DIR named after the step",
    )
    ckpt.add_argument("--endpoint", help="S3 endpoint (default: AWS_ENDPOINT_URL, else the run's storage.endpoint)")

    for name, handler, help_ in (
        ("suspend", cmd_suspend, "suspend a run: its Ray cluster is released, its checkpoints stay"),
        ("resume", cmd_resume, "resume a suspended run from its last checkpoint"),
    ):
        run_name(command(name, handler, help_))
    delete = command("delete", cmd_delete, "delete a run and its Ray cluster (checkpoints stay in S3)")
    run_name(delete)
    delete.add_argument("--wait", action=argparse.BooleanOptionalAction, default=True, help="wait until it is gone")
    delete.add_argument("--timeout", type=float, default=120, help="seconds to wait (default 120)")

    def subcommands(name: str, help_: str, description: str) -> Callable[..., argparse.ArgumentParser]:
        """A command with commands of its own (``loka eval``, ``loka cycle``); returns how to add one."""
        group = commands.add_parser(name, help=help_, description=description)
        sub = group.add_subparsers(dest=f"{name}_command", metavar="COMMAND", required=True)

        def add(command_name: str, handler: Handler, help_: str, *parents: argparse.ArgumentParser) -> Any:
            parser = sub.add_parser(command_name, help=help_, description=help_, parents=[cluster_flags, *parents])
            parser.set_defaults(handler=handler)
            return parser

        return add

    def submit_flags(sub: argparse.ArgumentParser, what: str) -> None:
        sub.add_argument("-f", "--file", required=True, help=f"the {what}'s YAML (- for stdin)")
        sub.add_argument("--wait", action="store_true", help="follow it until it succeeds (0) or fails (1)")
        sub.add_argument("--timeout", type=float, default=24 * 3600, help="seconds --wait waits (default a day)")
        sub.add_argument("--dry-run", action="store_true", help="let the API server validate it, change nothing")

    def status_flags(sub: argparse.ArgumentParser, what: str) -> None:
        sub.add_argument("name", metavar="NAME", nargs="?", help=f"the {what}")
        sub.add_argument("-w", "--watch", action="store_true", help="follow NAME until it ends")
        sub.add_argument("-A", "--all-namespaces", action="store_true", help=f"{what}s of every namespace")
        sub.add_argument("--timeout", type=float, default=24 * 3600, help="seconds -w follows (default a day)")

    def wait_flags(sub: argparse.ArgumentParser, what: str) -> None:
        sub.add_argument("name", metavar="NAME", help=f"the {what}")
        sub.add_argument("--timeout", type=float, default=24 * 3600, help="seconds to wait (default a day)")

    def delete_flags(sub: argparse.ArgumentParser, what: str) -> None:
        sub.add_argument("name", metavar="NAME", help=f"the {what}")
        sub.add_argument("--wait", action=argparse.BooleanOptionalAction, default=True, help="until it is gone")
        sub.add_argument("--timeout", type=float, default=120, help="seconds to wait (default 120)")

    # Evaluations (LLM judges over a run's rollouts): the run commands' names, under `loka eval`.
    eval_command = subcommands(
        "eval", "Evaluations: judge a run's rollouts (submit, status, wait, delete)",
        "Evaluations: LLM judges over a run's kept rollouts, writing scores and preference pairs",
    )  # fmt: skip
    submit_flags(eval_command("submit", cmd_kind_submit, "apply an Evaluation; with --wait, follow it to the end"),
                 "Evaluation")  # fmt: skip
    status_flags(eval_command("status", cmd_kind_status,
                              "list Evaluations, or show one (judges' parse and error rates, pairs)", output_flag),
                 "Evaluation")  # fmt: skip
    wait_flags(eval_command("wait", cmd_kind_wait, "wait until an Evaluation ends: 0 when it succeeded, 1 if not"),
               "Evaluation")  # fmt: skip
    delete_flags(eval_command("delete", cmd_kind_delete, "delete an Evaluation and its Job (its output stays in S3)"),
                 "Evaluation")  # fmt: skip

    # RewardCycles (RL, Evaluation, reward model, next RL): the same commands, under `loka cycle`.
    cycle_command = subcommands(
        "cycle", "RewardCycles: RL, judges, a reward model, RL again (submit, list, status, wait, delete)",
        "RewardCycles: RL bursts, each followed by an Evaluation of its rollouts and a reward model on the judges' "
        "preferences, which rewards the next burst",
    )  # fmt: skip
    submit_flags(cycle_command("submit", cmd_kind_submit, "apply a RewardCycle; with --wait, follow it to the end"),
                 "RewardCycle")  # fmt: skip
    cycle_list = cycle_command("list", cmd_kind_list, "list RewardCycles (phase, iteration, stage)", output_flag)
    cycle_list.add_argument("-A", "--all-namespaces", action="store_true", help="RewardCycles of every namespace")
    status_flags(cycle_command("status", cmd_kind_status,
                               "list RewardCycles, or show one: each iteration's stages, their phases and links",
                               output_flag),
                 "RewardCycle")  # fmt: skip
    wait_flags(cycle_command("wait", cmd_kind_wait, "wait until a RewardCycle ends: 0 when it succeeded, 1 if not"),
               "RewardCycle")  # fmt: skip
    delete_flags(cycle_command("delete", cmd_kind_delete,
                               "delete a RewardCycle and its stages (what they wrote stays in S3)"),
                 "RewardCycle")  # fmt: skip

    completion = command("completion", cmd_completion, "print the shell completion script (bash, zsh, fish)")
    completion.add_argument("shell", choices=("bash", "zsh", "fish"))
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("loka")
    except PackageNotFoundError:
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    if "_ARGCOMPLETE" in __import__("os").environ:
        import argcomplete

        argcomplete.autocomplete(parser)
    args = parser.parse_args(argv)
    for flag in ("namespace", "context", "kubeconfig"):
        if not hasattr(args, flag):
            setattr(args, flag, None)
    handler: Handler = args.handler
    try:
        return handler(args)
    except LokaError as error:
        print(f"loka: {error.message}", file=sys.stderr)
        if error.hint:
            print(f"  → {error.hint}", file=sys.stderr)
        return exit_code(error)
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return EXIT_INTERRUPTED


def kubectl_complete(argv: Sequence[str] | None = None) -> int:
    """`kubectl_complete-loka`: completions for `kubectl loka …` in cobra's protocol (candidates, then `:4`)."""
    words = list(sys.argv[1:] if argv is None else argv)
    if words and words[0] == "__complete":
        words = words[1:]
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    prefix = words[-1] if words else ""
    if len(words) <= 1:
        candidates = [name for name in commands.choices if name.startswith(prefix)]
    elif words[0] in {"status", "logs", "dashboard", "checkpoints", "suspend", "resume", "delete"}:
        namespace = None
        for flag in ("-n", "--namespace"):
            if flag in words[:-1]:
                namespace = words[words.index(flag) + 1]
        candidates = _run_names(prefix, argparse.Namespace(namespace=namespace, context=None, kubeconfig=None))
    else:
        candidates = []
    print("\n".join([*candidates, ":4"]))  # 4: ShellCompDirectiveNoFileComp
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
