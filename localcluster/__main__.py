"""`python -m localcluster build|up|down|status` — what the Makefile's cluster targets run."""

from __future__ import annotations

import argparse
import sys

from localcluster import build
from localcluster.controlplane import ClusterError, LocalCluster


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localcluster", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build missing components into the cache")
    b.add_argument("components", nargs="*", help="only these (default: all)")
    sub.add_parser("up", help="start the control plane (idempotent)")
    sub.add_parser("down", help="stop every component by PID and remove the state")
    sub.add_parser("status", help="each component, its PID and health")
    args = parser.parse_args(argv)

    if args.command == "build":
        return build.main(args.components)
    cluster = LocalCluster()
    try:
        if args.command == "up":
            print(f"starting the local control plane in {cluster.layout.root}")
            seconds = cluster.up()
            print(f"local control plane ready in {seconds:.1f}s: {cluster.server}")
            print(f"source {cluster.layout.env_file.relative_to(cluster.layout.root.parent)}")
        elif args.command == "down":
            cluster.down()
        else:
            rows = cluster.status()
            for name, pid, healthy, log in rows:
                state = "healthy" if healthy else ("running, not healthy" if pid else "stopped")
                print(f"{name:<24} {pid or '-'!s:>8}  {state:<22} {log}")
            return 0 if all(healthy for *_, healthy, _ in rows) else 1
    except ClusterError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
