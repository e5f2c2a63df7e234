"""`loka-operator`: run the TrainingRun operator against the current kubeconfig (or in-cluster identity)."""

from __future__ import annotations

import argparse
import sys

import kopf

import loka_operator.handlers  # noqa: F401  (registers the kopf handlers)
from loka_operator.config import ConfigError, OperatorConfig


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="loka-operator", description=__doc__)
    parser.add_argument("-n", "--namespace", action="append", default=[], help="watch only this namespace (repeatable)")
    parser.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", help="liveness endpoint URL")
    parser.add_argument("--metrics-port", type=int, default=9090, help="Prometheus metrics port (0: off)")
    parser.add_argument("--resync-seconds", type=float, default=60.0, help="drift-repair interval")
    parser.add_argument("--max-concurrent", type=int, default=16, help="reconciles running at once")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = OperatorConfig.from_env(
            namespaces=tuple(args.namespace),
            metrics_port=args.metrics_port,
            resync_seconds=args.resync_seconds,
            max_concurrent_reconciles=args.max_concurrent,
        )
    except ConfigError as error:
        print(f"loka-operator: {error}", file=sys.stderr)
        return 2
    kopf.configure(verbose=args.verbose)
    kopf.run(
        memo=kopf.Memo(config=config),
        standalone=True,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=args.liveness or None,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
