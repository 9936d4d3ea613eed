"""``cifar10`` / ``cifar100`` from the official *binary* archives, held as one uint8 tensor.

Only ``cifar-10-batches-bin`` / ``cifar-100-binary``, never the pickled python version: this
project does not unpickle files. Normalised with the standard CIFAR mean/std.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ebcompress.data.options import DataOptions
from ebcompress.data.split import DataSplit
from ebcompress.data.tensors import resize, tensor_split
from ebcompress.errors import UserError


@dataclass(frozen=True)
class _CifarLayout:
    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    label_bytes: int  # CIFAR-100 stores (coarse, fine); we use the last (fine) label
    num_classes: int
    pickled: str
    archive: str
    mean: tuple[float, ...]
    std: tuple[float, ...]


CIFAR = {
    "cifar10": _CifarLayout(
        "cifar-10-batches-bin",
        tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
        ("test_batch.bin",),
        1,
        10,
        "cifar-10-batches-py",
        "cifar-10-binary.tar.gz",
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
    ),
    "cifar100": _CifarLayout(
        "cifar-100-binary",
        ("train.bin",),
        ("test.bin",),
        2,
        100,
        "cifar-100-python",
        "cifar-100-binary.tar.gz",
        (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
    ),
}


def load_cifar(cfg: DataOptions, root: Path, seed: int) -> DataSplit:
    """CIFAR-10/100 from ``root`` or ``root/<binary folder>``; bad files are one-line errors."""
    layout = CIFAR[cfg.name]
    folder = root if root.name == layout.folder else root / layout.folder
    if not folder.is_dir() and all((root / f).is_file() for f in layout.train):
        folder = root  # the binary files extracted straight into root
    if not folder.is_dir() and (root.name == layout.pickled or (root / layout.pickled).is_dir()):
        raise UserError(
            f"{root}: found only the pickled python version ({layout.pickled}); ebcompress never "
            f"unpickles files: download the binary version {layout.archive} from "
            f"https://www.cs.toronto.edu/~kriz/ and extract it there (it gives {layout.folder}/)"
        )
    fix = (
        f"expected {layout.folder}/ with {', '.join(layout.train + layout.test)} "
        f"(extract {layout.archive} there, or pass --data DIR pointing at its parent)"
    )
    train = _read_cifar(folder, layout.train, layout, fix)
    test = _read_cifar(folder, layout.test, layout, fix)
    train, test = ((resize(x, cfg.image_size), y) for x, y in (train, test))
    return tensor_split(
        cfg.name,
        train,
        test,
        layout.num_classes,
        cfg=cfg,
        seed=seed,
        stats=(layout.mean, layout.std),
    )


def _read_cifar(
    folder: Path, names: tuple[str, ...], layout: _CifarLayout, fix: str
) -> tuple[Tensor, Tensor]:
    """Records of ``label_bytes`` label bytes then 3072 pixels (1024 R, 1024 G, 1024 B)."""
    record = layout.label_bytes + 3 * 32 * 32
    images, labels = [], []
    for name in names:
        path = folder / name
        if not path.is_file():
            raise UserError(f"no {name} in {folder}; {fix}")
        raw = np.fromfile(path, dtype=np.uint8)
        if raw.size == 0 or raw.size % record:
            raise UserError(
                f"{path}: {raw.size} bytes is not a whole number of {record}-byte records; "
                f"the file is truncated or not the binary version; {fix}"
            )
        rows = raw.reshape(-1, record)
        label = rows[:, layout.label_bytes - 1]
        if int(label.max()) >= layout.num_classes:
            raise UserError(f"{path}: labels exceed {layout.num_classes - 1}; {fix}")
        images.append(torch.from_numpy(rows[:, layout.label_bytes :].reshape(-1, 3, 32, 32)))
        labels.append(torch.from_numpy(label.astype(np.int64)))
    return torch.cat(images), torch.cat(labels)
