"""Data loaders: embedded data sets, MNIST IDX/.npz and image folders on small files written here."""
from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from wae_fast.train.data import (DataError, fading_squares, load_dataset, load_digits_data, load_image_folder,
                                 load_mnist, load_squares_data, read_idx)


def write_idx(path, arr: np.ndarray, gz: bool = False) -> None:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    head = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = head + arr.tobytes()
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def mnist_like(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)


def test_digits_embedded():
    d = load_digits_data()
    assert d.train.shape == (1497, 1, 8, 8) and d.test.shape == (300, 1, 8, 8)
    assert float(d.train.min()) >= 0 and float(d.train.max()) <= 1
    assert d.train_labels is not None and len(d.train_labels) == 1497


def test_fading_squares_intrinsic_dim_one():
    x, t = fading_squares(50, size=16, square=6, seed=3)
    assert x.shape == (50, 1, 16, 16)
    # every image is t * (a fixed mask)
    mask = (x[0] > 0).float() if t[0] > 0 else None
    assert mask is not None and int(mask.sum()) == 36
    assert torch.allclose(x, t.view(-1, 1, 1, 1) * mask)
    d = load_squares_data(n_train=100, n_test=20)
    assert d.train.shape == (100, 1, 16, 16) and d.latent.shape == (20,)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_dir(tmp_path, gz):
    suf = ".gz" if gz else ""
    xtr, xte = mnist_like(30, 1), mnist_like(10, 2)
    write_idx(tmp_path / f"train-images-idx3-ubyte{suf}", xtr, gz)
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{suf}", xte, gz)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{suf}", np.arange(30) % 10, gz)
    d = load_mnist(tmp_path)
    assert d.train.shape == (30, 1, 28, 28) and d.train.dtype == torch.uint8
    assert torch.equal(d.train[:, 0], torch.from_numpy(xtr))
    assert torch.equal(d.test[:, 0], torch.from_numpy(xte))
    assert d.train_labels.tolist() == [i % 10 for i in range(30)] and d.test_labels is None
    assert np.array_equal(read_idx(tmp_path / f"train-images-idx3-ubyte{suf}"), xtr)
    d2 = load_dataset("mnist", str(tmp_path), max_images=12)
    assert d2.train.shape[0] == 12


def test_mnist_npz(tmp_path):
    p = tmp_path / "mnist.npz"
    np.savez(p, x_train=mnist_like(20), x_test=mnist_like(5, 1), y_train=np.arange(20), y_test=np.arange(5))
    d = load_mnist(p)
    assert d.train.shape == (20, 1, 28, 28) and d.test.shape == (5, 1, 28, 28)
    assert d.test_labels.tolist() == list(range(5))


def test_mnist_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist.*train-images-idx3-ubyte"):
        load_mnist(tmp_path / "nope")
    with pytest.raises(DataError, match=r"missing \['train-images-idx3-ubyte', 't10k-images-idx3-ubyte'\]"):
        load_mnist(tmp_path)
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=mnist_like(3))
    with pytest.raises(DataError, match="x_train"):
        load_mnist(bad)
    notnpz = tmp_path / "x.txt"
    notnpz.write_text("hello")
    with pytest.raises(DataError, match="not a directory or .npz"):
        load_mnist(notnpz)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"garbage")
    with pytest.raises(DataError, match="cannot read as .npz"):
        load_mnist(junk)
    # malformed IDX: bad magic, truncated data
    d = tmp_path / "idx"
    d.mkdir()
    (d / "train-images-idx3-ubyte").write_bytes(b"\x01\x02\x03\x04rest")
    write_idx(d / "t10k-images-idx3-ubyte", mnist_like(2))
    with pytest.raises(DataError, match="not an IDX file"):
        load_mnist(d)
    full = bytes([0, 0, 8, 3]) + struct.pack(">3I", 5, 28, 28) + bytes(100)
    (d / "train-images-idx3-ubyte").write_bytes(full)
    with pytest.raises(DataError, match="file holds 100 data bytes"):
        load_mnist(d)
    with pytest.raises(DataError, match="--data-path: required"):
        load_dataset("mnist", None)


def test_image_folder(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    (tmp_path / "sub").mkdir()
    for i in range(10):
        size = (178, 218) if i % 2 else (40, 30)
        arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        where = tmp_path / "sub" if i % 3 == 0 else tmp_path
        Image.fromarray(arr).save(where / f"img{i}.{'png' if i % 2 else 'jpg'}")
    (tmp_path / "notes.txt").write_text("not an image")
    d = load_image_folder(tmp_path, image_size=16)
    assert d.train.shape == (9, 3, 16, 16) and d.test.shape == (1, 3, 16, 16)
    assert d.train.dtype == torch.uint8
    d2 = load_dataset("folder", str(tmp_path), image_size=8, max_images=4)
    assert d2.train.shape[0] + d2.test.shape[0] == 4 and d2.train.shape[1:] == (3, 8, 8)


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_image_folder(tmp_path / "missing")
    with pytest.raises(DataError, match="found 0 image"):
        load_image_folder(tmp_path)
    (tmp_path / "a.png").write_bytes(b"not a png")
    (tmp_path / "b.png").write_bytes(b"not a png either")
    with pytest.raises(DataError, match="a.png: cannot read image"):
        load_image_folder(tmp_path)
