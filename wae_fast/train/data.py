"""Data sets for WAE training. Nothing is downloaded at run time.

* ``digits``: scikit-learn's 8x8 handwritten digits (1797 images shipped inside scikit-learn),
  pixels scaled from 0..16 to [0, 1]; a fixed split (seed 0) of 1497 train / 300 test images.
* ``squares`` ("fading squares", after Rubenstein, Schoelkopf & Tolstikhin 2018): 16x16 black
  images with a fixed 6x6 square in the centre whose intensity t ~ U[0, 1] is the single latent
  factor (intrinsic dimension 1). 2000 train / 500 test images drawn with fixed seeds.
* ``mnist`` from a local path: a directory holding ``train-images-idx3-ubyte`` and
  ``t10k-images-idx3-ubyte`` (each optionally ``.gz``; the labels files ``*-labels-idx1-ubyte``
  are used when present), or an ``.npz`` file with arrays ``x_train``, ``x_test`` (and optionally
  ``y_train``, ``y_test``), the layout of ``keras.datasets.mnist``.
* ``fashion-mnist`` (Xiao, Rasul & Vollgraf 2017, MIT licence): the same IDX layout (gzipped),
  found by :func:`find_fashion_mnist`: ``--data-path``, else the ``WAE_FAST_DATA`` environment
  variable (the directory itself or its ``fashion-mnist/`` subdirectory), else the file list of
  the Debian package ``dataset-fashion-mnist`` (``dpkg -L``); 60000 training + 10000 test images.
* ``folder``: a directory of images (.png, .jpg, .jpeg, .bmp, .webp; searched recursively, skipping
  hidden files and folders and wae-fast run directories, so a data path above ``runs/`` never
  trains on earlier runs' plots), e.g. CelebA: each image is center-cropped to a square (for
  CelebA's 178x218 aligned images, the central 140x140 as in the WAE paper) and resized to
  ``image_size``; RGB. Last 10% (after a fixed shuffle) held out.

All data sets are returned as a :class:`ImageData` with tensors (N, C, H, W): float32 in [0, 1]
or uint8 (converted per batch by :func:`to_float`).
"""
from __future__ import annotations

import gzip
import os
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .rundir import is_run_dir

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class DataError(ValueError):
    """A data path is missing or does not have the expected layout."""


@dataclass
class ImageData:
    name: str
    train: torch.Tensor                 # (N, C, H, W), float32 in [0,1] or uint8
    test: torch.Tensor
    train_labels: Optional[torch.Tensor] = None
    test_labels: Optional[torch.Tensor] = None
    latent: Optional[torch.Tensor] = None  # known generating factor of the test set (squares)
    source: str = ""                       # where the images came from and how many, for the log

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.train.shape[1:])  # type: ignore[return-value]


def to_float(x: torch.Tensor) -> torch.Tensor:
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    return x.float()


def _split(n: int, n_test: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_test:], perm[:n_test]


def load_digits_data() -> ImageData:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover
        raise DataError("--dataset digits needs scikit-learn (pip install scikit-learn)") from exc
    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)
    y = torch.from_numpy(d.target.astype(np.int64))
    tr, te = _split(len(x), 300)
    return ImageData("digits", x[tr], x[te], y[tr], y[te],
                     source=f"digits: {len(tr)} training + {len(te)} held-out 8x8 images (scikit-learn)")


