"""Save on preemption with verl on one GPU, timed: SIGTERM halfway through a step, then resume.

Run from `.gpu-src` on the GPU machine after tests/gpu/unpack.sh (README.md beside this file):

    python3 tests/gpu/save_on_preemption.py [--manifest examples/gpu-smoke-run.yaml] [--after 4] [--steps 12]
                                            [--grace 120] [--name sop]

With ``--phase stop`` then ``--phase resume`` the two halves run as two commands (the report comes with the second).

1. `gpu_run.py NAME-stop`: a fresh run (checkpoints every ``--after`` steps), SIGTERM to `loka-trainer run`
   halfway through the step after checkpoint ``--after`` (what Ray's job stop sends when KubeRay deletes the
   cluster), with spec.preemption.gracePeriodSeconds = ``--grace``.
2. `gpu_run.py NAME-resume`: a new pod (empty disk) resumes from S3 and trains to ``--steps``.

Prints, from the runs' summaries, the trainer's log and S3: signal → saved (the marker names the step in flight),
saved → exit, the steps lost (the step in flight at the signal less the step resumed from; 0 when the step in
flight was saved), and the step the second run resumed from. $OUT gets both runs' archives.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RESULTS = Path("/tmp/lkout")
SAVED = re.compile(r"verl saved step (\d+) ([\d.]+) s after the stop")
NOT_SAVED = re.compile(r"verl could not save before the stop: (.*)|(the step in flight did not end .*): stopping")
RESUMED = re.compile(r"resuming from checkpoint step (\d+)")


def run(name: str, manifest: str, *extra: str) -> dict[str, object]:
    command = [sys.executable, str(REPO / "tests/gpu/gpu_run.py"), name, manifest, "--own-machine", *extra]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, cwd=REPO, check=False)
    summary: dict[str, object] = json.loads((RESULTS / name / "summary.json").read_text())
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", default="examples/gpu-smoke-run.yaml")
    parser.add_argument("--after", type=int, default=4, help="SIGTERM halfway through the step after this checkpoint")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--grace", type=int, default=120, help="spec.preemption.gracePeriodSeconds")
    parser.add_argument("--name", default="sop")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument(
        "--phase",
        choices=("all", "stop", "resume"),
        default="all",
        help="run both halves, or one per command (each is ~5 min: the device runs one command for at most 10)",
    )
    args = parser.parse_args()
    sets = [
        "--set", f"spec.training.maxSteps={args.steps}",
        "--set", f"spec.checkpoints.every={args.after}",
        "--set", "spec.checkpoints.resume=auto",
        "--set", f"spec.preemption.gracePeriodSeconds={args.grace}",
    ]  # fmt: skip

    if args.phase in {"all", "stop"}:
        run(f"{args.name}-stop", args.manifest, *sets, "--sigterm-after-checkpoint", str(args.after),
            "--timeout", str(args.timeout))  # fmt: skip
        if args.phase == "stop":
            return 0
    stop: dict[str, object] = json.loads((RESULTS / f"{args.name}-stop" / "summary.json").read_text())
    log = (RESULTS / f"{args.name}-stop" / "trainer.log").read_text(errors="replace")
    sigterm = stop.get("sigterm") or {}
    assert isinstance(sigterm, dict)
    in_flight = int(sigterm.get("last_step_done", 0)) + 1 if sigterm else None
    saved = SAVED.search(log)
    failed = NOT_SAVED.search(log)
    after = stop.get("checkpoints_after") or {}
    assert isinstance(after, dict)
    marker = (after.get("marker") or {}).get("step")
    exit_after = stop.get("exit_after_sigterm_s")

    resume = run(f"{args.name}-resume", args.manifest, *sets, "--timeout", str(args.timeout))
    resumed_log = (RESULTS / f"{args.name}-resume" / "trainer.log").read_text(errors="replace")
    resumed = RESUMED.search(resumed_log)
    resumed_from = int(resumed.group(1)) if resumed else None

    print("\n== save on preemption (verl, one GPU)")
    print(f"   SIGTERM halfway through step {in_flight} (checkpoint {sigterm.get('marker')} marked before it); "
          f"grace {args.grace} s")  # fmt: skip
    if saved:
        to_saved = float(saved.group(2))
        exit_s = float(exit_after) if isinstance(exit_after, (int, float)) else None
        print(f"   signal -> saved and marked: {to_saved:.1f} s (step {saved.group(1)})")
        if exit_s is not None:
            print(f"   saved -> trainer exit:      {exit_s - to_saved:.1f} s   (signal -> exit {exit_s:.1f} s)")
    else:
        print(f"   no save on the way out: {failed.group(0) if failed else 'see trainer.log'}")
    print(f"   marker after exit: step {marker}; exit code {stop.get('exit_code')}; "
          f"left running: {stop.get('left_running')}")  # fmt: skip
    lost = None if in_flight is None or resumed_from is None else max(in_flight - resumed_from, 0)
    print(
        f"   next pod resumed from step {resumed_from}; steps lost: {lost} "
        f"(the periodic checkpoint alone would lose {None if in_flight is None else in_flight - args.after})"
    )
    print(f"   resume run: exit {resume.get('exit_code')}, steps {resume.get('steps_seen')}")
    return 0 if saved and lost == 0 and resume.get("exit_code") == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
