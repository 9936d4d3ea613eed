"""``fashion_mnist``: the four IDX files (gzipped or plain), held as one uint8 tensor.

Read from ``root`` (default: Debian's ``dataset-fashion-mnist`` folder) or
``root/FashionMNIST/raw`` (torchvision's layout). Sizes up to 4 px larger than 28 are
zero-padded, centred (exact: the background is 0); other sizes are resized bilinearly once.
Normalised with the mean/std of the full training split at the model's input size.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ebcompress.data.options import DataOptions
from ebcompress.data.split import DataSplit
from ebcompress.data.tensors import resize, tensor_split
from ebcompress.errors import UserError

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_FASHION_FIX = "install it with `apt-get install dataset-fashion-mnist` or pass --data DIR"


def load_fashion_mnist(cfg: DataOptions, root: Path, seed: int) -> DataSplit:
    """Fashion-MNIST from the IDX files in ``root``; a bad file is a one-line UserError."""
    folder = root
    if not _idx_path(root, "train-images-idx3-ubyte") and (root / "FashionMNIST" / "raw").is_dir():
        folder = root / "FashionMNIST" / "raw"  # torchvision's download layout
    split = {}
    for part, (image_name, label_name) in _FASHION_FILES.items():
        images = _read_idx(folder, image_name, ndim=3)
        labels = _read_idx(folder, label_name, ndim=1)
        if len(images) != len(labels):
            raise UserError(
                f"{folder}: {image_name} holds {len(images)} images but {label_name} holds "
                f"{len(labels)} labels; the files do not belong together; {_FASHION_FIX}"
            )
        if len(labels) and int(labels.max()) >= 10:
            raise UserError(f"{folder}: {label_name} has labels above 9; {_FASHION_FIX}")
        split[part] = (_fit_fashion(images.unsqueeze(1), cfg.image_size), labels.long())
    return tensor_split("fashion_mnist", split["train"], split["test"], 10, cfg=cfg, seed=seed)


def _fit_fashion(images: Tensor, size: int) -> Tensor:
    """Zero-pad (centred, exact) when ``size`` is at most 4 px larger, else resize bilinearly."""
    grow = size - images.shape[-1]
    if 0 < grow <= 4 and images.shape[-2] == images.shape[-1]:
        before = grow // 2
        return F.pad(images, (before, grow - before, before, grow - before))
    return resize(images, size)


def _idx_path(folder: Path, name: str) -> Path | None:
    return next((p for p in (folder / f"{name}.gz", folder / name) if p.is_file()), None)


def _read_idx(folder: Path, name: str, ndim: int) -> Tensor:
    """One IDX file of unsigned bytes (gzipped or plain), its header and size checked."""
    path = _idx_path(folder, name)
    if path is None:
        wanted = ", ".join(n for pair in _FASHION_FILES.values() for n in pair)
        raise UserError(
            f"no {name}[.gz] in {folder}; expected the Fashion-MNIST IDX files {wanted} "
            f"(each gzipped .gz or plain); {_FASHION_FIX}"
        )
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise UserError(f"{path}: cannot read it ({exc}); {_FASHION_FIX}") from None
    magic = bytes((0, 0, 0x08, ndim))
    header = 4 + 4 * ndim
    if raw[:4] != magic or len(raw) < header:
        raise UserError(
            f"{path}: magic number 0x{raw[:4].hex()} is not 0x{magic.hex()} (IDX, unsigned "
            f"bytes, {ndim} dimensions); it is not a Fashion-MNIST file; {_FASHION_FIX}"
        )
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) - header != math.prod(dims):
        raise UserError(
            f"{path}: the header promises {' x '.join(map(str, dims))} = {math.prod(dims)} bytes "
            f"but {len(raw) - header} follow; the file is truncated or corrupt; {_FASHION_FIX}"
        )
    return torch.from_numpy(np.frombuffer(raw, np.uint8, offset=header).reshape(dims).copy())
