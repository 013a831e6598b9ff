"""Sample quality without downloads: KID and a Frechet distance in the features of a small
classifier trained once per data set.

The Inception network behind FID/KID is a download; on 28x28 grey images (MNIST, Fashion-MNIST)
a small convolutional classifier trained on the data set's own training split is the usual
offline stand-in. :func:`metric_classifier` trains it (deterministically, seed 0) or loads it
from the cache (``$WAE_FAST_CLASSIFIER_CACHE``, else ``$WAE_FAST_CACHE``, default ``~/.cache/wae_fast``; the file is keyed by a digest
of the images and labels, so another data set never reuses it) together with its test accuracy.
:class:`SampleQuality` holds the classifier and the held-out images' features; its
:meth:`~SampleQuality.scores` gives, for generated images x_g,

* ``kid``: :func:`wae_fast.kid` (unbiased MMD^2 with the cubic polynomial kernel
  ``(a.b / d + 1)^3``) between the penultimate features of x_g and of the held-out images, the
  mean over subsets of ``min(1000, n)`` points;
* ``frechet``: ``||mu_g - mu_r||^2 + tr(S_g) + tr(S_r) - 2 tr((S_r^1/2 S_g S_r^1/2)^1/2)`` between
  Gaussians fitted to the same features (FID's formula; biased upwards for small n, so compare
  scores at equal n only).

Both are 0 for a perfect generator (up to sampling noise); ``floor`` holds the scores of as many
training images, the noise floor.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from wae_fast import kid

from .data import ImageData, to_float

CACHE_ENV = "WAE_FAST_CACHE"
#: the classifier's layout and training recipe; a cached file of another version is retrained
VERSION = 2
#: the accuracy the issue asks of the Fashion-MNIST classifier (checked on the full test set)
MIN_ACCURACY = {"fashion-mnist": 0.90, "mnist": 0.97}
FEATURES = 128


class QualityError(ValueError):
    """The metric classifier cannot be built or is not good enough."""


class MetricClassifier(nn.Module):
    """conv(32) - pool - conv(64) - pool - linear(128) [penultimate features] - linear(classes)."""

    def __init__(self, channels: int, size: int, classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(True), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(True), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(64 * (size // 4) ** 2, FEATURES), nn.ReLU(True))
        self.head = nn.Linear(FEATURES, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    @torch.no_grad()
    def features(self, x: torch.Tensor, bs: int = 1000) -> torch.Tensor:
        """Penultimate features (n, 128) of images x (n, C, H, W) in [0, 1] or uint8."""
        self.eval()
        dev = next(self.parameters()).device
        return torch.cat([self.body(to_float(x[i:i + bs]).to(dev)) for i in range(0, len(x), bs)])


def cache_dir() -> Path:
    """$WAE_FAST_CLASSIFIER_CACHE, else the package cache ($WAE_FAST_CACHE, ~/.cache/wae_fast)."""
    return Path(os.environ.get("WAE_FAST_CLASSIFIER_CACHE") or os.environ.get(CACHE_ENV)
                or Path.home() / ".cache" / "wae_fast")


def data_digest(data: ImageData) -> str:
    h = hashlib.sha256(f"v{VERSION}:{data.name}:{tuple(data.train.shape)}:{tuple(data.test.shape)}".encode())
    for t in (data.train, data.train_labels, data.test, data.test_labels):
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def accuracy(net: MetricClassifier, x: torch.Tensor, y: torch.Tensor, bs: int = 1000) -> float:
    net.eval()
    dev = next(net.parameters()).device
    hits = sum(int((net(to_float(x[i:i + bs]).to(dev)).argmax(1).cpu() == y[i:i + bs]).sum())
               for i in range(0, len(x), bs))
    return hits / max(len(x), 1)


def train_classifier(data: ImageData, epochs: int = 5, batch_size: int = 128, lr: float = 1e-3,
                     device: str = "cpu") -> tuple[MetricClassifier, float]:
    """Train the metric classifier on the training split (seed 0; batches sliced from one
    shuffled copy of the in-memory tensor per epoch); returns it and its test accuracy."""
    if data.train_labels is None or data.test_labels is None:
        raise QualityError(f"{data.name}: the metric classifier needs training and test labels")
    c, h, w = data.shape
    if h != w or h % 4:
        raise QualityError(f"{data.name}: the metric classifier needs square images with a side divisible "
                           f"by 4, got {h}x{w}")
    classes = int(max(int(data.train_labels.max()), int(data.test_labels.max()))) + 1
    with _seeded(0):
        net = MetricClassifier(c, h, classes).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    g = torch.Generator().manual_seed(0)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        net.train()
        perm = torch.randperm(len(data.train), generator=g)
        xs, ys = data.train[perm], data.train_labels[perm]
        for i in range(0, len(xs), batch_size):
            xb, yb = to_float(xs[i:i + batch_size]).to(device), ys[i:i + batch_size].to(device)
            opt.zero_grad(set_to_none=True)
            loss_fn(net(xb), yb).backward()
            opt.step()
    return net, accuracy(net, data.test, data.test_labels)


class _seeded:
    """Seed torch's global generator inside (restored after): the classifier's initialisation
    must not depend on, nor disturb, the caller's random state."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __enter__(self):
        self.state = torch.get_rng_state()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc):
        torch.set_rng_state(self.state)


