"""Training augmentation: ``data.augment`` (:class:`AugmentOptions`) resolved per data set.

Defaults (docs/recipes.md, "Augmentation defaults"):

- ``digits``, ``fake``: none.
- ``fashion_mnist``, ``cifar10`` / ``cifar100``: random crop with zero padding
  ``image_size // 8`` (at least 1) and a horizontal flip with probability 0.5.
- image folders (``imagefolder`` / ``imagenet``) of at most 64 px: the same pad-and-crop and
  flip (torchvision's RandomCrop and flips) and a plain resize for evaluation; above 64 px,
  timm's ImageNet defaults (RandomResizedCrop 0.08-1, flip, colour jitter 0.4; evaluation
  resizes to ``image_size / 0.875`` and centre-crops).

Tensor data sets honour ``crop`` (``pad`` / ``none``), ``pad``, ``hflip``, ``vflip`` and
``re_prob`` (timm's RandomErasing on the normalised batch); the options that only exist for
PIL images are refused for them by :func:`check_augment` rather than ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ebcompress.data.options import DataOptions
from ebcompress.errors import UserError

SMALL_IMAGE = 64  # at most this many pixels an image folder is augmented the CIFAR way
IMAGE_FOLDERS = ("imagenet", "imagefolder")
_PAD_CROP_SETS = ("fashion_mnist", "cifar10", "cifar100")  # tensor sets cropped by default
_NO_FLIP_SETS = ("digits", "fake")  # a flipped digit is not a digit; fake has no augmentation
_IMAGE_FOLDER_ONLY = ("scale", "ratio", "color_jitter", "auto_augment", "crop_pct")
_IMAGE_FOLDER_ONLY += ("interpolation",)
_IMAGENET_JITTER = 0.4  # timm's default colour jitter


def default_pad(image_size: int) -> int:
    """The zero padding of the CIFAR-style random crop: an eighth of the side, at least 1."""
    return max(1, image_size // 8)


def resolved_crop(cfg: DataOptions) -> str:
    """``pad``, ``random_resized`` or ``none``: ``data.augment.crop`` with ``auto`` decided."""
    crop = cfg.augment.crop
    if crop != "auto":
        return crop
    if cfg.name in IMAGE_FOLDERS:
        return "pad" if cfg.image_size <= SMALL_IMAGE else "random_resized"
    return "pad" if cfg.name in _PAD_CROP_SETS else "none"


def resolved_hflip(cfg: DataOptions) -> float:
    """The horizontal-flip probability: ``data.augment.hflip`` or the data set's default."""
    if cfg.augment.hflip is not None:
        return cfg.augment.hflip
    return 0.0 if cfg.name in _NO_FLIP_SETS else 0.5


def check_augment(cfg: DataOptions) -> None:
    """UserError naming the first ``data.augment`` option that cannot apply to this data set."""
    chosen = cfg.augment.chosen()
    crop = resolved_crop(cfg)
    if cfg.name not in IMAGE_FOLDERS:
        for field in _IMAGE_FOLDER_ONLY:
            if field in chosen:
                raise UserError(
                    f"data.augment.{field} applies to image folders (imagefolder/imagenet) "
                    f"only, not to {cfg.name}; remove it"
                )
        if crop == "random_resized":
            raise UserError(
                "data.augment.crop: random_resized applies to image folders "
                f"(imagefolder/imagenet) only, not to {cfg.name}; use pad or none"
            )
    needs = {"pad": "pad", "scale": "random_resized", "ratio": "random_resized"}
    for field, wanted in needs.items():
        if field in chosen and crop != wanted:
            raise UserError(
                f"data.augment.{field} applies with data.augment.crop: {wanted} only (the crop "
                f"here is {crop}); remove it or set data.augment.crop: {wanted}"
            )


# ----------------------------------------------------------------------------- tensor sets


