"""Figures for the local control plane: build time, warm start time, idle memory.

    .venv/bin/python bench/cluster.py [--restart] [--idle-seconds 30]

- Cold build time of each component, as recorded by the build that made the cache
  (`make cluster-build` on an empty ~/.cache/loka writes the seconds into each stamp).
- Warm `cluster-up`: with every binary cached, seconds from nothing running to every
  component healthy (and its setup done: nodes Ready, CRDs applied, webhooks answering).
- Resident memory (RSS) of each component once the cluster has been idle for a while.

The cluster must be down to time a start; `--restart` takes a running one down first.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from localcluster.build import STAMP, GoEnv, bin_dir
from localcluster.controlplane import LocalCluster
from localcluster.versions import cache_root, load_versions


def recorded_build_seconds() -> dict[str, float | None]:
    go = GoEnv(cache_root())
    version = go.version()
    seconds: dict[str, float | None] = {}
    for component in load_versions().go_components():
        stamp = bin_dir(component, go, version) / STAMP
        words = stamp.read_text().split() if stamp.exists() else []
        last = words[-1] if words else ""
        seconds[component.name] = float(last[:-1]) if last.endswith("s") else None
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--restart", action="store_true", help="take a running cluster down first")
    parser.add_argument("--idle-seconds", type=float, default=30.0, help="idle time before sampling RSS")
    parser.add_argument("--keep", action="store_true", help="leave the cluster running afterwards")
    args = parser.parse_args()

    print("== cold build (recorded by the build that filled the cache) ==")
    builds = recorded_build_seconds()
    for name, secs in builds.items():
        print(f"  {name:<24} {f'{secs:6.0f} s' if secs is not None else '   n/a (built before timings were recorded)'}")
    known = [s for s in builds.values() if s is not None]
    print(f"  {'total':<24} {sum(known):6.0f} s ({sum(known) / 60:.1f} min, {len(known)}/{len(builds)} components)")

    lines: list[str] = []
    cluster = LocalCluster(echo=lines.append)
    if cluster.is_up() or any(pid for _n, pid, _h, _l in cluster.status()):
        if not args.restart:
            print("\nthe cluster is running; pass --restart to time a start from nothing", file=sys.stderr)
            return 2
        cluster.down()
        lines.clear()

    print("\n== warm cluster-up (binaries cached, nothing running) ==")
    seconds = cluster.up()
    for line in lines:
        print(line)
    print(f"  {'total':<24} {seconds:5.1f} s until every component is healthy")

    print(f"\n== resident memory after {args.idle_seconds:.0f} s idle ==")
    time.sleep(args.idle_seconds)
    total = 0
    for component in cluster.components():
        rss = component.rss_bytes() or 0
        total += rss
        print(f"  {component.name:<24} {rss / 2**20:7.1f} MiB")
    print(f"  {'total':<24} {total / 2**20:7.1f} MiB")
    if not args.keep:
        cluster.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
