"""A per-dataset classifier's feature space: Fréchet distance, KID, class balance and confident share.

Inception features were made for 299x299 photographs; on 28x28 grayscale digits and garments they rank a set
of empty and saturated frames above recognisable digits with grain (issue 24). These metrics measure in the
penultimate layer of a small CNN trained on the dataset's own training split instead:

- ``fd``: Fréchet distance between Gaussian fits of the 128-d features (the FID formula, another network);
- ``kid``: unbiased MMD² with the cubic kernel ``(x·y/d + 1)^3``, d = 128;
- intervals and FD_inf exactly as for Inception (``gbm.metrics.distances.metrics_from_features``, which is
  generic in the feature array: the Gram form, half-sample intervals, torch-fidelity's KID);
- ``class_tv``: total variation ``½ Σ_c |p_c - q_c|`` between the generated images' class histogram (argmax
  of the classifier) and the reference images' (the classifier's own predictions, so its errors cancel);
- ``confident_share``: the share of generated images whose largest softmax probability exceeds 0.9.

The classifier is trained deterministically (fixed seed, seeded data order, ``torch.use_deterministic_algorithms``
on the CPU) and stored with a content key: sha256 of its training and test data, its settings and
``CODE_VERSION``. A stored classifier whose key matches is reused; any change trains a new one. The file also
carries the dataset's collapse calibration (``gbm.metrics.collapse.calibrate``) from the same training split.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gbm.data.atomic import cache_dir, write_stream_atomic

#: Bump when the network, its training or its features change: every stored classifier is then retrained.
CODE_VERSION = 1
CONFIDENCE = 0.9
FEATURE_BATCH = 1000


@dataclass(frozen=True)
class ClassifierSettings:
    """Everything that decides the classifier's weights besides its data (all of it is in the content key)."""

    seed: int = 0
    epochs: int = 2
    batch_size: int = 128
    learning_rate: float = 1e-3
    width: int = 32
    feature_dim: int = 128
    training_images: int | None = None  # the first N training images; None: the whole training split

    def __post_init__(self):
        for name in ("epochs", "batch_size", "width", "feature_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"classifier {name}: must be a positive integer, got {getattr(self, name)}")
        if self.training_images is not None and self.training_images < 2:
            raise ValueError(f"classifier training_images: must be >= 2 or None (all), got {self.training_images}")
        if not self.learning_rate > 0:
            raise ValueError(f"classifier learning_rate: must be positive, got {self.learning_rate}")


class DomainNet(nn.Module):
    """Two 3x3 conv blocks (ReLU, 2x2 max-pool), a ``feature_dim`` ReLU layer (the features), class logits."""

    def __init__(self, channels: int, size: int, classes: int, width: int, feature_dim: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * width * (size // 4) ** 2, feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)
        return features, self.head(features)


def _pixels(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).float() / 255


def _sha256(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(json.dumps([str(array.dtype), list(array.shape)]).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def classifier_key(train_images, train_labels, test_images, test_labels, settings: ClassifierSettings) -> str:
    """Content key of a classifier: its data (pixels and labels), its settings and ``CODE_VERSION``."""
    train_images, train_labels = _training_rows(train_images, train_labels, settings)
    descriptor = {"code_version": CODE_VERSION, "settings": asdict(settings),
                  "train": _sha256(train_images, train_labels), "test": _sha256(test_images, test_labels)}
    return hashlib.sha256(json.dumps(descriptor, sort_keys=True).encode()).hexdigest()


def _training_rows(images: np.ndarray, labels: np.ndarray, settings: ClassifierSettings):
    rows = slice(None) if settings.training_images is None else slice(0, settings.training_images)
    return images[rows], labels[rows]


class Classifier:
    """A trained ``DomainNet`` with its key, accuracy and the dataset's collapse calibration."""

    def __init__(self, net: DomainNet, record: dict):
        self.net = net.eval()
        self.record = record

    @property
    def key(self) -> str:
        return self.record["key"]

    def features(self, images: np.ndarray, device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
        """Penultimate features (N x feature_dim, float64) and softmax probabilities (N x classes) of uint8 images.

        The features are divided by ``feature_scale``, the root mean square of the test split's feature
        coordinates, so that ``|x|²/d`` averages 1 on real images and KID's kernel ``(x·y/d + 1)^3`` works at a
        known scale (unscaled, ``x·y/d`` was ~8 on MNIST, against ~0.2 for Inception features)."""
        shape = tuple(self.record["image_shape"])
        if tuple(images.shape[1:]) != shape:
            raise ValueError(f"classifier trained on images of shape {shape}, got {tuple(images.shape[1:])}")
        net = self.net.to(device)
        features, probabilities = [], []
        with torch.no_grad():
            for start in range(0, len(images), FEATURE_BATCH):
                hidden, logits = net(_pixels(images[start:start + FEATURE_BATCH]).to(device))
                features.append(hidden.double().cpu() / self.record["feature_scale"])
                probabilities.append(torch.softmax(logits.double(), 1).cpu())
        return torch.cat(features).numpy(), torch.cat(probabilities).numpy()

    def description(self) -> dict:
        """What the features came from, for every result file."""
        return {key: self.record[key] for key in ("key", "file", "dataset", "settings", "test_accuracy",
                                                  "feature_scale", "code_version", "train_seconds", "threads")}


def train_classifier(train_images, train_labels, test_images, test_labels, settings: ClassifierSettings,
                     *, progress: bool = False) -> Classifier:
    """Train a ``DomainNet`` with Adam on cross-entropy, deterministically, and measure its test accuracy.

    Same data, settings and thread count give the same weights bit for bit: the initialisation is seeded
    (``settings.seed``), the batch order is a seeded permutation per epoch, no augmentation, and
    ``torch.use_deterministic_algorithms`` is on while it trains (always on the CPU)."""
    from tqdm.auto import tqdm

    from gbm.metrics.collapse import calibrate

    key = classifier_key(train_images, train_labels, test_images, test_labels, settings)
    images, labels = _training_rows(train_images, train_labels, settings)
    classes = int(max(labels.max(), test_labels.max())) + 1
    channels, size = images.shape[1], images.shape[2]
    if images.shape[2] != images.shape[3] or size % 4:
        raise ValueError(f"classifier: square images with a side divisible by 4 expected, got {images.shape[1:]}")
    began = time.perf_counter()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed)
            net = DomainNet(channels, size, classes, settings.width, settings.feature_dim)
        optimiser = torch.optim.Adam(net.parameters(), lr=settings.learning_rate)
        order = np.random.default_rng(settings.seed)
        batches = -(-len(images) // settings.batch_size)
        bar = tqdm(total=settings.epochs * batches, desc="train classifier", unit="batch", disable=not progress)
        net.train()
        for _ in range(settings.epochs):
            permutation = order.permutation(len(images))
            for start in range(0, len(images), settings.batch_size):
                rows = np.sort(permutation[start:start + settings.batch_size])
                _, logits = net(_pixels(images[rows]))
                loss = nn.functional.cross_entropy(logits, torch.from_numpy(labels[rows]))
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        bar.close()
    finally:
        torch.use_deterministic_algorithms(deterministic)
    train_seconds = time.perf_counter() - began
    record = {"key": key, "code_version": CODE_VERSION, "settings": asdict(settings), "classes": classes,
              "image_shape": list(images.shape[1:]), "training_images": len(images), "test_images": len(test_images),
              "train_seconds": train_seconds, "threads": torch.get_num_threads(),
              "collapse_calibration": calibrate(train_images), "file": None, "dataset": None}
    classifier = Classifier(net, record | {"feature_scale": 1.0})
    features, probabilities = classifier.features(test_images)
    record["test_accuracy"] = float((probabilities.argmax(1) == test_labels).mean())
    record["feature_scale"] = float(np.sqrt((features**2).sum(1).mean() / features.shape[1]))
    classifier.record = record
    return classifier


def save_classifier(classifier: Classifier, path: str | Path) -> None:
    """Write the weights and the record (key, settings, accuracy, calibration) atomically."""
    state = {"state_dict": classifier.net.state_dict(), "record": json.dumps(classifier.record, sort_keys=True)}
    write_stream_atomic(path, lambda handle: torch.save(state, handle))


def load_classifier(path: str | Path) -> Classifier:
    """A classifier stored by ``save_classifier``; FileNotFoundError or ValueError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such classifier file (written by `gbm classifier`)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        record = json.loads(state["record"])
        settings = record["settings"]
        channels, size = record["image_shape"][0], record["image_shape"][1]
        net = DomainNet(channels, size, record["classes"], settings["width"], settings["feature_dim"])
        net.load_state_dict(state["state_dict"])
    except Exception as error:
        raise ValueError(f"{path}: not a readable classifier file ({error})") from error
    record["file"] = str(path)
    return Classifier(net, record)


def classifier_for(prepared_path: str | Path, settings: ClassifierSettings, *, out: str | Path | None = None,
                   cache: bool = True, cache_root: str | Path | None = None, progress: bool = False) -> tuple[Classifier, str]:
    """The classifier of a prepared dataset with ``settings``, and how it was obtained.

    Looked up by content key, first at ``out`` (``"reused"``), then in the cache ``cache_root`` (default
    ``$GBM_CACHE_DIR/classifier``; ``"hit"``); trained otherwise (``"trained"``) and written to both. A stored
    file with another key (other data, settings or code version) or one that cannot be read is replaced."""
    from gbm.data import load_prepared

    prepared = load_prepared(prepared_path)
    arrays = (prepared.train_images, prepared.train_labels, prepared.test_images, prepared.test_labels)
    key = classifier_key(*arrays, settings)
    cached = Path(cache_root or cache_dir() / "classifier") / f"{key}.pt" if cache else None
    for path, state in ((out, "reused"), (cached, "hit")):
        if path is not None and Path(path).is_file():
            try:
                stored = load_classifier(path)
            except ValueError:
                continue
            if stored.key == key:
                if state == "hit" and out is not None:
                    save_classifier(stored, out)
                return _located(stored, out or path, prepared.meta.get("name")), state
    classifier = train_classifier(*arrays, settings, progress=progress)
    classifier.record["dataset"] = prepared.meta.get("name")
    for path in (cached, out):
        if path is not None:
            save_classifier(classifier, path)
    return _located(classifier, out or cached, prepared.meta.get("name")), "trained"


def _located(classifier: Classifier, path, dataset: str | None) -> Classifier:
    classifier.record["file"] = None if path is None else str(path)
    classifier.record["dataset"] = classifier.record.get("dataset") or dataset
    return classifier


def class_histogram(probabilities: np.ndarray) -> np.ndarray:
    """Share of images whose most probable class is c, for every class c (sums to 1)."""
    counts = np.bincount(np.asarray(probabilities).argmax(1), minlength=probabilities.shape[1])
    return counts / counts.sum()


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    """Total variation distance ``½ Σ |p - q|`` between two histograms over the same classes (0 to 1)."""
    p, q = np.asarray(p, dtype=float), np.asarray(q, dtype=float)
    if p.shape != q.shape:
        raise ValueError(f"histograms over different classes: {p.shape} and {q.shape}")
    return float(0.5 * np.abs(p - q).sum())


def confident_share(probabilities: np.ndarray, threshold: float = CONFIDENCE) -> float:
    """Share of images whose largest class probability exceeds ``threshold``."""
    return float((np.asarray(probabilities).max(1) > threshold).mean())


def domain_metrics(classifier: Classifier, real_images: np.ndarray, fake_images: np.ndarray, *, device="cpu",
                   **metric_options) -> dict:
    """FD, KID (with intervals, precision/recall, FD_inf) in the classifier's features, class balance and
    confident share of ``fake_images`` against ``real_images`` (uint8, N x C x H x W each).

    ``metric_options`` are those of ``gbm.metrics.distances.metrics_from_features`` (kid_subsets, seed,
    interval_draws, ...): the same protocol as the Inception metrics, applied to these features."""
    from gbm.metrics.distances import metrics_from_features

    began = time.perf_counter()
    real_features, real_probabilities = classifier.features(real_images, device)
    fake_features, fake_probabilities = classifier.features(fake_images, device)
    features_seconds = time.perf_counter() - began
    began = time.perf_counter()
    inner = metrics_from_features(real_features, fake_features, "torch-fidelity", feature_dim=None, **metric_options)
    renamed = {"fid": "fd", "fid_ci": "fd_ci", "fid_se": "fd_se", "fid_inf": "fd_inf", "fid_inf_slope": "fd_inf_slope",
               "kid_mean": "kid"}
    result = {renamed.get(key, key): value for key, value in inner.items()}
    if "half_samples" in result:
        result["half_samples"] = {"fd": result["half_samples"]["fid"], "kid": result["half_samples"]["kid"]}
    generated, reference = class_histogram(fake_probabilities), class_histogram(real_probabilities)
    result.update(
        class_tv=total_variation(generated, reference),
        class_histogram=generated.tolist(),
        reference_class_histogram=reference.tolist(),
        confident_share=confident_share(fake_probabilities),
        reference_confident_share=confident_share(real_probabilities),
        classifier=classifier.description(),
        timing={"features_s": features_seconds, "metrics_s": time.perf_counter() - began},
    )
    result["protocol"].update(
        features=f"penultimate ReLU layer ({fake_features.shape[1]}-d) of the dataset's classifier (gbm.metrics.domain)",
        fd="Fréchet distance between Gaussian fits of the classifier features (the FID formula); " + result["protocol"].pop("fid"),
        class_tv="total variation 1/2 sum_c |p_c - q_c| between the argmax class histograms of the generated and "
                 "the reference images (both by the classifier)",
        confident_share=f"share of generated images with max softmax probability > {CONFIDENCE}",
    )
    if "fid_inf" in result["protocol"]:
        result["protocol"]["fd_inf"] = result["protocol"].pop("fid_inf")
    return result
