"""Data sets by name, held as in-memory tensors wherever they fit.

``load_data(cfg)`` turns a :class:`~ebcompress.recipe.DataConfig` into a :class:`DataSplit`
whose datasets yield ``(float C x H x W normalised image, int label)``.

- ``digits`` (the embedded default): scikit-learn's bundled 1,797 real 8x8 digits, scaled
  0..16 -> [0, 1], resized bilinearly to ``image_size`` once, a fixed stratified 80/20 split
  (1,437 / 360) that does not depend on the run seed. No augmentation: the quickstart runs short
  schedules, and unaugmented data keeps its mask-distance trajectory reproducible.
- ``fashion_mnist``: the four IDX files (gzipped or plain) in ``root`` (default: Debian's
  ``dataset-fashion-mnist`` folder) or ``root/FashionMNIST/raw`` (torchvision's layout). Sizes up
  to 4 px larger than 28 are zero-padded, centred (exact: the background is 0); other sizes are
  resized bilinearly once. Train augmentation: random crop with zero padding ``size // 8`` and a
  horizontal flip.
- ``cifar10`` / ``cifar100``: the official *binary* version only (``cifar-10-batches-bin``,
  ``cifar-100-binary``), never the pickled python one: this project does not unpickle files.
  Standard augmentation (pad 4, random crop 32, flip) and the standard mean/std.
- ``imagenet`` / ``imagefolder``: ``root/train/<class>/*`` and ``root/val/<class>/*`` read by
  torchvision's ImageFolder with timm's transforms and ImageNet's mean/std.
- ``fake``: deterministic, learnable class patterns plus noise, for tests only.

``train_subset`` / ``test_subset`` keep at most that many samples: a class-balanced subset drawn
with the run seed, so runs are reproducible. Digits and Fashion-MNIST are normalised with the
mean/std of their full training split at the model's input size.
"""

from __future__ import annotations

import gzip
import math
import typing
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset, Subset

from ebcompress.errors import UserError
from ebcompress.recipe import DataConfig

#: The data set names, in the recipe schema's order (DataConfig.name is the one source of truth).
DATASETS: tuple[str, ...] = typing.get_args(DataConfig.model_fields["name"].annotation)
DEFAULT_ROOTS: dict[str, str] = {"fashion_mnist": "/usr/share/datasets/fashion-mnist"}

_DIGITS_SEED = 0  # the digits train/test split is part of the data set, not of the run
_FAKE_SIZES = (256, 128)  # train, test samples of the fake set unless subsets say otherwise


