"""``python -m bench [NAME ...] [options]``: run the named benchmarks (default: all of them), then print one
table of every headline figure they returned (:mod:`bench.summary`)."""

from __future__ import annotations

import argparse
import os
import sys
from types import ModuleType

from bench import e2e, gateway, processors, restart, sink
from bench.summary import Row, print_summary

BENCHMARKS: dict[str, ModuleType] = {"gateway": gateway, "processors": processors, "sink": sink,
                                    "restart": restart, "e2e": e2e}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="eventpipe benchmarks; they print figures and never assert on timings.",
    )
    p.add_argument(
        "names", nargs="*", metavar="NAME", help=f"benchmarks to run (default: all of {', '.join(BENCHMARKS)})"
    )
    p.add_argument(
        "--kafka",
        # Like tests/stack.py: the local broker of deploy/local/kafka.sh, on its port.
        default=os.environ.get("EVENTPIPE_KAFKA_BOOTSTRAP")
        or f"127.0.0.1:{os.environ.get('EVENTPIPE_LOCAL_KAFKA_PORT', '19092')}",
        help="Kafka bootstrap servers, for every benchmark (env EVENTPIPE_KAFKA_BOOTSTRAP, else the local broker "
        "on EVENTPIPE_LOCAL_KAFKA_PORT, 19092)",
    )
    for module in BENCHMARKS.values():
        module.add_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    names = args.names or list(BENCHMARKS)
    rows: list[Row] = []
    ran: list[str] = []
    try:
        for name in names:
            rows += BENCHMARKS[name].run(args) or []  # each returns its headline figures (bench.summary.Row)
            ran.append(name)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the benchmark's clean-up has run (see bench.common.run_async)
        print("interrupted", file=sys.stderr)
        return 130
    finally:  # what finished is still worth one table, even when a later benchmark failed or was interrupted
        print_summary(rows, [n for n in names if n not in ran])
    return 0


if __name__ == "__main__":
    sys.exit(main())
