"""The ``gbm`` command line: sub-command dispatch."""

import subprocess
import sys

from gbm.cli import build_parser


def test_every_command_module_registers_its_sub_command():
    commands = build_parser()._subparsers._group_actions[0].choices
    assert {"prepare-data", "score", "floor", "neighbours", "train", "sample", "mlflow-sync", "report"} <= set(commands)


def test_a_pipeline_job_imports_only_the_command_it_runs():
    """Light jobs (report, mlflow-sync) must not pay for importing torch: pipeline overhead."""
    code = "import sys, gbm.cli; gbm.cli.build_parser('mlflow-sync'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