@dataclass(frozen=True)
class DataSplit:
    """A named data set's train and test datasets plus what a model needs to know about them."""

    name: str
    train: Dataset
    test: Dataset
    num_classes: int
    in_chans: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class RandomCropFlip:
    """Random crop with zero padding ``pad`` plus a horizontal flip (the standard CIFAR one).

    Cheap on tensors: :meth:`prepare` zero-pads the whole store once, and a call crops (and
    flips) a whole batch with one gather from an unfolded view. It draws from torch's global
    generator, which DataLoader seeds per worker, so crops are reproducible under
    ``torch.manual_seed``.
    """

    pad: int
    flip: bool = True

    def prepare(self, images: Tensor) -> Tensor:
        """N x C x H x W images zero-padded by ``pad`` on every side: the store to crop from."""
        return F.pad(images, (self.pad,) * 4)

    def __call__(self, padded: Tensor) -> Tensor:
        """Random N x C x H x W crops, each maybe flipped, of N x C x (H + 2 pad) x (W + 2 pad)."""
        n = padded.shape[0]
        h, w = padded.shape[2] - 2 * self.pad, padded.shape[3] - 2 * self.pad
        side = 2 * self.pad + 1
        offsets = torch.randint(side * side, (n,))
        windows = padded.unfold(2, h, 1).unfold(3, w, 1)  # N x C x side x side x H x W, a view
        crops = windows[torch.arange(n), :, offsets // side, offsets % side]
        if not self.flip:
            return crops
        return torch.where(torch.rand(n, 1, 1, 1) < 0.5, crops.flip(-1), crops)


class TensorImageDataset(Dataset):
    """Images in one N x C x H x W tensor (uint8 0..255 or float 0..1) and their labels.

    A sample is ``(float C x H x W image, int label)``: optionally augmented, then normalised
    with ``mean`` / ``std`` (given in 0..1 units) into a fresh tensor. DataLoader fetches whole
    batches through :meth:`__getitems__`, so the per-sample cost is a share of a few tensor ops.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        augment: RandomCropFlip | None = None,
    ) -> None:
        if images.ndim != 4 or len(images) != len(labels):
            raise ValueError(f"images {tuple(images.shape)} do not match labels {len(labels)}")
        self.labels = labels.long()
        self.augment = augment
        self._store = augment.prepare(images) if augment else images
        scale = 255.0 if images.dtype == torch.uint8 else 1.0
        std_t = torch.tensor(std, dtype=torch.float64).mul(scale).view(-1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float64).mul(scale).view(-1, 1, 1)
        self._scale, self._shift = (1 / std_t).float(), (-mean_t / std_t).float()
        self._label_list: list[int] = self.labels.tolist()  # a list index beats a tensor's

    @property
    def images(self) -> Tensor:
        """The stored N x C x H x W images, unaugmented and unnormalised (a view, no copy)."""
        if self.augment is None:
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
        return list(zip(normalised.unbind(0), [self._label_list[i] for i in indices], strict=True))

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.__getitems__([index])[0]


def balanced_subset(labels: Tensor, n: int, seed: int) -> Tensor:
    """Sorted indices of ``n`` samples dealt round-robin over the classes in a seeded order.

    Each class gives its samples in a random order; taking the lowest ranks first makes the
    subset as class-balanced as the data allows (a small class runs out, the others fill in).
    """
    if n >= len(labels):
        return torch.arange(len(labels))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    by_class, position = torch.sort(labels[order], stable=True)
    counts = torch.bincount(by_class)
    class_start = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(order)
    rank[position] = torch.arange(len(order)) - class_start[by_class]
    chosen = order[torch.sort(rank, stable=True).indices[:n]]
    return torch.sort(chosen).values


def load_data(cfg: DataConfig, *, root: str | None = None, seed: int = 0) -> DataSplit:
    """The data set ``cfg.name`` as a :class:`DataSplit`.

    ``root`` (the CLI's ``--data DIR``) overrides ``cfg.root``, which overrides
    :data:`DEFAULT_ROOTS`; ``digits`` and ``fake`` read no files and ignore it. ``seed`` draws
    the train/test subsets. A missing or malformed data set raises a one-line UserError.
    """
    if cfg.name == "digits":
        return _load_digits(cfg, seed)
    if cfg.name == "fake":
        n_train, n_test = _FAKE_SIZES
        return fake_data(cfg.image_size, cfg.train_subset or n_train, cfg.test_subset or n_test)
    where = root if root is not None else cfg.root or DEFAULT_ROOTS.get(cfg.name)
    if where is None:
        raise UserError(
            f"data set {cfg.name!r} is read from disk but no folder was given; "
            f"pass --data DIR (or set data.root) to the folder holding {_EXPECTED[cfg.name]}"
        )
    path = Path(where).expanduser()
    if cfg.name == "fashion_mnist":
        return _load_fashion_mnist(cfg, path, seed)
    if cfg.name in _CIFAR:
        return _load_cifar(cfg, path, seed)
    return _load_imagefolder(cfg, path, seed)


# ----------------------------------------------------------------------------- in memory


def _resize(images: Tensor, size: int) -> Tensor:
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


def _channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
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


def _tensor_split(
    name: str,
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    num_classes: int,
    *,
    cfg: DataConfig | None = None,
    seed: int = 0,
    stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
    augment: RandomCropFlip | None = None,
) -> DataSplit:
    """Subset (per ``cfg``), normalise (with ``stats`` or the train split's own) and wrap."""
    mean, std = stats or _channel_stats(train[0])

    def take(images: Tensor, labels: Tensor, n: int | None) -> tuple[Tensor, Tensor]:
        if n is None or n >= len(labels):
            return images, labels
        keep = balanced_subset(labels, n, seed)
        return images[keep], labels[keep]

    return DataSplit(
        name=name,
        train=TensorImageDataset(*take(*train, cfg and cfg.train_subset), mean, std, augment),
        test=TensorImageDataset(*take(*test, cfg and cfg.test_subset), mean, std),
        num_classes=num_classes,
        in_chans=train[0].shape[1],
        image_size=train[0].shape[-1],
        mean=mean,
        std=std,
    )


def fake_data(
    image_size: int = 32,
    n_train: int = _FAKE_SIZES[0],
    n_test: int = _FAKE_SIZES[1],
    num_classes: int = 10,
    in_chans: int = 3,
    seed: int = 0,
) -> DataSplit:
    """A deterministic, learnable toy set: one smooth random pattern per class plus noise.

    Tests only. A small network separates the classes within a couple of epochs.
    """
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(num_classes, in_chans, 4, 4, generator=gen)
    patterns = F.interpolate(coarse, size=(image_size, image_size), mode="bilinear")

    def draw(n: int) -> tuple[Tensor, Tensor]:
        labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=gen)]
        noise = torch.randn(n, in_chans, image_size, image_size, generator=gen)
        return (patterns[labels] + 0.3 * noise).clamp_(0, 1), labels

    return _tensor_split("fake", draw(n_train), draw(n_test), num_classes)


def _load_digits(cfg: DataConfig, seed: int) -> DataSplit:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = _resize(torch.from_numpy(bunch.images).float().div_(16).unsqueeze(1), cfg.image_size)
    labels = torch.from_numpy(bunch.target).long()
    indices = np.arange(len(labels))
    split = train_test_split(
        indices, test_size=0.2, stratify=bunch.target, random_state=_DIGITS_SEED
    )
    train_idx, test_idx = (torch.from_numpy(np.sort(idx)) for idx in split)
    train = (images[train_idx], labels[train_idx])
    test = (images[test_idx], labels[test_idx])
    return _tensor_split("digits", train, test, 10, cfg=cfg, seed=seed)


# ----------------------------------------------------------------------------- fashion-mnist

_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_FASHION_FIX = "install it with `apt-get install dataset-fashion-mnist` or pass --data DIR"


def _load_fashion_mnist(cfg: DataConfig, root: Path, seed: int) -> DataSplit:
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
    augment = RandomCropFlip(pad=max(1, cfg.image_size // 8))
    return _tensor_split(
        "fashion_mnist", split["train"], split["test"], 10, cfg=cfg, seed=seed, augment=augment
    )


def _fit_fashion(images: Tensor, size: int) -> Tensor:
    """Zero-pad (centred, exact) when ``size`` is at most 4 px larger, else resize bilinearly."""
    grow = size - images.shape[-1]
    if 0 < grow <= 4 and images.shape[-2] == images.shape[-1]:
        before = grow // 2
        return F.pad(images, (before, grow - before, before, grow - before))
    return _resize(images, size)


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


# ----------------------------------------------------------------------------- cifar


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


_CIFAR = {
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
_EXPECTED = {
    "fashion_mnist": "train-images-idx3-ubyte.gz and the other Fashion-MNIST IDX files",
    "cifar10": "cifar-10-batches-bin/ (from cifar-10-binary.tar.gz)",
    "cifar100": "cifar-100-binary/ (from cifar-100-binary.tar.gz)",
    "imagenet": "train/ and val/ with one sub-folder of images per class",
    "imagefolder": "train/ and val/ with one sub-folder of images per class",
}


def _load_cifar(cfg: DataConfig, root: Path, seed: int) -> DataSplit:
    layout = _CIFAR[cfg.name]
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
    train, test = ((_resize(x, cfg.image_size), y) for x, y in (train, test))
    augment = RandomCropFlip(pad=max(1, cfg.image_size // 8))
    return _tensor_split(
        cfg.name,
        train,
        test,
        layout.num_classes,
        cfg=cfg,
        seed=seed,
        stats=(layout.mean, layout.std),
        augment=augment,
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


# ----------------------------------------------------------------------------- image folders


def _load_imagefolder(cfg: DataConfig, root: Path, seed: int) -> DataSplit:
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
    from torchvision.datasets import ImageFolder

    mean, std = tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD)
    parts = {}
    for part, training in (("train", True), ("val", False)):
        folder = root / part
        if not folder.is_dir():
            raise UserError(
                f"no folder {folder}; expected {root}/train/ and {root}/val/ with one sub-folder "
                "of images per class; pass --data DIR pointing at their parent"
            )
        transform = create_transform(cfg.image_size, is_training=training, mean=mean, std=std)
        try:
            parts[part] = ImageFolder(str(folder), transform=transform)
        except (FileNotFoundError, ValueError) as exc:
            raise UserError(f"{folder}: {exc}; put one sub-folder of images per class") from None
    train, val = parts["train"], parts["val"]
    if train.classes != val.classes:
        odd = sorted(set(train.classes) ^ set(val.classes))[:5]
        raise UserError(
            f"{root}: train/ has {len(train.classes)} classes and val/ has {len(val.classes)}, "
            f"differing in {', '.join(odd)}; both need the same class folders"
        )

    def take(dataset: ImageFolder, n: int | None) -> Dataset:
        if n is None or n >= len(dataset):
            return dataset
        return Subset(dataset, balanced_subset(torch.tensor(dataset.targets), n, seed).tolist())

    return DataSplit(
        name=cfg.name,
        train=take(train, cfg.train_subset),
        test=take(val, cfg.test_subset),
        num_classes=len(train.classes),
        in_chans=3,
        image_size=cfg.image_size,
        mean=mean,
        std=std,
    )