def fading_squares(n: int, size: int = 16, square: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` fading-square images (n, 1, size, size) and their intensities t ~ U[0, 1]."""
    if square > size:
        raise ValueError(f"square ({square}) must not exceed size ({size})")
    t = torch.rand(n, generator=torch.Generator().manual_seed(seed))
    x = torch.zeros(n, 1, size, size)
    a = (size - square) // 2
    x[:, :, a:a + square, a:a + square] = t.view(n, 1, 1, 1)
    return x, t


def load_squares_data(n_train: int = 2000, n_test: int = 500, size: int = 16) -> ImageData:
    xtr, ttr = fading_squares(n_train, size, seed=1)
    xte, tte = fading_squares(n_test, size, seed=2)
    return ImageData("squares", xtr, xte, latent=tte,
                     source=f"squares: {n_train} training + {n_test} held-out {size}x{size} images (synthetic)")


# -- MNIST ---------------------------------------------------------------------------------

_MNIST_LAYOUT = ("expected a directory holding train-images-idx3-ubyte and t10k-images-idx3-ubyte "
                 "(optionally .gz, labels *-labels-idx1-ubyte optional), or an .npz file with arrays "
                 "x_train and x_test (uint8 (N, 28, 28), as keras.datasets.mnist)")


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a numpy array."""
    path = Path(path)
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    try:
        with _open(path) as f:
            head = f.read(4)
            if len(head) != 4 or head[0] != 0 or head[1] != 0 or head[2] not in dtypes:
                raise DataError(f"{path}: not an IDX file (bad magic number {head!r})")
            ndim = head[3]
            dims_raw = f.read(4 * ndim)
            if len(dims_raw) != 4 * ndim:
                raise DataError(f"{path}: truncated IDX header")
            dims = struct.unpack(f">{ndim}I", dims_raw)
            dt = np.dtype(dtypes[head[2]])
            data = f.read()
    except (OSError, EOFError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise DataError(f"{path}: file not found") from exc
        raise DataError(f"{path}: cannot read IDX file ({exc})") from exc
    n = int(np.prod(dims)) if dims else 1
    if len(data) != n * dt.itemsize:
        raise DataError(f"{path}: IDX header says shape {dims} ({n * dt.itemsize} bytes) "
                        f"but the file holds {len(data)} data bytes")
    return np.frombuffer(data, dtype=dt).reshape(dims)


def _find(root: Path, stem: str) -> Optional[Path]:
    for cand in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        p = root / cand
        if p.is_file():
            return p
    return None


def _as_images(name: str, a: np.ndarray, where: str) -> torch.Tensor:
    a = np.asarray(a)
    if a.ndim == 2 and a.shape[1] == 784:
        a = a.reshape(-1, 28, 28)
    if a.ndim == 4 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 3 or a.shape[0] < 1:
        raise DataError(f"{where}: {name} has shape {a.shape}; expected (N, H, W) images. {_MNIST_LAYOUT}")
    if a.dtype == np.uint8:
        t = torch.from_numpy(np.array(a, dtype=np.uint8, copy=True))
    else:
        t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
        if t.numel() and float(t.max()) > 1.0 + 1e-6:
            t = t / 255.0
    return t.unsqueeze(1)


def load_mnist(path, max_images: Optional[int] = None, name: str = "mnist") -> ImageData:
    p = Path(path)
    if not p.exists():
        raise DataError(f"--data-path {path}: does not exist; {_MNIST_LAYOUT}")
    if p.is_file():
        if p.suffix != ".npz":
            raise DataError(f"--data-path {path}: not a directory or .npz file; {_MNIST_LAYOUT}")
        try:
            with np.load(p, allow_pickle=False) as z:
                keys = set(z.files)
                if not {"x_train", "x_test"} <= keys:
                    raise DataError(f"--data-path {path}: the .npz holds {sorted(keys)}; {_MNIST_LAYOUT}")
                xtr, xte = z["x_train"], z["x_test"]
                ytr = z["y_train"] if "y_train" in keys else None
                yte = z["y_test"] if "y_test" in keys else None
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"--data-path {path}: cannot read as .npz ({exc}); {_MNIST_LAYOUT}") from exc
    else:
        ftr, fte = _find(p, "train-images-idx3-ubyte"), _find(p, "t10k-images-idx3-ubyte")
        if ftr is None or fte is None:
            missing = [n for n, f in (("train-images-idx3-ubyte", ftr), ("t10k-images-idx3-ubyte", fte)) if f is None]
            raise DataError(f"--data-path {path}: missing {missing}; {_MNIST_LAYOUT}")
        xtr, xte = read_idx(ftr), read_idx(fte)
        ltr, lte = _find(p, "train-labels-idx1-ubyte"), _find(p, "t10k-labels-idx1-ubyte")
        ytr = read_idx(ltr) if ltr else None
        yte = read_idx(lte) if lte else None
    xtr_t, xte_t = _as_images("x_train", xtr, str(path)), _as_images("x_test", xte, str(path))
    if xtr_t.shape[1:] != xte_t.shape[1:]:
        raise DataError(f"--data-path {path}: train images {tuple(xtr_t.shape[1:])} and test images "
                        f"{tuple(xte_t.shape[1:])} differ in shape")

    def lab(y, n):
        if y is None:
            return None
        y = torch.from_numpy(np.asarray(y).astype(np.int64))
        return y if len(y) == n else None
    ytr_t, yte_t = lab(ytr, len(xtr_t)), lab(yte, len(xte_t))
    if max_images is not None:
        xtr_t = xtr_t[:max_images]
        ytr_t = ytr_t[:max_images] if ytr_t is not None else None
    return ImageData(name, xtr_t, xte_t, ytr_t, yte_t,
                     source=f"{name}: {len(xtr_t)} training + {len(xte_t)} held-out images from {p.resolve()}")


# -- Fashion-MNIST -------------------------------------------------------------------------

FASHION_PACKAGE = "dataset-fashion-mnist"
FASHION_ENV = "WAE_FAST_DATA"


def _idx_dir(d: Path) -> bool:
    return d.is_dir() and _find(d, "train-images-idx3-ubyte") is not None \
        and _find(d, "t10k-images-idx3-ubyte") is not None


def _dpkg_dirs(package: str) -> list[Path]:
    """Directories holding the IDX files of the installed Debian ``package`` (empty without dpkg)."""
    dpkg = shutil.which("dpkg")
    if dpkg is None:
        return []
    try:
        out = subprocess.run([dpkg, "-L", package], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    if out.returncode != 0:
        return []
    dirs = sorted({Path(line).parent for line in out.stdout.splitlines()
                   if "train-images-idx3-ubyte" in line})
    return [d for d in dirs if _idx_dir(d)]


def find_fashion_mnist(data_path: Optional[str] = None) -> Path:
    """Where Fashion-MNIST is: ``data_path`` (a directory or .npz; an error if it is not usable),
    else ``$WAE_FAST_DATA`` or ``$WAE_FAST_DATA/fashion-mnist``, else the files of the Debian
    package ``dataset-fashion-mnist``. Raises DataError naming all three when none has it."""
    if data_path:
        p = Path(data_path)
        if not p.exists():
            raise DataError(f"--data-path {data_path}: does not exist; {_MNIST_LAYOUT}")
        return p
    env = os.environ.get(FASHION_ENV)
    if env:
        for d in (Path(env) / "fashion-mnist", Path(env)):
            if _idx_dir(d):
                return d
    dirs = _dpkg_dirs(FASHION_PACKAGE)
    if dirs:
        return dirs[0]
    env_note = f"{FASHION_ENV}={env} holds no Fashion-MNIST IDX files" if env else f"{FASHION_ENV} is not set"
    raise DataError(f"--dataset fashion-mnist: not found ({env_note}; the Debian package {FASHION_PACKAGE} "
                    f"is not installed). Install it (apt-get install {FASHION_PACKAGE}), or pass --data-path "
                    f"or set {FASHION_ENV} to a directory with train-images-idx3-ubyte.gz and "
                    "t10k-images-idx3-ubyte.gz; nothing is downloaded")


def load_fashion_mnist(data_path: Optional[str] = None, max_images: Optional[int] = None) -> ImageData:
    """Fashion-MNIST (28x28 grey, 10 classes) from :func:`find_fashion_mnist`'s location."""
    return load_mnist(find_fashion_mnist(data_path), max_images, name="fashion-mnist")


# -- image folder --------------------------------------------------------------------------

def find_images(root, skip: Optional[os.PathLike] = None) -> tuple[list[Path], int]:
    """Image files under ``root`` (sorted), skipping hidden files and folders, the directory
    ``skip`` (the run's own output) and every wae-fast run directory; also the number of
    run directories skipped."""
    root = Path(root)
    skip_real = os.path.realpath(skip) if skip is not None else None
    files: list[Path] = []
    skipped = 0
    for d, dirs, names in os.walk(root):
        keep = []
        for n in sorted(dirs):
            sub = os.path.join(d, n)
            if n.startswith("."):
                continue
            if os.path.realpath(sub) == skip_real or is_run_dir(sub):
                skipped += 1
                continue
            keep.append(n)
        dirs[:] = keep
        files += [Path(d, n) for n in names if not n.startswith(".") and Path(n).suffix.lower() in IMAGE_EXTS]
    return sorted(files), skipped


def load_image_folder(path, image_size: int = 64, max_images: Optional[int] = None,
                      test_fraction: float = 0.1, skip: Optional[os.PathLike] = None) -> ImageData:
    p = Path(path)
    layout = (f"expected a directory of images ({', '.join(IMAGE_EXTS)}; searched recursively, hidden "
              "folders and wae-fast run directories skipped), e.g. CelebA's img_align_celeba/; each is "
              f"center-cropped to a square and resized to {image_size}x{image_size} RGB")
    if not p.is_dir():
        raise DataError(f"--data-path {path}: {'is not a directory' if p.exists() else 'does not exist'}; {layout}")
    if is_run_dir(p) or (skip is not None and os.path.realpath(p) == os.path.realpath(skip)):
        raise DataError(f"--data-path {path}: is a wae-fast run directory, not a data set; {layout}")
    files, skipped = find_images(p, skip)
    if len(files) < 2:
        runs = f" outside {skipped} wae-fast run director{'y' if skipped == 1 else 'ies'}" if skipped else ""
        raise DataError(f"--data-path {path}: found {len(files)} image(s){runs}, need at least 2; {layout}")
    found = len(files)
    if max_images is not None:
        files = files[:max_images]
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover
        raise DataError("--dataset folder needs Pillow (pip install pillow)") from exc
    out = torch.empty(len(files), 3, image_size, image_size, dtype=torch.uint8)
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                im = im.convert("RGB")
                w, h = im.size
                # CelebA aligned (178x218): the WAE paper's central 140x140 crop
                s = 140 if (w, h) == (178, 218) else min(w, h)
                left, top = (w - s) // 2, (h - s) // 2
                im = im.crop((left, top, left + s, top + s)).resize((image_size, image_size), Image.BILINEAR)
                out[i] = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)
        except Exception as exc:
            raise DataError(f"{f}: cannot read image ({exc}); {layout}") from exc
    n_test = max(1, int(round(len(files) * test_fraction)))
    if len(files) - n_test < 2:
        n_test = len(files) - 2 if len(files) > 2 else 1
    tr, te = _split(len(files), n_test)
    used = f"{len(files)} of {found}" if len(files) < found else f"{found}"
    runs = f", {skipped} run director{'y' if skipped == 1 else 'ies'} skipped" if skipped else ""
    return ImageData("folder", out[tr], out[te],
                     source=f"folder: {used} images from {p.resolve()} ({len(tr)} training + {len(te)} held-out, "
                            f"{image_size}x{image_size} RGB; hidden files and folders skipped{runs})")


def load_dataset(name: str, data_path: Optional[str] = None, *, image_size: int = 64,
                 max_images: Optional[int] = None, skip: Optional[os.PathLike] = None) -> ImageData:
    """The data set ``name``; ``skip``: a directory a folder data set must not read (the run's own)."""
    if name == "digits":
        return load_digits_data()
    if name == "squares":
        return load_squares_data()
    if name == "mnist":
        if not data_path:
            raise DataError(f"--data-path: required for --dataset mnist; {_MNIST_LAYOUT}")
        return load_mnist(data_path, max_images)
    if name == "fashion-mnist":
        return load_fashion_mnist(data_path, max_images)
    if name == "folder":
        if not data_path:
            raise DataError("--data-path: required for --dataset folder (a directory of images)")
        return load_image_folder(data_path, image_size, max_images, skip=skip)
    raise DataError(f"--dataset: unknown dataset {name!r}; expected digits, squares, mnist, fashion-mnist or folder")
