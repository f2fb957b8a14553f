"""The ``gbm`` command line: one sub-command per module in ``gbm.commands``.

Each command module exposes ``add_parser(subparsers)``, which registers its sub-command and sets
``func`` (called with the parsed arguments; its return value is the exit status).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import gbm.commands


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with every sub-command, or only ``command``'s (so a job imports only what it runs)."""
    parser = argparse.ArgumentParser(prog="gbm", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    names = sorted(m.name for m in pkgutil.iter_modules(gbm.commands.__path__))
    module_name = (command or "").replace("-", "_")
    for name in [module_name] if module_name in names else names:
        importlib.import_module(f"gbm.commands.{name}").add_parser(subparsers)
    return parser


# Commands that run in their own process even when a warm worker is advertised: a run's first jobs (the
# data, the resolved config), which every training job waits for. In the worker they would wait for its
# preload (~9 s) and then run; in their own process they run beside it.
IN_OWN_PROCESS = ("worker", "prepare-data", "write-config")


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the command line: a warm worker runs it when one is advertised (gbm.jobs.warm.client)
        from gbm.jobs.warm.client import run_in_worker

        argv = sys.argv[1:]
        status = run_in_worker(argv) if argv[:1] and argv[0] not in IN_OWN_PROCESS else None
        if status is not None:
            return status
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as error:
        print(f"gbm {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
