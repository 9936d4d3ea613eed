"""``imagenet`` / ``imagefolder``: ``root/train/<class>/*`` and ``root/val/<class>/*``.

Read by torchvision's ImageFolder with the transforms of
:func:`ebcompress.data.augment.image_transforms` and ImageNet's mean/std (unless ``data.mean`` /
``data.std`` say otherwise).

An image that cannot be decoded is a one-line :class:`UnreadableImageError` naming the file,
also from a DataLoader worker. With ``data.skip_bad_images`` it is replaced by the next
readable sample of the same set (wrapping around, so deterministically) and flagged in a
shared-memory tensor, so the main process sees what its workers skipped
(:meth:`CheckedImageFolder.skipped_images`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchvision.datasets import ImageFolder

from ebcompress.data.augment import check_augment, image_transforms
from ebcompress.data.options import DataOptions
from ebcompress.data.split import DataSplit, balanced_subset, check_stats_override, override_stats
from ebcompress.errors import UserError

_SKIP_HINT = "remove or replace it, or set data.skip_bad_images: true"


class UnreadableImageError(UserError):
    """An image file that cannot be decoded: one line naming it and the fix.

    DataLoader re-raises a worker's exception as ``type(exc)("Caught ... in DataLoader worker
    process N.\\nOriginal Traceback ...")``; this class reduces such a message to the one line
    the worker raised, so the CLI still prints one line (and exits 2), not a traceback.
    """

    def __init__(self, message: str) -> None:
        super().__init__(_worker_line(str(message), type(self).__name__))


def _worker_line(message: str, name: str) -> str:
    """The ``<name>: <line>`` of a DataLoader worker's wrapped traceback, else ``message``."""
    if "Original Traceback" not in message:
        return message
    for line in reversed(message.splitlines()):
        head, sep, rest = line.strip().partition(": ")
        if sep and head.rsplit(".", 1)[-1] == name:
            return rest
    return message


class CheckedImageFolder(ImageFolder):
    """ImageFolder whose unreadable files raise :class:`UnreadableImageError` or are skipped.

    With ``skip_bad`` a file that fails to decode is flagged in a shared-memory bool tensor
    (one flag per sample; it is shared with fork and spawn workers alike) and the next
    readable sample is returned in its place.
    """

    def __init__(self, root: str, transform: Callable, *, skip_bad: bool = False) -> None:
        super().__init__(root, transform=transform)
        self.skip_bad = skip_bad
        self._bad = self._flags()

    def _flags(self) -> Tensor:
        return torch.zeros(len(self.samples), dtype=torch.bool).share_memory_()

    def keep(self, indices: Sequence[int]) -> None:
        """Keep only the samples at ``indices`` (a subset), in that order."""
        self.samples = [self.samples[i] for i in indices]
        self.imgs = self.samples
        self.targets = [target for _, target in self.samples]
        self._bad = self._flags()

    def skipped_images(self) -> list[str]:
        """The files skipped so far, by any process, in sample order."""
        return [self.samples[i][0] for i in self._bad.nonzero().flatten().tolist()]

    def __getitem__(self, index: int) -> tuple[Any, int]:
        n = len(self.samples)
        for step in range(n):
            i = (index + step) % n
            if self.skip_bad and self._bad[i]:  # known bad: not read again
                continue
            path, target = self.samples[i]
            try:
                image = self.loader(path)
            # PIL raises many types for a broken file (OSError, SyntaxError, ValueError,
            # struct.error, DecompressionBombError...); all of them are that file's fault.
            except Exception as exc:
                if not self.skip_bad:
                    raise UnreadableImageError(
                        f"image {path} cannot be read ({_reason(exc)}); {_SKIP_HINT}"
                    ) from None
                self._bad[i] = True
                continue
            return self.transform(image), target
        raise UnreadableImageError(
            f"none of the {n} images under {self.root} can be read; check the folder"
        )


def _reason(exc: Exception) -> str:
    """Why a file failed to decode, in a few words (PIL's own message repeats the file)."""
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):
        return "not an image format PIL recognises"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def load_imagefolder(cfg: DataOptions, root: Path, seed: int) -> DataSplit:
    """The image folder under ``root``; train/ and val/ must hold the same class folders."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    check_augment(cfg)
    check_stats_override(cfg, 3)
    mean, std = override_stats(cfg, 3, (tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD)))
    transforms = dict(zip(("train", "val"), image_transforms(cfg, mean, std), strict=True))
    parts = {}
    for part in ("train", "val"):
        folder = root / part
        if not folder.is_dir():
            raise UserError(
                f"no folder {folder}; expected {root}/train/ and {root}/val/ with one sub-folder "
                "of images per class; pass --data DIR pointing at their parent"
            )
        try:
            parts[part] = CheckedImageFolder(
                str(folder), transforms[part], skip_bad=cfg.skip_bad_images
            )
        except (FileNotFoundError, ValueError) as exc:
            raise UserError(f"{folder}: {exc}; put one sub-folder of images per class") from None
    train, val = parts["train"], parts["val"]
    if train.classes != val.classes:
        odd = sorted(set(train.classes) ^ set(val.classes))[:5]
        raise UserError(
            f"{root}: train/ has {len(train.classes)} classes and val/ has {len(val.classes)}, "
            f"differing in {', '.join(odd)}; both need the same class folders"
        )
    for dataset, n in ((train, cfg.train_subset), (val, cfg.test_subset)):
        if n is not None and n < len(dataset):
            dataset.keep(balanced_subset(torch.tensor(dataset.targets), n, seed).tolist())
    return DataSplit(
        name=cfg.name,
        train=train,
        test=val,
        num_classes=len(train.classes),
        in_chans=3,
        image_size=cfg.image_size,
        mean=mean,
        std=std,
    )