@dataclass(frozen=True)
class RandomCropFlip:
    """Random crop with zero padding ``pad`` plus horizontal / vertical flips, on tensors.

    The defaults are the standard CIFAR augmentation (give ``pad``); ``pad=0`` does not crop,
    a probability of 0 does not flip. Cheap: :meth:`prepare` zero-pads the whole store once,
    and a call crops (and flips) a whole batch with one gather from an unfolded view. It draws
    from torch's global generator, which DataLoader seeds per worker, so crops are
    reproducible under ``torch.manual_seed``; a step that is off draws nothing.
    """

    pad: int = 0
    hflip: float = 0.5
    vflip: float = 0.0

    def prepare(self, images: Tensor) -> Tensor:
        """N x C x H x W images zero-padded by ``pad`` on every side: the store to crop from."""
        return F.pad(images, (self.pad,) * 4) if self.pad else images

    def __call__(self, padded: Tensor) -> Tensor:
        """Random N x C x H x W crops, maybe flipped, of N x C x (H + 2 pad) x (W + 2 pad)."""
        n = padded.shape[0]
        crops = padded
        if self.pad:
            h, w = padded.shape[2] - 2 * self.pad, padded.shape[3] - 2 * self.pad
            side = 2 * self.pad + 1
            offsets = torch.randint(side * side, (n,))
            windows = padded.unfold(2, h, 1).unfold(3, w, 1)  # N x C x side x side x H x W
            crops = windows[torch.arange(n), :, offsets // side, offsets % side]
        if self.hflip:
            crops = torch.where(torch.rand(n, 1, 1, 1) < self.hflip, crops.flip(-1), crops)
        if self.vflip:
            crops = torch.where(torch.rand(n, 1, 1, 1) < self.vflip, crops.flip(-2), crops)
        return crops


def tensor_augment(cfg: DataOptions) -> RandomCropFlip | None:
    """The training augmentation of a tensor data set per ``cfg`` (None: none at all)."""
    crop, hflip, vflip = resolved_crop(cfg), resolved_hflip(cfg), cfg.augment.vflip
    pad = (cfg.augment.pad or default_pad(cfg.image_size)) if crop == "pad" else 0
    if not (pad or hflip or vflip):
        return None
    return RandomCropFlip(pad=pad, hflip=hflip, vflip=vflip)


# ----------------------------------------------------------------------------- image folders


def image_transforms(
    cfg: DataOptions, mean: tuple[float, ...], std: tuple[float, ...]
) -> tuple[Callable, Callable]:
    """The (train, evaluation) transforms of an image folder, from PIL image to tensor.

    ``random_resized`` is timm's ``create_transform`` as it stands; ``pad`` and ``none``
    resize (and centre-crop) to ``image_size``, then crop from zero padding and flip with
    torchvision, then apply timm's colour / auto-augment, normalisation and random erasing.
    """
    from timm.data import create_transform
    from timm.data.transforms import str_to_interp_mode
    from torchvision import transforms

    aug, size = cfg.augment, cfg.image_size
    small = size <= SMALL_IMAGE
    crop, hflip = resolved_crop(cfg), resolved_hflip(cfg)
    jitter = (
        aug.color_jitter if aug.color_jitter is not None else (0 if small else _IMAGENET_JITTER)
    )
    crop_pct = aug.crop_pct if aug.crop_pct is not None else (1.0 if small else None)
    common = {"mean": mean, "std": std, "interpolation": aug.interpolation or "bilinear"}
    evaluation = create_transform(size, is_training=False, crop_pct=crop_pct, **common)
    # timm adds a ColorJitter(0, 0, 0) for 0: a no-op that still draws random numbers
    options = {"color_jitter": jitter or None, "auto_augment": aug.auto_augment, **common}
    options["re_prob"] = aug.re_prob
    try:
        if crop == "random_resized":
            train = create_transform(
                size,
                is_training=True,
                scale=aug.scale,
                ratio=aug.ratio,
                hflip=hflip,
                vflip=aug.vflip,
                **options,
            )
            return train, evaluation
        _, secondary, final = create_transform(
            size, is_training=True, hflip=0.0, vflip=0.0, separate=True, **options
        )
    except (AssertionError, KeyError, ValueError) as exc:
        if aug.auto_augment is None:
            raise
        raise UserError(
            f"data.augment.auto_augment {aug.auto_augment!r} is not a timm policy ({exc}); "
            "use e.g. 'rand-m9-mstd0.5', 'original' or 'augmix-m5-w3'"
        ) from None
    primary: list[Callable] = [
        transforms.Resize(size, interpolation=str_to_interp_mode(common["interpolation"])),
        transforms.CenterCrop(size),
    ]
    if crop == "pad":
        primary.append(transforms.RandomCrop(size, padding=aug.pad or default_pad(size)))
    if hflip:
        primary.append(transforms.RandomHorizontalFlip(hflip))
    if aug.vflip:
        primary.append(transforms.RandomVerticalFlip(aug.vflip))
    return transforms.Compose([*primary, *secondary.transforms, *final.transforms]), evaluation
