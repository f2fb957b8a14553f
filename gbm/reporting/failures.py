"""Failed evaluations: a sampling job that stopped with an error (e.g. ``SamplerDiverged``) is listed, with
its reason, instead of being left out of the tables silently.

Snakemake keeps the log of a failed job. The ``sample`` rule writes the command it runs as the first line
of its log (``COMMAND_PREFIX``), then the command's output; ``gbm`` writes ``gbm sample: error: ...`` on
failure. An evaluation counts as failed when its sample file is missing and its log records an error of the
command the pipeline would run now, so changing the sampler's settings (or the model) retries it.
"""

from __future__ import annotations

from pathlib import Path

COMMAND_PREFIX = "# command: "
ERROR_MARK = "gbm sample: error: "


def sampling_failure(log: str | Path, command: str | None = None) -> str | None:
    """The error recorded in a sample job's ``log`` (None when there is none); with ``command``, only when
    that log's attempt ran exactly ``command``."""
    log = Path(log)
    if not log.is_file():
        return None
    lines = log.read_text(errors="replace").splitlines()
    if command is not None and (not lines or lines[0] != COMMAND_PREFIX + command):
        return None
    errors = [line.removeprefix(ERROR_MARK) for line in lines if line.startswith(ERROR_MARK)]
    return errors[-1] if errors else None


def failed_row(eval_dir: str | Path, reason: str | None) -> dict:
    """One row of ``failed.csv`` for ``results/{dataset}/{method}/seed{seed}/{sampler}/steps{K}``."""
    from gbm.pipeline.layout import Evaluation

    evaluation = Evaluation.from_directory(eval_dir)
    return {
        "dataset": evaluation.dataset,
        "method": evaluation.method,
        "seed": evaluation.seed,
        "sampler": evaluation.sampler,
        "steps": evaluation.steps,
        "stage": "sample",
        "reason": reason or "no metrics.json and no error recorded in the job's log",
        "path": str(eval_dir),
    }