def metric_classifier(data: ImageData, device: str = "cpu", min_accuracy: Optional[float] = None,
                      log=print) -> tuple[MetricClassifier, float, Path]:
    """The data set's classifier from the cache, or trained and cached; returns it, its test
    accuracy and the cache file. Raises QualityError when the accuracy is below ``min_accuracy``
    (default: ``MIN_ACCURACY[data.name]`` when the full data set is used, none otherwise)."""
    path = cache_dir() / f"classifier-{data.name}-{data_digest(data)}.pt"
    c, h, _ = data.shape
    net = acc = None
    if path.is_file():
        try:
            st = torch.load(path, map_location="cpu", weights_only=True)
            classes = st["state"]["head.weight"].shape[0]
            net = MetricClassifier(c, h, classes)
            net.load_state_dict(st["state"])
            acc = float(st["test_accuracy"])
            net.to(device)
        except Exception as exc:  # a damaged cache file is rebuilt, never trusted
            log(f"metric classifier: ignoring unreadable cache {path} ({exc})")
            net = None
    if net is None:
        log(f"metric classifier: training on {len(data.train)} {data.name} images (once; cached in {path})")
        net, acc = train_classifier(data, device=device)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        os.close(fd)
        try:
            torch.save({"state": {k: v.cpu() for k, v in net.state_dict().items()}, "test_accuracy": acc,
                        "version": VERSION, "n_train": len(data.train)}, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    if min_accuracy is None and len(data.train) >= 60000:
        min_accuracy = MIN_ACCURACY.get(data.name)
    if min_accuracy is not None and acc < min_accuracy:
        raise QualityError(f"metric classifier for {data.name}: test accuracy {acc:.4f} < {min_accuracy} "
                           f"(cache {path}); its features would not measure sample quality")
    return net, acc, path


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to the rows of a and b (float64; the matrix
    square roots through symmetric eigendecompositions, negative round-off eigenvalues clipped)."""
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    sa, sb = torch.cov(a.T), torch.cov(b.T)
    ea, va = torch.linalg.eigh(sa)
    ra = (va * ea.clamp_min(0).sqrt()) @ va.T            # S_a^1/2
    m = ra @ sb @ ra
    tr_sqrt = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + sa.trace() + sb.trace() - 2 * tr_sqrt)


@dataclass
class SampleQuality:
    """KID and Frechet distance of generated images against the held-out images, in the
    metric classifier's features."""

    net: MetricClassifier
    test_accuracy: float
    real: torch.Tensor              # features of the held-out images
    floor: dict                     # the scores of as many training images (the noise floor)
    source: str = ""

    @classmethod
    def build(cls, data: ImageData, device: str = "cpu", n_floor: int = 1000,
              min_accuracy: Optional[float] = None, log=print) -> "SampleQuality":
        net, acc, path = metric_classifier(data, device, min_accuracy, log)
        q = cls(net, acc, net.features(data.test), {},
                f"metric classifier {path.name}: test accuracy {acc:.4f}")
        q.floor = q.scores(data.train[:min(n_floor, len(data.train))], torch.Generator().manual_seed(0),
                           images=True)
        return q

    def scores(self, x: torch.Tensor, g: Optional[torch.Generator] = None, images: bool = True
               ) -> dict[str, float]:
        """``kid`` and ``frechet`` of the images x (or of their features with images=False)."""
        f = self.net.features(x) if images else x
        f = f.to(self.real.device)
        m = min(1000, len(f), len(self.real))
        k, _ = kid(self.real, f, subset_size=m, num_subsets=10, generator=g)
        return {"kid": float(k), "frechet": frechet_distance(f, self.real)}
