"""The recipe's small sections (model, data and augmentation, retrain, export) and their
shared base: every section rejects unknown keys."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    model_validator,
)


def _registered(kind: str) -> AfterValidator:
    """A check of a name against the registry of ``kind``; these live with what they name
    (torch), so they are imported when a recipe is validated, not with this module."""

    def check(name: str) -> str:
        from ebcompress.data import DATASETS
        from ebcompress.deploy.formats import FORMATS
        from ebcompress.engine.precision import PRECISIONS

        return {r.kind: r for r in (PRECISIONS, DATASETS, FORMATS)}[kind].check(name)

    return AfterValidator(check)


Precision = Annotated[str, _registered("precision")]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelConfig(_Section):
    """Which network to build: ``vgg16_cifar``, ``timm:resnet50`` or ``tv:resnet18``, and the
    local weights file it starts from (``init``; None: a random initialisation).

    ``init_sha256`` is that file's checksum: a run fills it in (its ``recipe.yaml`` records
    it), so a resume refuses a file whose content changed; set it to pin the file. Moving the
    file (another ``init`` path, the same checksum) is no change.
    """

    name: str = "vgg11_cifar"
    kwargs: dict[str, Any] = Field(default_factory=dict)
    init: str | None = Field(None, min_length=1)
    init_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")

    @model_validator(mode="after")
    def _no_data_set_arguments(self) -> ModelConfig:
        taken = sorted({"num_classes", "in_chans"} & set(self.kwargs))
        if taken:
            raise ValueError(f"kwargs {taken} are set from the data set; remove them")
        if "init" in self.kwargs:
            raise ValueError("kwargs ['init']: the starting weights are model.init")
        if self.init_sha256 is not None and self.init is None:
            raise ValueError("init_sha256 pins the checksum of model.init; set model.init too")
        try:  # a YAML alias can make a value contain itself; it could not be written back
            json.dumps(self.kwargs, default=str)
        except ValueError:
            raise ValueError("kwargs refer to themselves (a recursive YAML alias)") from None
        return self


class AugmentConfig(_Section):
    """Training augmentation, mapped onto timm's ``create_transform`` arguments.

    ``None`` (and ``crop: auto``) means "the data set's default" (docs/recipes.md,
    "Augmentation defaults"); which options apply to which data sets is checked when the data
    is loaded (:mod:`ebcompress.data.augment`), because it depends on ``data.name``.
    """

    crop: Literal["auto", "pad", "random_resized", "none"] = "auto"
    pad: int | None = Field(None, ge=1, le=256)
    hflip: float | None = Field(None, ge=0, le=1)
    vflip: float = Field(0.0, ge=0, le=1)
    scale: tuple[float, float] | None = None
    ratio: tuple[float, float] | None = None
    color_jitter: float | None = Field(None, ge=0)
    auto_augment: str | None = Field(None, min_length=1)
    re_prob: float = Field(0.0, ge=0, le=1)
    crop_pct: float | None = Field(None, gt=0, le=1)
    interpolation: Literal["bilinear", "bicubic", "nearest", "lanczos"] | None = None

    @model_validator(mode="after")
    def _ranges_in_order(self) -> AugmentConfig:
        if self.scale is not None and not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"scale {list(self.scale)} must be [lo, hi] with 0 < lo <= hi <= 1")
        if self.ratio is not None and not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio {list(self.ratio)} must be [lo, hi] with 0 < lo <= hi")
        return self


class DataConfig(_Section):
    """Which data set, where it lives, and the input size the model sees."""

    name: Annotated[str, _registered("data set")] = "digits"
    root: str | None = None
    image_size: int = Field(32, ge=8, le=1024)
    train_subset: int | None = Field(None, ge=1)
    test_subset: int | None = Field(None, ge=1)
    num_workers: int = Field(0, ge=0, le=64)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    mean: list[float] | None = Field(None, min_length=1)
    std: list[Annotated[float, Field(gt=0)]] | None = Field(None, min_length=1)
    skip_bad_images: bool = False

    @model_validator(mode="after")
    def _normalisation_in_unit_range(self) -> DataConfig:
        # images are read as 0..1: ImageNet's 123.7 / 58.4 in 0..255 units would pass silently
        for field, values in (("mean", self.mean), ("std", self.std)):
            bad = [v for v in values or () if not 0 <= v <= 1]
            if bad:
                raise ValueError(
                    f"{field} {bad} must be in 0..1 units (images are scaled to 0..1); divide "
                    "0..255 values by 255"
                )
        return self


#: ``retrain.distill.teacher`` naming the network the ticket was drawn from, not a file
DENSE_TEACHER = "dense"


class DistillSection(_Section):
    """``retrain.distill``: the slim network learns from a frozen teacher's softened outputs
    as well as the labels (Hinton et al., 2015; :mod:`ebcompress.engine.distill`).

    ``teacher``: ``dense``, the dense network the ticket was drawn from (EB: the search's
    weights at the ticket's epoch; network slimming, LT, ThiNet: the trained dense network;
    with ``prune.dense_epochs: 0``, ``model.init``'s), or a local weights file (safetensors
    or a weights-only PyTorch checkpoint) of ``model`` (default: the recipe's own
    architecture, ``kwargs`` its arguments). ``teacher_sha256`` is that file's checksum, as
    ``model.init_sha256``: a run fills it in, a resume refuses a changed file (a moved one is
    accepted). ``alpha`` is the teacher term's share of the loss, ``temperature`` the softmax
    temperature T.
    """

    teacher: str = Field(DENSE_TEACHER, min_length=1)
    model: str | None = Field(None, min_length=1)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    teacher_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    alpha: float = Field(0.5, ge=0, le=1)
    temperature: float = Field(4.0, gt=0)

    @property
    def from_file(self) -> bool:
        return self.teacher != DENSE_TEACHER

    @model_validator(mode="after")
    def _file_fields_need_a_file(self) -> DistillSection:
        if not self.from_file:
            given = [f for f in ("model", "teacher_sha256") if getattr(self, f) is not None]
            if given or self.kwargs:
                name = (given or ["kwargs"])[0]
                raise ValueError(
                    f"{name} describes a teacher file; teacher 'dense' is the run's own "
                    "dense network (give teacher: PATH, or drop it)"
                )
        if self.from_file and self.kwargs and self.model is None:
            raise ValueError(
                "kwargs are the teacher file's architecture arguments; set model too "
                "(without it the teacher is the recipe's model with model.kwargs)"
            )
        if taken := sorted({"num_classes", "in_chans", "init"} & set(self.kwargs)):
            raise ValueError(f"kwargs {taken} are set from the data set and teacher; remove them")
        return self


class RetrainConfig(_Section):
    """Retraining the slim network.

    ``mode``: ``finetune`` (default) inherits the ticket's weights, ``reinit`` re-initialises.
    ``schedule``: ``restart`` (default) trains the slim network on a fresh copy of the dense
    schedule, ``epochs`` long (default ``train.epochs``, milestones scaled): the paper's
    protocol, which gives every ticket a full high-lr phase to recover in. ``continue`` (EB
    finetune only) resumes the dense schedule from the ticket's epoch to ``train.epochs``
    (``epochs`` then counts back from its end): cheaper, but a late ticket gets only a few
    epochs at a small lr.
    """

    mode: Literal["finetune", "reinit"] = "finetune"
    schedule: Literal["restart", "continue"] = "restart"
    epochs: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0)
    precision: Precision = "fp32"
    distill: DistillSection | None = None

    @property
    def dense_teacher(self) -> bool:
        """Whether the retraining distils from the run's own dense network."""
        return self.distill is not None and not self.distill.from_file


class ExportConfig(_Section):
    formats: list[Annotated[str, _registered("export format")]] = Field(
        default_factory=lambda: ["bundle"]
    )
    opset: int = Field(17, ge=9)
    dynamic_batch: bool = True
