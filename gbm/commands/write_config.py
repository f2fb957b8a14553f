"""``gbm write-config --json CONFIG --out FILE``: record a pipeline run's resolved configuration.

The pipeline's ``resolved_config`` rule passes the configuration Snakemake resolved (config file(s) alone,
``--config`` overrides, schema defaults; ``gbm.pipeline.config.resolve_config``); this command checks it
against the schema and writes it as YAML, atomically, and only when its content changed (an unchanged file keeps its time).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("write-config", help="write a pipeline run's resolved configuration as YAML")
    parser.add_argument("--json", required=True, dest="config_json", help="the resolved configuration (JSON)")
    parser.add_argument("--configfile", action="append", default=[], help="config file it came from (repeatable)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="a --config override applied on top (repeatable)")
    parser.add_argument("--out", required=True, help="YAML file to write (results/config.resolved.yaml)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gbm.data.atomic import write_text_atomic
    from gbm.pipeline.config import resolved_config_text, validate_schema

    config = json.loads(args.config_json)
    validate_schema(config)
    text = resolved_config_text(config, args.configfile, args.override)
    out = Path(args.out)
    if out.is_file() and out.read_text() == text:
        print(f"gbm write-config: {out} unchanged")
        return 0
    write_text_atomic(out, text)
    print(f"gbm write-config: wrote {out}")
    return 0
