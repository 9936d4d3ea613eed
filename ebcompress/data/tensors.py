"""Data sets held as one in-memory tensor: the dataset, its statistics, ``digits`` and ``fake``.

- ``digits`` (the embedded default): scikit-learn's bundled 1,797 real 8x8 digits, scaled
  0..16 -> [0, 1], resized bilinearly to ``image_size`` once, a fixed stratified 80/20 split
  (1,437 / 360) that does not depend on the run seed. No augmentation by default: the
  quickstart runs short schedules, and unaugmented data keeps its mask-distance trajectory
  reproducible.
- ``fake``: deterministic, learnable class patterns plus noise, for tests only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from ebcompress.data.augment import RandomCropFlip, check_augment, tensor_augment
from ebcompress.data.options import DataOptions
from ebcompress.data.split import (
    DataSplit,
    Stats,
    balanced_subset,
    check_stats_override,
    override_stats,
)

FAKE_SIZES = (256, 128)  # train, test samples of the fake set unless subsets say otherwise
_DIGITS_SEED = 0  # the digits train/test split is part of the data set, not of the run


class TensorImageDataset(Dataset):
    """Images in one N x C x H x W tensor (uint8 0..255 or float 0..1) and their labels.

    A sample is ``(float C x H x W image, int label)``: optionally augmented, then normalised
    with ``mean`` / ``std`` (given in 0..1 units) into a fresh tensor, then, with
    ``erase_prob``, randomly erased (timm's RandomErasing; the erased patch becomes the mean).
    DataLoader fetches whole batches through :meth:`__getitems__`, so the per-sample cost is a
    share of a few tensor ops.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        augment: RandomCropFlip | None = None,
        erase_prob: float = 0.0,
    ) -> None:
        if images.ndim != 4 or len(images) != len(labels):
            raise ValueError(f"images {tuple(images.shape)} do not match labels {len(labels)}")
        self.labels = labels.long()
        self.augment = augment
        self.erase = None
        if erase_prob > 0:
            from timm.data.random_erasing import RandomErasing

            self.erase = RandomErasing(erase_prob, mode="const", device="cpu")
        self._store = augment.prepare(images) if augment else images
        scale = 255.0 if images.dtype == torch.uint8 else 1.0
        std_t = torch.tensor(std, dtype=torch.float64).mul(scale).view(-1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float64).mul(scale).view(-1, 1, 1)
        self._scale, self._shift = (1 / std_t).float(), (-mean_t / std_t).float()
        self._label_list: list[int] = self.labels.tolist()  # a list index beats a tensor's

    @property
    def images(self) -> Tensor:
        """The stored N x C x H x W images, unaugmented and unnormalised (a view, no copy)."""
        if self.augment is None or not self.augment.pad:
            return self._store
        p = self.augment.pad
        h, w = self._store.shape[-2] - 2 * p, self._store.shape[-1] - 2 * p
        return self._store.narrow(-2, p, h).narrow(-1, p, w)

    def __len__(self) -> int:
        return len(self._label_list)

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[Tensor, int]]:
        images = self._store.index_select(0, torch.as_tensor(indices, dtype=torch.long))
        if self.augment is not None:
            images = self.augment(images)
        normalised = torch.addcmul(self._shift, images, self._scale)
        if self.erase is not None:
            normalised = self.erase(normalised)  # in place, per sample
        return list(zip(normalised.unbind(0), [self._label_list[i] for i in indices], strict=True))

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.__getitems__([index])[0]


def resize(images: Tensor, size: int) -> Tensor:
    """Bilinear resize of N x C x H x W to size x size, in chunks to bound memory; keeps dtype."""
    if images.shape[-2:] == (size, size):
        return images
    chunks = []
    for chunk in images.split(4096):
        out = F.interpolate(
            chunk.float(), size=(size, size), mode="bilinear", antialias=size < chunk.shape[-1]
        )
        if images.dtype == torch.uint8:
            out = out.round_().clamp_(0, 255).to(torch.uint8)
        chunks.append(out)
    return torch.cat(chunks)


