"""Pre-flight check for Snakemake's SLURM executor: refuse to start where its job-status query cannot work.

snakemake-executor-plugin-slurm (2.x) asks ``sacct`` for the state of its jobs whenever ``sacct`` is
installed: by default, and also with ``--slurm-status-command squeue`` when SLURM's ``MinJobAge`` is below
three times ``--slurm-init-seconds-before-status-checks`` (finished jobs could vanish from ``squeue``
before they are seen). On a cluster whose accounting is off, every ``sacct`` call then fails, the jobs
silently drop out of the executor's list and Snakemake waits forever ("No active jobs; skipping status
query"). ``check_status_query`` resolves the command the executor will really use, as the plugin does,
and runs it once: a failure stops the workflow before any job is submitted, with the fix in the message.

Runs from the workflow's ``onstart`` handler (workflow/rules/common.smk) and stand-alone:
``python -m gbm.jobs.slurm [--status-command squeue] [--init-seconds 40]``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys

FALLBACK = ("--slurm-status-command squeue --slurm-no-account (clusters without accounting; needs SLURM's "
            "MinJobAge >= 3 x --slurm-init-seconds-before-status-checks)")


class StatusQueryError(RuntimeError):
    """The executor's job-status query would fail on this cluster (Snakemake would wait forever)."""


def min_job_age(scontrol_config: str) -> int | None:
    """``MinJobAge`` in seconds from ``scontrol show config`` output (``None`` when absent)."""
    match = re.search(r"^\s*MinJobAge\s*=\s*(\d+)\s*(\w*)", scontrol_config, re.MULTILINE)
    if not match:
        return None
    value, unit = int(match.group(1)), match.group(2).lower()
    return value * 3600 if unit.startswith("h") else value * 60 if unit.startswith("min") else value


def effective_status_command(requested: str | None, init_seconds: int, sacct_installed: bool,
                             job_age: int | None) -> str:
    """The command the plugin will poll with: ``sacct`` unless ``squeue`` is asked for and safe (or sacct absent)."""
    command = requested or ("sacct" if sacct_installed else "squeue")
    if command == "squeue" and sacct_installed and (job_age is None or job_age < 3 * init_seconds):
        return "sacct"
    if command == "sacct" and not sacct_installed:
        return "squeue"
    return command


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def check_status_query(requested: str | None = None, init_seconds: int = 40) -> str:
    """Run the status command the executor will use once; return its name or raise ``StatusQueryError``."""
    if shutil.which("squeue") is None:
        raise StatusQueryError("squeue: not found: this machine is no SLURM submit host")
    config = _run(["scontrol", "show", "config"])
    if config.returncode != 0:
        raise StatusQueryError(f"scontrol show config failed: {(config.stderr or config.stdout).strip()}")
    job_age = min_job_age(config.stdout)
    command = effective_status_command(requested, init_seconds, shutil.which("sacct") is not None, job_age)
    probe = ["sacct", "-X", "-n", "-o", "JobID", "-S", "now"] if command == "sacct" else ["squeue", "-h", "-o", "%i"]
    result = _run(probe)
    if result.returncode != 0:
        why = (result.stderr or result.stdout).strip()
        if command == "sacct" and requested == "squeue":
            hint = (f"The executor falls back to sacct because MinJobAge={job_age} s < 3 x {init_seconds} s; "
                    f"lower --slurm-init-seconds-before-status-checks or raise MinJobAge.")
        elif command == "sacct":
            hint = f"Use {FALLBACK}."
        else:
            hint = "Check that slurmctld answers (scontrol ping)."
        raise StatusQueryError(
            f"SLURM job-status query '{' '.join(probe)}' fails here ({why}); Snakemake's SLURM executor would "
            f"lose every job and wait forever. {hint}")
    return command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gbm.jobs.slurm", description=__doc__.splitlines()[0])
    parser.add_argument("--status-command", choices=["sacct", "squeue"], default=None,
                        help="as --slurm-status-command (default: the plugin's: sacct when installed)")
    parser.add_argument("--init-seconds", type=int, default=40,
                        help="as --slurm-init-seconds-before-status-checks (default 40)")
    args = parser.parse_args(argv)
    try:
        command = check_status_query(args.status_command, args.init_seconds)
    except (StatusQueryError, OSError, subprocess.SubprocessError) as error:
        print(f"gbm slurm pre-flight: error: {error}", file=sys.stderr)
        return 1
    print(f"gbm slurm pre-flight: job status through '{command}' works")
    return 0


if __name__ == "__main__":
    sys.exit(main())
