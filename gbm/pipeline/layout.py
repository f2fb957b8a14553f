"""The results layout: where each record of a benchmark lives, built and parsed here and nowhere else.

    results/data/{dataset}.npz                                             a prepared dataset (``data_file``)
    results/{dataset}/{method}/seed{seed}/                                 one trained model (``Run``)
    results/{dataset}/{method}/seed{seed}/run/                             its training run (``gbm train``)
    results/{dataset}/{method}/seed{seed}/{sampler}/steps{steps}/          one evaluation (``Evaluation``)
    results/guidance_sweep/{dataset}/{method}/seed{seed}/{sampler}/steps{steps}/{setting}/   a sweep setting

``method`` is an entry of the config's ``methods`` (a registered method, or a label with its own settings) and
``sampler`` a sampler label of that entry. The patterns (``SEED_DIR``, ``RUN_DIR``, ``EVALUATION_DIR``) take
the same names as the Snakemake wildcards, so a rule's paths are ``RUN_DIR + "/model.pt"``. Parsing reads only
the path's last parts, so a results tree anywhere (a test's temporary directory) parses the same; a path that
does not follow the layout is an error naming it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

RESULTS = "results"
SEED_DIR = "{root}/{dataset}/{method}/seed{seed}"
RUN_DIR = SEED_DIR + "/run"
EVALUATION_DIR = SEED_DIR + "/{sampler}/steps{steps}"
#: The guidance sweep's evaluations (gbm.reporting.guidance_sweep), each with one more level: the setting.
SWEEP_ROOT = f"{RESULTS}/guidance_sweep"


def pattern(template: str, root: str = RESULTS) -> str:
    """A layout pattern with its root filled in and every other name a Snakemake wildcard."""
    return template.replace("{root}", root)


def data_file(dataset: str, root: str = RESULTS) -> str:
    """The prepared dataset file ``gbm prepare-data`` writes for ``dataset``."""
    return f"{root}/data/{dataset}.npz"


def _number(part: str, prefix: str, path: Path, expected: str) -> int:
    """The N of a ``{prefix}N`` path part; anything else is an error naming ``path`` and the ``expected`` layout."""
    digits = part.removeprefix(prefix)
    if not part.startswith(prefix) or not digits.isdigit():
        raise ValueError(f"{path}: not {expected}: expected {prefix}N where it has {part!r}")
    return int(digits)


@dataclass(frozen=True)
class Run:
    """One trained model: a dataset, a method entry and a training seed, under ``root``."""

    dataset: str
    method: str
    seed: int
    root: str = RESULTS

    @property
    def seed_dir(self) -> str:
        return SEED_DIR.format(root=self.root, dataset=self.dataset, method=self.method, seed=self.seed)

    @property
    def run_dir(self) -> str:
        return f"{self.seed_dir}/run"

    @classmethod
    def from_seed_dir(cls, path: str | Path) -> "Run":
        """The run of ``.../{dataset}/{method}/seed{seed}``."""
        return cls._parse(Path(path), Path(path), "a model's directory {dataset}/{method}/seed{seed}")

    @classmethod
    def from_run_dir(cls, path: str | Path) -> "Run":
        """The run of ``.../{dataset}/{method}/seed{seed}/run``."""
        path, expected = Path(path), "a training run directory {dataset}/{method}/seed{seed}/run"
        if path.name != "run":
            raise ValueError(f"{path}: not {expected}: its last part is {path.name!r}")
        return cls._parse(path.parent, path, expected)

    @classmethod
    def _parse(cls, seed_dir: Path, path: Path, expected: str) -> "Run":
        if len(seed_dir.parts) < 3:
            raise ValueError(f"{path}: not {expected}: too short")
        seed = _number(seed_dir.name, "seed", path, expected)
        return cls(seed_dir.parent.parent.name, seed_dir.parent.name, seed, str(seed_dir.parents[2]))


@dataclass(frozen=True)
class Evaluation:
    """One evaluated sampler: a trained model (dataset, method entry, seed) sampled at one step count."""

    dataset: str
    method: str
    seed: int
    sampler: str
    steps: int
    root: str = RESULTS

    @property
    def run(self) -> Run:
        return Run(self.dataset, self.method, self.seed, self.root)

    @property
    def directory(self) -> str:
        return f"{self.run.seed_dir}/{self.sampler}/steps{self.steps}"

    @classmethod
    def from_directory(cls, path: str | Path) -> "Evaluation":
        """The evaluation of ``.../{dataset}/{method}/seed{seed}/{sampler}/steps{steps}``."""
        path, expected = Path(path), "an evaluation directory {dataset}/{method}/seed{seed}/{sampler}/steps{steps}"
        if len(path.parts) < 5:
            raise ValueError(f"{path}: not {expected}: too short")
        steps = _number(path.name, "steps", path, expected)
        run = Run._parse(path.parent.parent, path, expected)
        return cls(run.dataset, run.method, run.seed, path.parent.name, steps, run.root)


def sweep_directory(evaluation: Evaluation, setting: str) -> str:
    """The directory of one guidance-sweep setting of an evaluation (its root ``SWEEP_ROOT``)."""
    return f"{evaluation.directory}/{setting}"


def parse_sweep_directory(path: str | Path) -> tuple[Evaluation, str]:
    """The evaluation and setting of ``.../{dataset}/{method}/seed{seed}/{sampler}/steps{steps}/{setting}``."""
    path = Path(path)
    return Evaluation.from_directory(path.parent), path.name
