"""The method registry: one module per method, no import cycle in the package, unknown names refused with
the registered list, and a method defined in one file outside the package that trains, samples and
appears in the pipeline's tables (tests/methods/ve_edm.py)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from gbm.config import config_from_dict
from gbm.data import RawDataset, save_prepared
from gbm.methods import get_method, load_method_modules, registered
from gbm.pipeline.config import ConfigError, check_config
from gbm.training import prepare

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "gbm"
EXAMPLE = Path(__file__).resolve().parent / "methods" / "ve_edm.py"
GBM = str(Path(sys.executable).parent / "gbm")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Every ``gbm`` module and the ``gbm`` modules it imports anywhere in its body (lazy imports included)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                           for alias in node.names]
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for child in sorted(graph[node]):
            if state.get(child) == 1:
                return stack[stack.index(child):] + [child]
            if child not in state and (cycle := visit(child)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert {"gbm.methods", "gbm.methods.gbm", "gbm.sampling", "gbm.sde"} <= set(graph)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_only_the_registry_and_tests_import_a_method_module_below_it():
    """Shared layers (SDE interface, grids, seeding, generic samplers, losses) never import a method."""
    graph = import_graph()
    shared = ["gbm.sde", "gbm.grids", "gbm.seeding", "gbm.samplers", "gbm.losses", "gbm.pixels", "gbm.methods.base"]
    for module in shared:
        assert not {m for m in graph[module] if m.startswith("gbm.methods")} - {"gbm.methods.base"}, module


#: String constants equal to a built-in method's name that mean something else, by module: (its source line
#: must contain this, what the string is).
NOT_A_METHOD = {
    "gbm.cli": [('prog="gbm"', "the program's name")],
    "gbm.runs": [('"gbm": gbm.__version__', "the package's version")],
    "gbm.jobs.warm.launch": [('shutil.which("gbm")', "the console script"),
                             ('"-m", "gbm"', "the package run as a module")],
    "gbm.metrics.weights": [('"beta": "bn.bias"', "a batch-norm parameter of the Inception weights"),
                            ('parts[-1] == "beta"', "the same parameter's name")],
}


def layers_above_methods(graph: dict[str, set[str]]) -> list[str]:
    """Every ``gbm`` module outside ``gbm.methods`` that no method module builds on (the pipeline, reporting,
    tracking, jobs, commands, metrics, training, ...): the layers that must ask the registry, not a method."""
    below = set()
    pending = [m for m in graph if m == "gbm.methods" or m.startswith("gbm.methods.")]
    while pending:
        for imported in graph[pending.pop()]:
            if imported not in below:
                below.add(imported)
                pending.append(imported)
    return sorted(m for m in graph if not (m == "gbm.methods" or m.startswith("gbm.methods.")) and m not in below
                  and m != "gbm")


def method_mentions(module: str, source: str, names: set[str]) -> list[str]:
    """The source lines of ``module`` with a string constant equal to one of ``names`` (a method named by
    string: ``!= "gbm"``, ``{"vp": ...}``), less those ``NOT_A_METHOD`` lists."""
    lines = source.splitlines()
    allowed = [snippet for snippet, _ in NOT_A_METHOD.get(module, [])]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and node.value in names:
            line = lines[node.lineno - 1].strip()
            if not any(snippet in line for snippet in allowed):
                found.append(f"{module}:{node.lineno}: {line}")
    return found


def test_no_layer_above_the_methods_imports_a_method_module_or_names_a_method():
    """Above gbm/methods/ only the registry (gbm.methods, gbm.methods.base) is imported, and no built-in method
    is named by a string: what the pipeline needs of a method it asks through the hooks on Method."""
    graph = import_graph()
    above = layers_above_methods(graph)
    assert {"gbm.pipeline.config", "gbm.pipeline.layout", "gbm.reporting.ablation", "gbm.reporting.figures",
            "gbm.reporting.prior_mismatch", "gbm.commands.sample", "gbm.commands.report", "gbm.tracking.mirror",
            "gbm.jobs.slurm", "gbm.metrics.scoring", "gbm.training", "gbm.config", "gbm.cli"} <= set(above)
    registry = {"gbm.methods", "gbm.methods.base"}
    imports = {m: sorted(i for i in graph[m] if i.startswith("gbm.methods.") and i not in registry) for m in above}
    assert not {m: i for m, i in imports.items() if i}, "a layer above the methods imports a method module"
    names = set(registered())
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    mentions = [line for m in above for line in method_mentions(m, modules[m].read_text(), names)]
    assert not mentions, "a layer above the methods names a method:\n" + "\n".join(mentions)


def test_the_method_name_check_finds_a_comparison_and_a_key_but_not_a_docstring():
    source = '"""The gbm ablation."""\nif spec.get("method") != "gbm":\n    x = {"vp": 1}\ny = "gbm-tuned"\n'
    assert method_mentions("gbm.reporting.example", source, {"gbm", "vp"}) == [
        'gbm.reporting.example:2: if spec.get("method") != "gbm":', 'gbm.reporting.example:3: x = {"vp": 1}']


def test_every_builtin_method_is_registered_with_its_samplers_and_data_space():
    methods = registered()
    assert {"gbm", "vp", "subvp", "ve", "cld"} <= set(methods)
    assert set(methods["gbm"].samplers) == {"sign-agnostic", "dale-langevin"}
    assert set(methods["cld"].samplers) == {"sscs", "cld-em"}
    assert methods["gbm"].data_space == "positive" and methods["vp"].data_space == "centered"
    for name, method in methods.items():
        assert method.sde.name == name and method.make_sde().name == name


def test_an_unknown_method_is_refused_naming_the_field_and_the_registered_methods(tmp_path):
    with pytest.raises(ValueError, match=r"sde.name: unknown method 'edm'; registered methods: beta, cld, gbm, logvp, subvp, ve, vp"):
        get_method("edm")
    data = _tiny_data(tmp_path)
    with pytest.raises(ValueError, match=r"^sde.name: unknown method 'edm'; registered methods: .*gbm"):
        prepare(config_from_dict({"data": {"path": str(data)}, "sde": {"name": "edm"}}), "cpu")
    config = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    config["methods"]["edm"] = config["methods"].pop("vp")
    with pytest.raises(ConfigError, match=r"config key 'methods.edm': unknown method 'edm'; registered methods: .*vp"):
        check_config(config)
    config["methods"]["vp-variant"] = {"method": "nope", "samplers": {"em": {"steps": [2]}}}
    config["methods"]["vp"] = config["methods"].pop("edm")
    with pytest.raises(ConfigError, match=r"config key 'methods.vp-variant.method': unknown method 'nope'"):
        check_config(config)


def test_a_method_variant_trains_the_method_it_names_with_its_own_settings():
    from gbm.pipeline.config import training_config, with_defaults

    config = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    config["methods"]["vp-beta10"] = {"method": "vp", "sde": {"beta_max": 10.0}, "samplers": {"em": {"steps": [2]}}}
    check_config(config)
    raw = training_config(with_defaults(config), "mnist", "vp-beta10", 0)
    assert raw["sde"] == {"name": "vp", "beta_max": 10.0}


def _tiny_data(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    images = lambda n: rng.integers(0, 256, (n, 1, 8, 8), dtype=np.uint8)  # noqa: E731
    labels = lambda n: rng.integers(0, 10, n).astype(np.int64)  # noqa: E731
    return save_prepared(RawDataset(images(32), labels(32), images(8), labels(8), source="synthetic"),
                         "synthetic", tmp_path / "data.npz")


def test_a_method_module_that_does_not_exist_is_refused_naming_the_variable():
    with pytest.raises(ValueError, match="GBM_METHOD_MODULES: method module file 'missing.py' does not exist"):
        load_method_modules(["missing.py"])


def test_the_one_file_method_trains_and_samples_through_the_command_line(tmp_path):
    data = _tiny_data(tmp_path)
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"data": {"path": str(data)}, "sde": {"name": "ve-edm", "sigma_max": 20.0},
                                      "train": {"steps": 4, "batch_size": 8, "checkpoint_every": 2}}))
    env = dict(os.environ, GBM_METHOD_MODULES=str(EXAMPLE), OMP_NUM_THREADS="1")
    run = tmp_path / "run"
    train = subprocess.run([GBM, "train", str(config), "--out", str(run), "--device", "cpu", "--no-progress"],
                           env=env, capture_output=True, text=True)
    assert train.returncode == 0, train.stderr
    out = tmp_path / "samples.npz"
    sample = subprocess.run([GBM, "sample", str(run), "--sampler", "em", "--steps", "3", "--n", "4", "--out", str(out),
                             "--device", "cpu", "--no-progress"], env=env, capture_output=True, text=True)
    assert sample.returncode == 0, sample.stderr
    with np.load(out) as samples:
        assert samples["images"].shape == (4, 1, 8, 8)
    assert yaml.safe_load((run / "config.yaml").read_text())["sde"]["name"] == "ve-edm"
    unregistered = subprocess.run([GBM, "sample", str(run), "--sampler", "em", "--steps", "3", "--n", "4",
                                   "--out", str(tmp_path / "x.npz"), "--device", "cpu", "--no-progress"],
                                  env=dict(env, GBM_METHOD_MODULES=""), capture_output=True, text=True)
    assert unregistered.returncode != 0 and "unknown method 've-edm'" in unregistered.stderr


@pytest.mark.slow
def test_the_one_file_method_runs_through_the_pipeline_and_appears_in_the_tables(tmp_path):
    from test_pipeline_e2e import snakemake, with_data

    prepared = tmp_path / "mnist.npz"
    subprocess.run([GBM, "prepare-data", "mnist", "--out", str(prepared)], check=True, capture_output=True)
    workdir = with_data(tmp_path / "work", prepared)
    config = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    config.update(name="example", seeds=[0], method_modules=[str(EXAMPLE)],
                  methods={"ve-edm": {"sde": {"sigma_max": 20.0}, "samplers": {"em": {"steps": [2]}}}})
    (workdir / "example.yaml").write_text(yaml.safe_dump(config))
    snakemake(workdir, "results/tables/benchmark.csv", "--cores", "2", "--configfile", str(workdir / "example.yaml"))
    table = pd.read_csv(workdir / "results" / "tables" / "benchmark.csv")
    assert list(zip(table["method"], table["sampler"])) == [("ve-edm", "em")]
    assert table["fid_mean"].notna().all()
