"""Data sets by name, held as in-memory tensors wherever they fit.

``load_data(cfg)`` turns a :class:`DataOptions` (the shell builds it from the recipe's
``data`` section) into a :class:`DataSplit` whose datasets yield ``(float C x H x W normalised
image, int label)``.

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

from collections.abc import Callable
from pathlib import Path

from torch.utils.data import Dataset

from ebcompress.data.augment import RandomCropFlip, check_augment
from ebcompress.data.cifar import load_cifar
from ebcompress.data.fashion_mnist import DEFAULT_ROOT as _FASHION_ROOT
from ebcompress.data.fashion_mnist import load_fashion_mnist
from ebcompress.data.options import AugmentOptions, DataOptions
from ebcompress.data.split import DataSplit, balanced_subset
from ebcompress.data.tensors import TensorImageDataset, fake_data, load_digits, load_fake
from ebcompress.errors import UserError
from ebcompress.registry import Registry

__all__ = [
    "DATASETS",
    "DEFAULT_ROOTS",
    "AugmentOptions",
    "DataOptions",
    "DataSplit",
    "RandomCropFlip",
    "TensorImageDataset",
    "balanced_subset",
    "fake_data",
    "load_data",
    "skipped_images",
]

#: Data set name -> ``load(cfg, folder, seed)``; ``folder`` is None for the data sets that
#: read no files (those without an entry in ``_EXPECTED``). Names in the order listings show.
DATASETS: Registry[Callable[[DataOptions, Path | None, int], DataSplit]] = Registry("data set")
DATASETS.register("digits", lambda cfg, folder, seed: load_digits(cfg, seed))
DATASETS.register("fashion_mnist", load_fashion_mnist)
DATASETS.register("cifar10", load_cifar)
DATASETS.register("cifar100", load_cifar)
# torchvision is imported only when an image folder is read
DATASETS.register_lazy("imagenet", "ebcompress.data.image_folder:load_imagefolder")
DATASETS.register_lazy("imagefolder", "ebcompress.data.image_folder:load_imagefolder")
DATASETS.register("fake", lambda cfg, folder, seed: load_fake(cfg))

DEFAULT_ROOTS: dict[str, str] = {"fashion_mnist": _FASHION_ROOT}

_EXPECTED = {
    "fashion_mnist": "train-images-idx3-ubyte.gz and the other Fashion-MNIST IDX files",
    "cifar10": "cifar-10-batches-bin/ (from cifar-10-binary.tar.gz)",
    "cifar100": "cifar-100-binary/ (from cifar-100-binary.tar.gz)",
    "imagenet": "train/ and val/ with one sub-folder of images per class",
    "imagefolder": "train/ and val/ with one sub-folder of images per class",
}


def load_data(cfg: DataOptions, *, root: str | None = None, seed: int = 0) -> DataSplit:
    """The data set ``cfg.name`` (one of :data:`DATASETS`) as a :class:`DataSplit`.

    ``root`` (the CLI's ``--data DIR``) overrides ``cfg.root``, which overrides
    :data:`DEFAULT_ROOTS`; ``digits`` and ``fake`` read no files and ignore it. ``seed`` draws
    the train/test subsets. An unknown name, a missing or malformed data set, or a
    ``data.augment`` option that cannot apply to it, raises a one-line UserError.
    """
    if cfg.name not in DATASETS:
        raise UserError(
            f"data.name {cfg.name!r} is not a data set; choose from {', '.join(DATASETS)}"
        )
    check_augment(cfg)  # before reading any file: a recipe mistake should not wait for data
    load = DATASETS.get(cfg.name)
    if cfg.name not in _EXPECTED:
        return load(cfg, None, seed)
    where = root if root is not None else cfg.root or DEFAULT_ROOTS.get(cfg.name)
    if where is None:
        raise UserError(
            f"data set {cfg.name!r} is read from disk but no folder was given; "
            f"pass --data DIR (or set data.root) to the folder holding {_EXPECTED[cfg.name]}"
        )
    return load(cfg, Path(where).expanduser(), seed)


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
