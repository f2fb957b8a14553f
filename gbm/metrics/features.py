"""TF-Inception pool3 features through torch-fidelity or clean-fid, on the converted offline weights.

Input: uint8 images (N, C, H, W) with C in {1, 3}; grayscale is replicated to 3 channels (SPEC §8).
- ``torch-fidelity``: its ``FeatureExtractorInceptionV3`` (TF1-exact bilinear resize to 299 inside).
- ``clean-fid``: clean-fid's ``InceptionV3W`` loading the converted TorchScript file, with clean-fid's
  resize: ``clean`` (its default, PIL bicubic with antialiasing on float images) or ``tf1-bilinear``
  (torch-fidelity's resize, so the two libraries can be compared on identical network input).
"""

from __future__ import annotations

import contextlib
import functools
import io
from importlib.metadata import version

import numpy as np
import torch

from gbm.metrics.weights import EXTRACTOR_NAME, inception_weights
from gbm.runs import resolve_device

LIBRARIES = ("torch-fidelity", "clean-fid")
CLEANFID_MODES = ("clean", "tf1-bilinear")
CPU_BATCH, GPU_BATCH = 8, 64


def validate_images(images, what: str) -> np.ndarray:
    """Check a set of images is uint8 (N, C, H, W) with C in {1, 3} and N > 0; ValueError names the problem."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    images = np.asarray(images)
    if images.dtype != np.uint8:
        span = f" with values in [{images.min()}, {images.max()}]" if images.size and np.issubdtype(images.dtype, np.number) else ""
        raise ValueError(f"{what}: expected uint8 images in [0, 255], got dtype {images.dtype}{span}")
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"{what}: expected shape (N, C, H, W) with C = 1 or 3, got {images.shape}")
    if images.shape[0] == 0:
        raise ValueError(f"{what}: the set of images is empty")
    return images


def extractor_description(library: str, cleanfid_mode: str = "clean") -> dict:
    """What produced the features, for every result file (SPEC §8)."""
    check_library(library, cleanfid_mode)
    weights = inception_weights()
    resize = "TF1-exact bilinear to 299 (torch-fidelity)" if library == "torch-fidelity" or cleanfid_mode == "tf1-bilinear" else "PIL bicubic to 299 on float images (clean-fid mode clean)"
    package = library.replace("-", "_") if library == "torch-fidelity" else "clean-fid"
    return {
        "name": EXTRACTOR_NAME,
        "library": f"{library} {version(package)}",
        "mode": cleanfid_mode if library == "clean-fid" else "default",
        "resize": resize,
        "grayscale": "replicated to 3 channels",
        "weights": weights.source if weights else f"{library} standard download",
        "weights_sha256": weights.sha256 if weights else None,
    }


def check_library(library: str, cleanfid_mode: str = "clean") -> None:
    if library not in LIBRARIES:
        raise ValueError(f"unknown metrics library {library!r}; choose one of {', '.join(LIBRARIES)}")
    if cleanfid_mode not in CLEANFID_MODES:
        raise ValueError(f"unknown clean-fid mode {cleanfid_mode!r}; choose one of {', '.join(CLEANFID_MODES)}")


@functools.lru_cache(maxsize=4)
def torch_fidelity_extractor(device: torch.device) -> torch.nn.Module:
    """torch-fidelity's InceptionV3 feature extractor on the converted weights (built once per device)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    weights = inception_weights()
    path = str(weights.torch_fidelity) if weights else None
    with contextlib.redirect_stdout(io.StringIO()):
        model = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=path)
    model = model.to(device).eval()
    if device.type == "cpu":
        # oneDNN's convolutions run faster in channels-last layout on one core; the features agree with the
        # default layout to 6e-6 (tests/test_metrics.py; speed: benchmarks/bench_metrics.py)
        model = model.to(memory_format=torch.channels_last)
    return model


@functools.lru_cache(maxsize=4)
def cleanfid_extractor(device: torch.device) -> torch.nn.Module:
    """clean-fid's InceptionV3W loading the converted TorchScript file (clean-fid's own download otherwise)."""
    from cleanfid.inception_torchscript import InceptionV3W

    weights = inception_weights()
    if weights is None:
        from cleanfid.features import feature_extractor

        return feature_extractor(name="torchscript_inception", device=device, use_dataparallel=False)
    return InceptionV3W(str(weights.cleanfid_dir), download=False).to(device).eval()


def _rgb(batch: np.ndarray) -> np.ndarray:
    return np.repeat(batch, 3, axis=1) if batch.shape[1] == 1 else batch


def _cleanfid_input(batch: np.ndarray, mode: str, device: torch.device) -> torch.Tensor:
    if mode == "tf1-bilinear":
        from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

        x = torch.from_numpy(batch).to(device).float()
        return interpolate_bilinear_2d_like_tensorflow1x(x, size=(299, 299), align_corners=False)
    from cleanfid.resize import build_resizer

    resize = build_resizer("clean")
    resized = [resize(image.transpose(1, 2, 0)).transpose(2, 0, 1) for image in batch]
    return torch.from_numpy(np.stack(resized)).to(device)


def extract_features(
    images,
    library: str = "torch-fidelity",
    *,
    device: str | torch.device = "auto",
    batch_size: int | None = None,
    cleanfid_mode: str = "clean",
    what: str = "images",
    progress: bool = False,
) -> np.ndarray:
    """2048-d TF-Inception pool3 features (float32, N x 2048) of uint8 images through ``library``.

    ``batch_size`` None: 8 on the CPU (small batches keep the 299x299 activations in cache), 64 on a GPU.
    ``progress``: a progress bar in images on stderr, named after ``what`` (about 7-14 images/s on a CPU).
    """
    import sys

    from tqdm.auto import tqdm

    check_library(library, cleanfid_mode)
    images = validate_images(images, what)
    device = resolve_device(device)
    if batch_size is None:
        batch_size = CPU_BATCH if device.type == "cpu" else GPU_BATCH
    model = torch_fidelity_extractor(device) if library == "torch-fidelity" else cleanfid_extractor(device)
    out = np.empty((len(images), 2048), dtype=np.float32)
    bar = tqdm(total=len(images), desc=f"Inception features: {what}", unit="img", file=sys.stderr, disable=not progress)
    with torch.no_grad(), bar:
        for start in range(0, len(images), batch_size):
            batch = _rgb(images[start : start + batch_size])
            if library == "torch-fidelity":
                features = model(torch.from_numpy(batch).to(device))[0]
            else:
                features = model(_cleanfid_input(batch, cleanfid_mode, device))
            out[start : start + len(batch)] = features.float().cpu().numpy()
            bar.update(len(batch))
    return out
