"""Why VP seed 0 of the default benchmark draws collapsed frames (issue 25): sampler or model, and
which training-recipe change removes the collapse at both seeds. Writes
``results/benchmarks/vp_collapse.json`` (one row per model/recipe, seed and sampler) and prints a table.

It reuses a finished default run (``--after``: its trained VP models, prepared MNIST, domain classifier
and reference features) and works in ``--work``; every step calls the ``gbm`` CLI exactly as the
pipeline's rules do (``workflow/rules/train.smk``, ``evaluate.smk``), with the training config the
pipeline's train job used plus one ``--set`` change per recipe. Outputs that exist are reused, so a
second run only adds what is missing. Two jobs at a time, ``OMP_NUM_THREADS=1`` each.

Two diagnostics of the cause: ``dc_slope`` (how much of the per-image mean, the DC, of the noise in ``x_t``
the model's epsilon prediction passes through; ideal 1 at t = 1) and the DC-oracle sampler (``gbm sample``
with the model's DC of epsilon replaced, for t >= T0, by the Gaussian posterior mean of the noise's DC given
the DC of ``x_t``; every other frequency stays the network's).

    .venv/bin/python benchmarks/study_vp_collapse.py --after /tmp/after --work /tmp/vpstudy
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

GBM = str(Path(sys.executable).with_name("gbm"))
N, STEPS = 200, 100

# The default benchmark's VP training config (results/logs/train/mnist_vp_seed0.log of the baf1674 run).
BASE_TRAIN = {"data": {"path": "results/data/mnist.npz", "split": "train", "limit": None}, "sde": {"name": "vp"},
              "model": {"backbone": "unet", "size": "tiny", "parameterisation": "eps"}, "loss": {},
              "train": {"steps": 800, "batch_size": 64, "lr": 0.002, "warmup": 50, "ema_decay": 0.99,
                        "checkpoint_every": 400, "log_every": 50, "precision": "fp32", "tf32": False,
                        "channels_last": False}}

# One change at a time against BASE_TRAIN (the train.* keys of gbm.config.TrainConfig). No EMA-decay row:
# gbm.ema warms the decay up as min(decay, (1 + n) / (10 + n)), which stays below 0.99 until update 891,
# so at 800 steps ema_decay 0.99 and 0.999 give the same weights.
RECIPES = {
    "lr1e-3": {"train.lr": 0.001},
    "steps1600": {"train.steps": 1600},
    "warmup200": {"train.warmup": 200},
    "clip0.1": {"train.grad_clip": 0.1},
    "baseline": {},
}
SAMPLERS = ("em", "pc", "ode")
# The ODE with fixed-step Heun on the same 100-level grid (200 network calls per image); the default adaptive
# rk45 at tolerance 1e-5 takes several times longer on two cores.
SAMPLER_OPTIONS = {"ode": ["--option", "solver=heun"]}
ORACLE_FROM = (0.5, 0.8)  # the DC oracle acts for t >= these
SLOPE_TIMES = (0.2, 0.5, 0.8, 1.0)
PIXELS = 28 * 28


def run(cmd: list[str], log: Path, cwd: Path) -> float:
    """Run one ``gbm`` command with one thread, its output to ``log``; the wall seconds it took."""
    start = time.perf_counter()
    with open(log, "w") as fh:
        fh.write("# command: " + " ".join(cmd) + "\n")
        fh.flush()
        subprocess.run(cmd, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, check=True,
                       env=os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    return time.perf_counter() - start


def sample_and_score(work: Path, run_dir: Path, sampler: str, out: Path, oracle_from: float | None = None) -> dict:
    """``gbm sample`` (N images, STEPS steps, seeds 0..N-1; with ``oracle_from``, the DC oracle) then ``gbm score``
    as evaluate.smk does."""
    out.mkdir(parents=True, exist_ok=True)
    samples, metrics = out / "samples.npz", out / "metrics.json"
    sample_cmd = [GBM, "sample"] if oracle_from is None else [sys.executable, __file__, "--oracle-sample",
                                                              str(oracle_from), str(work)]
    if not samples.exists():
        run([*sample_cmd, str(run_dir), "--sampler", sampler, "--steps", str(STEPS), "--n", str(N),
             "--batch-size", str(N), "--seed-start", "0", *SAMPLER_OPTIONS.get(sampler, []), "--no-progress",
             "--out", str(samples)],
            out / "sample.log", work)
    if not metrics.exists():
        run([GBM, "score", "--real", "results/data/mnist.npz", "--real-split", "test",
             "--real-features", "results/mnist/features/reference.npz", "--fake", str(samples), "--n", str(N),
             "--interval-draws", "100", "--classifier", "results/mnist/classifier/classifier.pt",
             "--no-progress", "--out", str(metrics)], out / "score.log", work)
    m = json.loads(metrics.read_text())
    s = json.loads(samples.with_suffix(".json").read_text())
    brightness = np.load(samples)["images"].reshape(N, -1).mean(axis=1) / 255
    return {"brightness_std": float(brightness.std()), "collapse_any": m["collapse"]["any"], "collapse_empty": m["collapse"]["empty"],
            "collapse_saturated": m["collapse"]["saturated"], "domain_fd": m["domain"]["fd"],
            "fid": m["fid"], "fraction_clamped": s.get("fraction_clamped"), "nfe": s.get("nfe")}


def data_dc(work: Path) -> tuple[float, float]:
    """Mean and variance of the per-image mean pixel of the training images in [-1, 1]."""
    images = np.load(work / "results" / "data" / "mnist.npz")["train_images"]
    dc = images.reshape(len(images), -1).mean(axis=1) / 127.5 - 1
    return float(dc.mean()), float(dc.var())


def dc_oracle(model, t0: float, mu: float, var: float):
    """Wrap ``model.forward``: for t >= t0 the per-image mean of epsilon is the posterior mean of the noise's mean
    given the mean of x_t, ``std/D (m_t - alpha mu) / (alpha^2 var + std^2/D)``, for data means ~ N(mu, var)."""
    network = model.forward

    def forward(x, t):
        alpha, std = (v[:, None, None, None] for v in model.sde.mean_coeff_std(t))
        eps = -network(x, t) * std
        m_t = x.mean(dim=(1, 2, 3), keepdim=True)
        eps_dc = std / PIXELS * (m_t - alpha * mu) / (alpha**2 * var + std**2 / PIXELS)
        fixed = eps - eps.mean(dim=(1, 2, 3), keepdim=True) + eps_dc
        return -torch.where((t >= t0)[:, None, None, None], fixed, eps) / std

    model.forward = forward
    return model


def oracle_sample(t0: float, work: Path, sample_args: list[str]) -> int:
    """``gbm sample SAMPLE_ARGS`` with the DC oracle from ``t0`` on (gbm.runs.load_model wrapped)."""
    import gbm.runs
    from gbm.cli import main as gbm_main

    mu, var = data_dc(work)
    load = gbm.runs.load_model
    gbm.runs.load_model = lambda *a, **k: (lambda m, r: (dc_oracle(m, t0, mu, var), r))(*load(*a, **k))
    return gbm_main(["sample", *sample_args])


def dc_slopes(work: Path, run_dir: Path, n: int = 512) -> dict:
    """Per noise level t: the regression slope of the per-image mean of the predicted epsilon on that of the
    true noise (test images 0..n-1, noise seed 123), and the epsilon MSE per pixel."""
    from gbm.runs import load_model

    torch.manual_seed(123)
    x0 = torch.tensor(np.load(work / "results" / "data" / "mnist.npz")["test_images"][:n], dtype=torch.float32)
    x0 = x0 / 127.5 - 1
    z = torch.randn_like(x0)
    model, _ = load_model(run_dir)
    out = {}
    for t in SLOPE_TIMES:
        tt = torch.full((n,), t)
        alpha, std = (v[:, None, None, None] for v in model.sde.mean_coeff_std(tt))
        with torch.no_grad():
            eps = -model(alpha * x0 + std * z, tt) * std
        dz, de = z.mean(dim=(1, 2, 3)), eps.mean(dim=(1, 2, 3))
        slope = ((de - de.mean()) * (dz - dz.mean())).mean() / dz.var(unbiased=False)
        out[str(t)] = {"dc_slope": slope.item(), "eps_mse": (eps - z).pow(2).mean().item()}
    return out


def train(work: Path, recipe: str, seed: int) -> Path:
    """``gbm train`` with the pipeline's config plus the recipe's ``--set`` changes (resumes if present)."""
    run_dir = work / "train" / f"{recipe}-seed{seed}"
    if not (run_dir / "model.pt").exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        cmd = [GBM, "train", "--json", json.dumps({"seed": seed} | BASE_TRAIN), "--out", str(run_dir),
               "--no-progress"]
        for key, value in RECIPES[recipe].items():
            cmd += ["--set", f"{key}={value}"]
        run(cmd, work / "train" / f"{recipe}-seed{seed}.log", work)
    return run_dir


def recipe_row(work: Path, recipe: str, seed: int) -> dict:
    run_dir = train(work, recipe, seed)
    tm = json.loads((run_dir / "train_metrics.json").read_text())
    row = sample_and_score(work, run_dir, "em", work / "eval" / f"{recipe}-seed{seed}-em")
    return {"model": f"retrained: {recipe}", "changes": RECIPES[recipe], "seed": seed, "sampler": "em",
            "final_loss": tm.get("final_loss"), "train_s": tm.get("wall_time_s")} | row


def main() -> None:
    if sys.argv[1:2] == ["--oracle-sample"]:
        sys.exit(oracle_sample(float(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:]))
    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--after", type=Path, required=True, help="finished default run (repo root with results/)")
    ap.add_argument("--work", type=Path, required=True, help="scratch directory")
    ap.add_argument("--recipes", nargs="*", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1],
                    help="training seeds; the default-run rows only for those the --after run has")
    ap.add_argument("--samplers", nargs="*", default=list(SAMPLERS), choices=list(SAMPLERS))
    ap.add_argument("--out", type=Path, default=Path("results/benchmarks/vp_collapse.json"))
    args = ap.parse_args()
    work, res = args.work.resolve(), args.after.resolve() / "results"
    for rel in ("data/mnist.npz", "mnist/classifier/classifier.pt", "mnist/classifier/classifier.json",
                "mnist/features/reference.npz"):
        (work / "results" / rel).parent.mkdir(parents=True, exist_ok=True)
        if not (work / "results" / rel).exists():
            shutil.copy(res / rel, work / "results" / rel)

    default_seeds = [s for s in args.seeds if (res / "mnist" / "vp" / f"seed{s}" / "run" / "model.pt").exists()]
    jobs = [(lambda s=s, smp=smp: {"model": "default run (baf1674)", "seed": s, "sampler": smp}
             | sample_and_score(work, res / "mnist" / "vp" / f"seed{s}" / "run", smp, work / "eval" / f"vp{s}-{smp}"))
            for s in default_seeds for smp in args.samplers]
    jobs += [(lambda s=s, t0=t0: {"model": f"default run, DC oracle t>={t0}", "seed": s, "sampler": "em"}
              | sample_and_score(work, res / "mnist" / "vp" / f"seed{s}" / "run", "em",
                                 work / "eval" / f"vp{s}-em-dcoracle-t{t0}", oracle_from=t0))
             for s in default_seeds for t0 in ORACLE_FROM]
    jobs += [(lambda r=r, s=s: recipe_row(work, r, s)) for r in args.recipes for s in args.seeds]
    with ThreadPoolExecutor(max_workers=2) as pool:
        rows = list(pool.map(lambda job: job(), jobs))

    models = {f"default-seed{s}": res / "mnist" / "vp" / f"seed{s}" / "run" for s in default_seeds}
    models |= {f"{r}-seed{s}": work / "train" / f"{r}-seed{s}" for r in args.recipes for s in args.seeds}
    slopes = {name: dc_slopes(work, run_dir) for name, run_dir in models.items()}
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": git,
                                    "models_from": str(res), "n": N, "steps": STEPS, "base_train": BASE_TRAIN,
                                    "rows": rows, "dc_slopes": slopes}, indent=2) + "\n")
    print(f"{'model':28} {'seed':>4} {'smp':>4} {'any':>6} {'empty':>6} {'sat':>6} {'dFD':>6} {'FID':>6}")
    for r in rows:
        print(f"{r['model']:28} {r['seed']:>4} {r['sampler']:>4} {r['collapse_any']:6.3f} {r['collapse_empty']:6.3f} "
              f"{r['collapse_saturated']:6.3f} {r['domain_fd']:6.2f} {r['fid']:6.1f}")
    for name, by_t in slopes.items():
        print(f"{name:24} DC slope " + " ".join(f"t={t}: {v['dc_slope']:.2f}" for t, v in by_t.items()))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
