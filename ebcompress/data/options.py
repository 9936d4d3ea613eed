"""What :func:`ebcompress.data.load_data` is asked for: :class:`DataOptions`.

The data package's own type, so that it never reads the recipe schema: the shell converts the
recipe's ``data`` section (:func:`ebcompress.methods.data.data_options`), your own code can
build it directly. The fields are the recipe's ``data.*`` fields, and the error messages name
them so (``data.augment.pad``); ``None`` means "the data set's default".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class AugmentOptions:
    """Training augmentation (``data.augment``), mapped onto timm's ``create_transform``.

    ``None`` and ``crop="auto"`` take the data set's default (:mod:`ebcompress.data.augment`);
    which options apply to which data set is checked when the data is loaded.
    """

    crop: Literal["auto", "pad", "random_resized", "none"] = "auto"
    pad: int | None = None
    hflip: float | None = None
    vflip: float = 0.0
    scale: tuple[float, float] | None = None
    ratio: tuple[float, float] | None = None
    color_jitter: float | None = None
    auto_augment: str | None = None
    re_prob: float = 0.0
    crop_pct: float | None = None
    interpolation: Literal["bilinear", "bicubic", "nearest", "lanczos"] | None = None

    def chosen(self) -> list[str]:
        """The options set to something other than their default, in field order (an option
        at its default changes nothing, so it is never refused)."""
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) != f.default]


@dataclass(frozen=True)
class DataOptions:
    """One data set by name (:data:`ebcompress.data.DATASETS`), where it lives, and the input size.

    ``root`` is the folder read from (``None``: the data set's default, if it has one);
    ``train_subset`` / ``test_subset`` keep at most that many samples (class-balanced);
    ``mean`` / ``std`` replace the normalisation (0..1 units, 1 value or one per channel);
    ``skip_bad_images`` skips unreadable image files instead of stopping.
    """

    name: str
    root: str | None = None
    image_size: int = 32
    train_subset: int | None = None
    test_subset: int | None = None
    augment: AugmentOptions = field(default_factory=AugmentOptions)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    skip_bad_images: bool = False
