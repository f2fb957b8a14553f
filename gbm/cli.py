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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gbm", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(gbm.commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"gbm.commands.{info.name}")
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as error:
        print(f"gbm {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
