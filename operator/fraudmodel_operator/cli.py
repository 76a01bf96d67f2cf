"""Command line: `fraudmodel-operator run` starts the operator; `crd` prints the CRD."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from fraudmodel_operator import crd
from fraudmodel_operator.settings import OperatorConfig


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fraudmodel-operator", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the operator (in or out of cluster)")
    run.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=None,
        help="namespace to watch (repeat for several; default: all, or WATCH_NAMESPACES, comma-separated)",
    )
    run.add_argument("--metrics-port", type=int, default=None, help="Prometheus metrics port (default 8080)")
    run.add_argument("--liveness-port", type=int, default=None, help="liveness endpoint port (default 8081)")
    run.add_argument("--peering", default=None, help="peering object name for leader election")
    run.add_argument("--standalone", action="store_true", help="no peering (single replica, local development)")
    run.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    sub.add_parser("crd", help="print the FraudModel CRD (YAML)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "crd":
        sys.stdout.write(crd.render())
        return 0
    config = OperatorConfig.from_env(os.environ)
    if args.namespace:
        config = config.model_copy(update={"namespaces": tuple(args.namespace)})
    if args.metrics_port is not None:
        config = config.model_copy(update={"metrics_port": args.metrics_port})
    if args.liveness_port is not None:
        config = config.model_copy(update={"liveness_port": args.liveness_port})
    if args.peering:
        config = config.model_copy(update={"peering": args.peering})
    if args.standalone:
        config = config.model_copy(update={"standalone": True})
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:  # one line per watch event and per HTTP request is noise in production
        for chatty in ("kopf.objects", "httpx", "httpx2"):
            logging.getLogger(chatty).setLevel(logging.WARNING)
    from fraudmodel_operator import runner  # imports kopf and registers the handlers

    asyncio.run(runner.run(config))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
