"""Data sets by name, held as in-memory tensors wherever they fit.

``load_data(cfg)`` turns a :class:`~ebcompress.recipe.DataConfig` into a :class:`DataSplit`
whose datasets yield ``(float C x H x W normalised image, int label)``.

- ``digits`` (embedded) and ``fake`` (tests only): :mod:`ebcompress.data.tensors`.
- ``fashion_mnist`` (IDX files): :mod:`ebcompress.data.fashion_mnist`.
- ``cifar10`` / ``cifar100`` (binary archives only): :mod:`ebcompress.data.cifar`.
- ``imagenet`` / ``imagefolder`` (``train/`` and ``val/`` class folders):
  :mod:`ebcompress.data.image_folder`.

Training augmentation follows ``data.augment`` (:mod:`ebcompress.data.augment`); its defaults
suit the data set and, for image folders, the image size. ``data.mean`` / ``data.std`` override
the normalisation.

``train_subset`` / ``test_subset`` keep at most that many samples: a class-balanced subset drawn
with the run seed, so runs are reproducible. Digits and Fashion-MNIST are normalised with the
mean/std of their full training split at the model's input size.
"""

from __future__ import annotations

import typing
from pathlib import Path

from torch.utils.data import Dataset

from ebcompress.data.augment import RandomCropFlip, check_augment
from ebcompress.data.cifar import load_cifar
from ebcompress.data.fashion_mnist import DEFAULT_ROOT as _FASHION_ROOT
from ebcompress.data.fashion_mnist import load_fashion_mnist
from ebcompress.data.split import DataSplit, balanced_subset
from ebcompress.data.tensors import TensorImageDataset, fake_data, load_digits, load_fake
from ebcompress.errors import UserError
from ebcompress.recipe import DataConfig

__all__ = [
    "DATASETS",
    "DEFAULT_ROOTS",
    "DataSplit",
    "RandomCropFlip",
    "TensorImageDataset",
    "balanced_subset",
    "fake_data",
    "load_data",
    "skipped_images",
]

#: The data set names, in the recipe schema's order (DataConfig.name is the one source of truth).
DATASETS: tuple[str, ...] = typing.get_args(DataConfig.model_fields["name"].annotation)
DEFAULT_ROOTS: dict[str, str] = {"fashion_mnist": _FASHION_ROOT}

_EXPECTED = {
    "fashion_mnist": "train-images-idx3-ubyte.gz and the other Fashion-MNIST IDX files",
    "cifar10": "cifar-10-batches-bin/ (from cifar-10-binary.tar.gz)",
    "cifar100": "cifar-100-binary/ (from cifar-100-binary.tar.gz)",
    "imagenet": "train/ and val/ with one sub-folder of images per class",
    "imagefolder": "train/ and val/ with one sub-folder of images per class",
}


def load_data(cfg: DataConfig, *, root: str | None = None, seed: int = 0) -> DataSplit:
    """The data set ``cfg.name`` as a :class:`DataSplit`.

    ``root`` (the CLI's ``--data DIR``) overrides ``cfg.root``, which overrides
    :data:`DEFAULT_ROOTS`; ``digits`` and ``fake`` read no files and ignore it. ``seed`` draws
    the train/test subsets. A missing or malformed data set, or a ``data.augment`` option that
    cannot apply to it, raises a one-line UserError.
    """
    check_augment(cfg)  # before reading any file: a recipe mistake should not wait for data
    if cfg.name == "digits":
        return load_digits(cfg, seed)
    if cfg.name == "fake":
        return load_fake(cfg)
    where = root if root is not None else cfg.root or DEFAULT_ROOTS.get(cfg.name)
    if where is None:
        raise UserError(
            f"data set {cfg.name!r} is read from disk but no folder was given; "
            f"pass --data DIR (or set data.root) to the folder holding {_EXPECTED[cfg.name]}"
        )
    path = Path(where).expanduser()
    if cfg.name == "fashion_mnist":
        return load_fashion_mnist(cfg, path, seed)
    if cfg.name in ("cifar10", "cifar100"):
        return load_cifar(cfg, path, seed)
    from ebcompress.data.image_folder import load_imagefolder  # torchvision, only when needed

    return load_imagefolder(cfg, path, seed)


def skipped_images(split: DataSplit) -> list[str]:
    """The image files skipped as unreadable so far (``data.skip_bad_images``), sorted.

    Covers the train and test sets, including what DataLoader workers skipped; always empty
    for the in-memory tensor data sets.
    """
    found: set[str] = set()
    for dataset in (split.train, split.test):
        found.update(_skipped(dataset))
    return sorted(found)


def _skipped(dataset: Dataset) -> list[str]:
    # Duck-typed so that this module need not import torchvision (image_folder does).
    method = getattr(dataset, "skipped_images", None)
    return list(method()) if callable(method) else []
