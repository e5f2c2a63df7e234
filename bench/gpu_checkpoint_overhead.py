"""Loka's checkpoint overhead in a verl run on a GPU, from one timing run's results (tests/gpu/README.md).

The run (tests/gpu/qwen2-0.5b-timing.yaml) saves every 10 steps with Loka's callback on at the 1st save and the
last, and off at the 2nd (tests/gpu/alternating_callback.py), so one run holds both sides:

  launch → first step   the trainer's start to the first step in verl's metrics file
  step time             verl's timing_s/step of steps without a save (median)
  verl save             timing_s/save_checkpoint of a save with the callback off
  Loka in the save      the callback's time inside verl's save (snapshot, wait for an upload still running)
  upload                the callback's upload of a checkpoint (in the background; the last one before returning)
  overhead              what the callback adds to 10 steps (its time in the save, plus the 9 steps after an on
                        save against the 9 after an off save), as a share of 10 steps without it

    python bench/gpu_checkpoint_overhead.py RESULTS_DIR     # e.g. /tmp/lkout/qwen05b, or an unpacked NAME.tgz
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any

BACKGROUND = re.compile(r"uploaded checkpoint step (\d+) in the background in ([\d.]+) s")
FOREGROUND = re.compile(r"uploaded checkpoint step (\d+) in ([\d.]+) s")
SAVE_TAG = '{"loka_bench_save"'


def load(results: Path) -> tuple[dict[int, dict[str, Any]], list[dict[str, Any]], dict[str, Any], str]:
    metrics = {}
    for line in (results / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        metrics[int(record["step"])] = record["data"]
    log = (results / "trainer.log").read_text(errors="replace")
    saves = [json.loads(line[line.index(SAVE_TAG) :]) for line in log.splitlines() if SAVE_TAG in line]
    summary = json.loads((results / "summary.json").read_text())
    return metrics, saves, summary, log


def main(results: Path) -> int:
    metrics, saves, summary, log = load(results)
    step_time = {step: float(data["timing_s/step"]) for step, data in metrics.items() if "timing_s/step" in data}
    save_time = {s: float(d["timing_s/save_checkpoint"]) for s, d in metrics.items() if "timing_s/save_checkpoint" in d}
    plain = [t for step, t in step_time.items() if step not in save_time and step > 1]
    median_step = statistics.median(plain)
    on = [s for s in saves if s["callback"] and not s["last"]]
    off = [s for s in saves if not s["callback"]]
    uploads = {int(m[1]): float(m[2]) for m in BACKGROUND.finditer(log)}
    last_uploads = {int(m[1]): float(m[2]) for m in FOREGROUND.finditer(log) if "background" not in m[0]}
    sizes = {int(k): v["bytes"] for k, v in summary["checkpoints_after"]["steps"].items()}

    print(f"results: {results}")
    print(f"  launch → first step          {summary['launch_to_first_step_s']:8.1f} s")
    print(f"  step time (median, no save)  {median_step:8.2f} s over {len(plain)} steps")
    for save in saves:
        step = save[SAVE_TAG[2:-1]]
        kind = "last, callback on" if save["last"] else ("callback on" if save["callback"] else "callback off")
        gb = sizes.get(step, 0) / 1e9
        print(f"  save at step {step:<3} ({kind:<17}) verl's timer {save_time.get(step, float('nan')):6.2f} s, "
              f"in the callback {save['in_save_s']:6.2f} s, {gb:5.2f} GB in S3")  # fmt: skip
    for step, seconds in sorted({**uploads, **last_uploads}.items()):
        where = "background" if step in uploads else "before the last save returned"
        rate = sizes.get(step, 0) / 1e9 / seconds if seconds else float("nan")
        print(f"  upload of step {step:<3} {seconds:6.1f} s ({rate:4.2f} GB/s, {where})")
    if not on or not off:
        print("  overhead: needs a save with the callback on and one with it off")
        return 1
    on_step, off_step = on[0][SAVE_TAG[2:-1]], off[0][SAVE_TAG[2:-1]]
    after_on = [step_time[s] for s in range(on_step + 1, on_step + 10) if s in step_time]
    after_off = [step_time[s] for s in range(off_step + 1, off_step + 10) if s in step_time]
    in_save = save_time[on_step] - save_time[off_step]
    extra_steps = sum(after_on) - sum(after_off) * len(after_on) / max(len(after_off), 1)
    baseline = 10 * median_step + save_time[off_step]
    print(f"  verl's own save               {save_time[off_step]:8.2f} s (step {off_step}, callback off)")
    print(f"  Loka inside the save          {in_save:8.2f} s (step {on_step} minus step {off_step}; the callback's "
          f"own timer: {on[0]['in_save_s']:.2f} s)")  # fmt: skip
    print(f"  steps after the on save       {sum(after_on):8.2f} s ({len(after_on)} steps, mean "
          f"{statistics.mean(after_on):.2f} s); after the off save {sum(after_off):.2f} s ({len(after_off)} steps, "
          f"mean {statistics.mean(after_off):.2f} s)")  # fmt: skip
    overhead = in_save + extra_steps
    print(f"  overhead per 10 steps         {overhead:8.2f} s = {100 * overhead / baseline:.2f} % "
          f"(aim: under 2 %)")  # fmt: skip
    timed = last_uploads or uploads
    if timed:
        step, seconds = max(timed.items())
        print(f"  the same upload in the save   {100 * seconds / baseline:8.2f} % (step {step}'s {seconds:.1f} s: what "
              "a synchronous upload costs)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