def channel_stats(images: Tensor) -> Stats:
    """Per-channel mean and std in 0..1 units; uint8 goes through a histogram, not a float copy."""
    means, stds = [], []
    for c in range(images.shape[1]):
        channel = images[:, c].reshape(-1)
        if images.dtype == torch.uint8:
            counts = torch.bincount(channel, minlength=256).double()
            values = torch.arange(256, dtype=torch.float64) / 255
            mean = float((counts * values).sum() / counts.sum())
            var = float((counts * (values - mean) ** 2).sum() / counts.sum())
        else:
            mean, var = float(channel.double().mean()), float(channel.double().var(correction=0))
        means.append(mean)
        stds.append(max(math.sqrt(var), 1e-6))
    return tuple(means), tuple(stds)


def tensor_split(
    name: str,
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    num_classes: int,
    *,
    cfg: DataOptions | None = None,
    seed: int = 0,
    stats: Stats | None = None,
    subsets: bool = True,
) -> DataSplit:
    """Subset, normalise and wrap; ``cfg`` (None: no augmentation) gives the options.

    Normalisation: ``data.mean`` / ``data.std`` where given, else ``stats``, else the train
    split's own. ``subsets=False`` ignores ``cfg``'s subset sizes (the fake set is drawn to size).
    """
    in_chans = train[0].shape[1]
    if cfg is not None:
        check_augment(cfg)
        check_stats_override(cfg, in_chans)
    overridden = cfg is not None and cfg.mean is not None and cfg.std is not None
    if stats is None and not overridden:  # the histogram pass is skipped when unused
        stats = channel_stats(train[0])
    mean, std = override_stats(cfg, in_chans, stats or ((), ()))
    augment = tensor_augment(cfg) if cfg is not None else None
    erase_prob = cfg.augment.re_prob if cfg is not None else 0.0

    def take(images: Tensor, labels: Tensor, n: int | None) -> tuple[Tensor, Tensor]:
        if not subsets or n is None or n >= len(labels):
            return images, labels
        keep = balanced_subset(labels, n, seed)
        return images[keep], labels[keep]

    n_train, n_test = (cfg.train_subset, cfg.test_subset) if cfg is not None else (None, None)
    return DataSplit(
        name=name,
        train=TensorImageDataset(*take(*train, n_train), mean, std, augment, erase_prob),
        test=TensorImageDataset(*take(*test, n_test), mean, std),
        num_classes=num_classes,
        in_chans=in_chans,
        image_size=train[0].shape[-1],
        mean=mean,
        std=std,
    )


def fake_data(
    image_size: int = 32,
    n_train: int = FAKE_SIZES[0],
    n_test: int = FAKE_SIZES[1],
    num_classes: int = 10,
    in_chans: int = 3,
    seed: int = 0,
    *,
    cfg: DataOptions | None = None,
) -> DataSplit:
    """A deterministic, learnable toy set: one smooth random pattern per class plus noise.

    Tests only. A small network separates the classes within a couple of epochs. ``cfg``
    supplies augmentation and normalisation options (not the sizes).
    """
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(num_classes, in_chans, 4, 4, generator=gen)
    patterns = F.interpolate(coarse, size=(image_size, image_size), mode="bilinear")

    def draw(n: int) -> tuple[Tensor, Tensor]:
        labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=gen)]
        noise = torch.randn(n, in_chans, image_size, image_size, generator=gen)
        return (patterns[labels] + 0.3 * noise).clamp_(0, 1), labels

    train, test = draw(n_train), draw(n_test)
    return tensor_split("fake", train, test, num_classes, cfg=cfg, subsets=False)


def load_fake(cfg: DataOptions) -> DataSplit:
    """The ``fake`` set at ``cfg.image_size``, sized by the subsets (default 256 / 128)."""
    n_train, n_test = FAKE_SIZES
    return fake_data(
        cfg.image_size, cfg.train_subset or n_train, cfg.test_subset or n_test, cfg=cfg
    )


def load_digits(cfg: DataOptions, seed: int) -> DataSplit:
    """scikit-learn's digits at ``cfg.image_size`` with the fixed stratified split."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    bunch = sklearn_digits()
    images = resize(torch.from_numpy(bunch.images).float().div_(16).unsqueeze(1), cfg.image_size)
    labels = torch.from_numpy(bunch.target).long()
    indices = np.arange(len(labels))
    split = train_test_split(
        indices, test_size=0.2, stratify=bunch.target, random_state=_DIGITS_SEED
    )
    train_idx, test_idx = (torch.from_numpy(np.sort(idx)) for idx in split)
    train = (images[train_idx], labels[train_idx])
    test = (images[test_idx], labels[test_idx])
    return tensor_split("digits", train, test, 10, cfg=cfg, seed=seed)
