"""Writers of tiny fake data sets in the real on-disk layouts, for tests that need files.

Each writer puts a few class-dependent images (a per-class brightness pattern plus noise, so a
model can learn them) where :func:`ebcompress.data.load_data` looks, and returns the folder to
pass as ``root`` / ``--data``.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

CIFAR_PIXELS = 3 * 32 * 32


def class_images(labels: np.ndarray, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """uint8 images of ``shape`` per label: a per-class mean level and stripe, plus noise."""
    rng = np.random.default_rng(seed)
    labels = labels.astype(np.int64)
    images = rng.integers(0, 60, size=(len(labels), *shape)).astype(np.int64)
    images += (labels.reshape(-1, *[1] * len(shape)) * 19) % 160
    rows = shape[-2]
    for i, label in enumerate(labels):
        images[i, ..., (label * 3) % rows, :] += 90
    return images.clip(0, 255).astype(np.uint8)


def write_idx(path: Path, array: np.ndarray, *, gz: bool = True) -> Path:
    """One IDX file of unsigned bytes: magic 0x0000 08 <ndim>, big-endian dims, then data."""
    header = bytes((0, 0, 0x08, array.ndim)) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path = path.with_name(path.name + ".gz") if gz else path
    path.write_bytes(gzip.compress(payload, compresslevel=1) if gz else payload)
    return path


def write_fake_fashion_mnist(
    folder: Path, n_train: int = 60, n_test: int = 20, *, gz: bool = True, seed: int = 0
) -> Path:
    """The four Fashion-MNIST IDX files (28x28, labels 0..9) in ``folder``; returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(
            folder / f"{prefix}-images-idx3-ubyte", class_images(labels, (28, 28), seed), gz=gz
        )
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, gz=gz)
    return folder


def _cifar_records(n: int, label_bytes: int, num_classes: int, seed: int) -> bytes:
    labels = (np.arange(n) % num_classes).astype(np.uint8)
    rows = np.zeros((n, label_bytes + CIFAR_PIXELS), dtype=np.uint8)
    rows[:, label_bytes - 1] = labels
    if label_bytes == 2:
        rows[:, 0] = labels // 5  # CIFAR-100's coarse label: 20 super-classes of 5
    rows[:, label_bytes:] = class_images(labels, (3, 32, 32), seed).reshape(n, -1)
    return rows.tobytes()


def write_fake_cifar10(folder: Path, n_per_batch: int = 20, n_test: int = 20) -> Path:
    """``folder/cifar-10-batches-bin/`` with five train batches and a test batch; returns folder."""
    data = folder / "cifar-10-batches-bin"
    data.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        (data / f"data_batch_{i}.bin").write_bytes(_cifar_records(n_per_batch, 1, 10, seed=i))
    (data / "test_batch.bin").write_bytes(_cifar_records(n_test, 1, 10, seed=0))
    return folder


def write_fake_cifar100(folder: Path, n_train: int = 200, n_test: int = 100) -> Path:
    """``folder/cifar-100-binary/{train,test}.bin`` (coarse, fine label bytes); returns folder."""
    data = folder / "cifar-100-binary"
    data.mkdir(parents=True, exist_ok=True)
    (data / "train.bin").write_bytes(_cifar_records(n_train, 2, 100, seed=1))
    (data / "test.bin").write_bytes(_cifar_records(n_test, 2, 100, seed=0))
    return folder


def write_pickled_cifar10(folder: Path) -> Path:
    """Only the python (pickled) CIFAR-10 layout, with junk contents: it must never be read."""
    data = folder / "cifar-10-batches-py"
    data.mkdir(parents=True, exist_ok=True)
    for name in ("batches.meta", "test_batch", *(f"data_batch_{i}" for i in range(1, 6))):
        (data / name).write_bytes(b"not a pickle")
    return folder


def write_fake_imagefolder(
    folder: Path,
    classes: tuple[str, ...] = ("cat", "dog", "fox"),
    per_class: tuple[int, int] = (4, 2),
    size: int = 12,
) -> Path:
    """``folder/{train,val}/<class>/*.png`` (RGB, ``size`` px); returns folder."""
    from PIL import Image

    for part, n in zip(("train", "val"), per_class, strict=True):
        for label, name in enumerate(classes):
            (folder / part / name).mkdir(parents=True, exist_ok=True)
            labels = np.full(n, label)
            pixels = class_images(labels, (size, size, 3), seed=label)
            for i, image in enumerate(pixels):
                Image.fromarray(image, "RGB").save(folder / part / name / f"{i}.png")
    return folder
