"""Data sets by name: shapes, splits, normalisation, subsets, and one-line errors for bad files."""

from __future__ import annotations

import gzip
import random
import typing
from pathlib import Path

import pytest
import torch
from data_fakes import (
    write_fake_cifar10,
    write_fake_cifar100,
    write_fake_fashion_mnist,
    write_fake_imagefolder,
    write_idx,
    write_pickled_cifar10,
)

from ebcompress.data import (
    DATASETS,
    DEFAULT_ROOTS,
    AugmentOptions,
    DataOptions,
    DataSplit,
    RandomCropFlip,
    TensorImageDataset,
    balanced_subset,
    fake_data,
    load_data,
    skipped_images,
)
from ebcompress.errors import UserError
from ebcompress.methods.data import data_options
from ebcompress.recipe import DataConfig

REAL_FASHION = Path(DEFAULT_ROOTS["fashion_mnist"])


def cfg(name: str, **kwargs: object) -> DataOptions:
    """The options a recipe's ``data`` section with these fields gives."""
    return data_options(DataConfig(name=name, **kwargs))


def labels_of(dataset: torch.utils.data.Dataset) -> list[int]:
    return [dataset[i][1] for i in range(len(dataset))]


def user_error(call: typing.Callable[[], object]) -> str:
    with pytest.raises(UserError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_every_name_loads_or_explains_the_missing_files(tmp_path: Path) -> None:
    assert {"digits", "fashion_mnist", "cifar10", "cifar100", "imagenet", "fake"} <= set(DATASETS)
    for name in DATASETS:
        try:
            split = load_data(cfg(name, image_size=8), root=str(tmp_path / "absent"))
        except UserError as exc:
            assert str(tmp_path / "absent") in str(exc) and "\n" not in str(exc)
        else:
            assert name in ("digits", "fake") and split.name == name


# ----------------------------------------------------------------------------- digits


def test_digits_split_shapes_and_normalisation() -> None:
    split = load_data(cfg("digits", image_size=16))
    assert isinstance(split, DataSplit)
    assert (split.num_classes, split.in_chans, split.image_size) == (10, 1, 16)
    assert (len(split.train), len(split.test)) == (1437, 360)
    image, label = split.train[0]
    assert image.shape == (1, 16, 16) and image.dtype == torch.float32
    assert isinstance(label, int)
    train = torch.stack([split.train[i][0] for i in range(len(split.train))])
    assert abs(float(train.mean())) < 1e-3 and abs(float(train.std()) - 1) < 1e-2
    test_counts = torch.bincount(torch.tensor(labels_of(split.test)), minlength=10)
    assert int(test_counts.min()) >= 35  # stratified: every digit ~36 times


def test_digits_split_ignores_the_run_seed_and_is_deterministic() -> None:
    a = load_data(cfg("digits", image_size=8), seed=0)
    b = load_data(cfg("digits", image_size=8), seed=7)
    assert torch.equal(a.test.images, b.test.images)
    assert torch.equal(a.train.labels, b.train.labels)


def test_digits_pixels_are_the_real_digits_scaled() -> None:
    from sklearn.datasets import load_digits

    split = load_data(cfg("digits", image_size=8))
    stored = torch.cat([split.train.images, split.test.images]).flatten(1)
    real = torch.from_numpy(load_digits().images).float().div(16).flatten(1)
    assert sorted(map(tuple, stored.tolist())) == sorted(map(tuple, real.tolist()))


def test_digits_subsets_are_balanced_and_seeded() -> None:
    config = cfg("digits", image_size=8, train_subset=100, test_subset=50)
    a, b, c = (load_data(config, seed=s) for s in (3, 3, 4))
    assert (len(a.train), len(a.test)) == (100, 50)
    assert torch.equal(a.train.images, b.train.images)
    assert not torch.equal(a.train.images, c.train.images)
    assert torch.bincount(a.train.labels, minlength=10).tolist() == [10] * 10


# ----------------------------------------------------------------------------- subsets


def test_balanced_subset_deals_over_classes_and_fills_from_the_rest() -> None:
    labels = torch.tensor([0] * 50 + [1] * 50 + [2] * 3)
    keep = balanced_subset(labels, 21, seed=1)
    assert torch.equal(keep, keep.sort().values) and len(set(keep.tolist())) == 21
    assert torch.bincount(labels[keep]).tolist() == [9, 9, 3]
    assert torch.equal(keep, balanced_subset(labels, 21, seed=1))
    assert len(balanced_subset(labels, 500, seed=0)) == len(labels)


# ----------------------------------------------------------------------------- fashion-mnist


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_reads_idx_files_and_pads_to_32(tmp_path: Path, gz: bool) -> None:
    root = write_fake_fashion_mnist(tmp_path, n_train=30, n_test=10, gz=gz)
    split = load_data(cfg("fashion_mnist"), root=str(root))
    assert (len(split.train), len(split.test), split.num_classes, split.in_chans) == (30, 10, 10, 1)
    assert split.train.images.dtype == torch.uint8 and split.train.images.shape[-2:] == (32, 32)
    assert split.train.labels.tolist() == [i % 10 for i in range(30)]
    # padding by 2 is exact: the border is zero and the 28x28 centre holds the file's pixels
    assert int(split.test.images[:, :, :2].sum()) == 0
    raw = (root / ("t10k-images-idx3-ubyte" + (".gz" if gz else ""))).read_bytes()
    raw = gzip.decompress(raw) if gz else raw
    first = torch.frombuffer(bytearray(raw[16 : 16 + 784]), dtype=torch.uint8).view(28, 28)
    assert torch.equal(split.test.images[0, 0, 2:30, 2:30], first)
    image, _ = split.test[0]
    assert torch.allclose(image[0, 0, 0], torch.tensor(-split.mean[0] / split.std[0]))


def test_fashion_mnist_other_sizes_are_resized_and_train_is_augmented(tmp_path: Path) -> None:
    root = write_fake_fashion_mnist(tmp_path, n_train=20, n_test=10)
    split = load_data(cfg("fashion_mnist", image_size=16, train_subset=10), root=str(root))
    assert split.train.images.shape == (10, 1, 16, 16) and split.image_size == 16
    assert split.train.augment is not None and split.test.augment is None
    assert torch.equal(split.test[3][0], split.test[3][0])
    torch.manual_seed(0)
    assert any(not torch.equal(split.train[0][0], split.train[0][0]) for _ in range(10))


def test_fashion_mnist_accepts_torchvisions_layout(tmp_path: Path) -> None:
    write_fake_fashion_mnist(tmp_path / "FashionMNIST" / "raw", n_train=10, n_test=10)
    assert len(load_data(cfg("fashion_mnist"), root=str(tmp_path)).train) == 10


def test_fashion_mnist_missing_files_name_the_path_and_the_fix(tmp_path: Path) -> None:
    message = user_error(lambda: load_data(cfg("fashion_mnist"), root=str(tmp_path / "nope")))
    assert str(tmp_path / "nope") in message
    assert "train-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
    assert "apt-get install dataset-fashion-mnist" in message and "--data" in message


def test_fashion_mnist_malformed_idx_files(tmp_path: Path) -> None:
    root = write_fake_fashion_mnist(tmp_path, n_train=10, n_test=10)
    images = root / "train-images-idx3-ubyte.gz"
    good = images.read_bytes()

    images.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + gzip.decompress(good)[4:]))
    assert "magic number" in user_error(lambda: load_data(cfg("fashion_mnist"), root=str(root)))

    images.write_bytes(gzip.compress(gzip.decompress(good)[:-100]))
    message = user_error(lambda: load_data(cfg("fashion_mnist"), root=str(root)))
    assert "truncated" in message and str(images) in message

    images.write_bytes(good[: len(good) // 2])  # a cut-off gzip stream
    assert str(images) in user_error(lambda: load_data(cfg("fashion_mnist"), root=str(root)))

    images.write_bytes(good)
    write_idx(root / "train-labels-idx1-ubyte", torch.zeros(9, dtype=torch.uint8).numpy())
    assert "10 images but" in user_error(lambda: load_data(cfg("fashion_mnist"), root=str(root)))


@pytest.mark.skipif(not REAL_FASHION.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_counts() -> None:
    split = load_data(cfg("fashion_mnist", image_size=28))
    assert (len(split.train), len(split.test)) == (60000, 10000)
    assert torch.bincount(split.test.labels).tolist() == [1000] * 10
    assert abs(split.mean[0] - 0.2860) < 1e-3 and abs(split.std[0] - 0.3530) < 1e-3


# ----------------------------------------------------------------------------- cifar


def test_cifar10_reads_binary_batches_from_root_or_the_folder(tmp_path: Path) -> None:
    write_fake_cifar10(tmp_path, n_per_batch=4, n_test=6)
    for where in (tmp_path, tmp_path / "cifar-10-batches-bin"):
        split = load_data(cfg("cifar10"), root=str(where))
        assert (len(split.train), len(split.test), split.num_classes) == (20, 6, 10)
        assert split.train.images.shape == (20, 3, 32, 32)
        assert split.mean == (0.4914, 0.4822, 0.4465)
        assert split.train.augment == RandomCropFlip(pad=4)
    raw = (tmp_path / "cifar-10-batches-bin" / "test_batch.bin").read_bytes()
    assert split.test.labels[1] == raw[3073]
    red = torch.frombuffer(bytearray(raw[3074 : 3074 + 1024]), dtype=torch.uint8).view(32, 32)
    assert torch.equal(split.test.images[1, 0], red)


def test_cifar100_uses_the_fine_label_and_resizes(tmp_path: Path) -> None:
    write_fake_cifar100(tmp_path, n_train=200, n_test=100)
    split = load_data(cfg("cifar100", image_size=16, test_subset=50), root=str(tmp_path))
    assert (len(split.train), len(split.test), split.num_classes) == (200, 50, 100)
    assert split.train.labels.tolist() == list(range(100)) * 2
    assert split.test[0][0].shape == (3, 16, 16)


def test_cifar_refuses_the_pickled_version(tmp_path: Path) -> None:
    write_pickled_cifar10(tmp_path)
    for where in (tmp_path, tmp_path / "cifar-10-batches-py"):
        message = user_error(lambda w=where: load_data(cfg("cifar10"), root=str(w)))
        assert "unpickle" in message and "cifar-10-binary.tar.gz" in message
        assert str(tmp_path) in message


def test_cifar_missing_or_truncated_files(tmp_path: Path) -> None:
    message = user_error(lambda: load_data(cfg("cifar100"), root=str(tmp_path)))
    assert str(tmp_path) in message and "cifar-100-binary" in message and "train.bin" in message
    write_fake_cifar10(tmp_path, n_per_batch=2, n_test=2)
    batch = tmp_path / "cifar-10-batches-bin" / "data_batch_3.bin"
    batch.write_bytes(batch.read_bytes()[:-10])
    message = user_error(lambda: load_data(cfg("cifar10"), root=str(tmp_path)))
    assert str(batch) in message and "truncated" in message
    batch.unlink()
    assert "data_batch_3.bin" in user_error(lambda: load_data(cfg("cifar10"), root=str(tmp_path)))


def test_file_backed_sets_without_a_root_say_how_to_give_one() -> None:
    for name in ("cifar10", "imagenet"):
        assert "--data" in user_error(lambda n=name: load_data(cfg(n)))


# ----------------------------------------------------------------------------- image folders


def test_imagefolder_with_timm_transforms(tmp_path: Path) -> None:
    write_fake_imagefolder(tmp_path, classes=("a", "b", "c"), per_class=(4, 2), size=12)
    split = load_data(cfg("imagefolder", image_size=16, train_subset=6), root=str(tmp_path))
    assert (len(split.train), len(split.test), split.num_classes, split.in_chans) == (6, 6, 3, 3)
    assert sorted(labels_of(split.train)) == [0, 0, 1, 1, 2, 2]
    image, label = split.test[5]
    assert image.shape == (3, 16, 16) and label == 2
    assert split.train[0][0].shape == (3, 16, 16)


def test_imagefolder_errors(tmp_path: Path) -> None:
    message = user_error(lambda: load_data(cfg("imagenet"), root=str(tmp_path)))
    assert str(tmp_path / "train") in message and "val/" in message
    write_fake_imagefolder(tmp_path, classes=("a", "b"), per_class=(1, 1))
    (tmp_path / "val" / "b").rename(tmp_path / "val" / "z")
    message = user_error(lambda: load_data(cfg("imagefolder"), root=str(tmp_path)))
    assert "same class folders" in message and "z" in message


# ----------------------------------------------------------------------------- fake + augment


def test_fake_is_deterministic_sized_by_subsets_and_learnable() -> None:
    split = load_data(cfg("fake", image_size=8, train_subset=200, test_subset=100))
    assert (len(split.train), len(split.test), split.num_classes, split.in_chans) == (
        200,
        100,
        10,
        3,
    )
    assert torch.equal(split.train.images, fake_data(8, 200, 100).train.images)
    x = torch.stack([split.train[i][0] for i in range(200)]).flatten(1)
    y = split.train.labels
    # nearest class mean on the train split separates the test split: the set is learnable
    centroids = torch.stack([x[y == c].mean(0) for c in range(10)])
    xt = torch.stack([split.test[i][0] for i in range(100)]).flatten(1)
    accuracy = (torch.cdist(xt, centroids).argmin(1) == split.test.labels).float().mean()
    assert accuracy > 0.5


def test_random_crop_flip_shifts_with_zero_fill() -> None:
    image = torch.arange(1, 17, dtype=torch.uint8).view(1, 4, 4)
    augment = RandomCropFlip(pad=1)
    padded = augment.prepare(image[None]).expand(200, 1, 6, 6)
    torch.manual_seed(0)
    seen = set()
    for out in augment(padded):
        assert out.shape == image.shape and int((out > 0).sum()) >= 9
        seen.add(tuple(out.flatten().tolist()))
    assert tuple(image.flatten().tolist()) in seen
    assert tuple(image.flip(-1).flatten().tolist()) in seen
    assert len(seen) == 18  # 9 offsets x 2 flips
    shifted = torch.tensor([[0, 0, 0, 0], [0, 1, 2, 3], [0, 5, 6, 7], [0, 9, 10, 11]])
    assert tuple(shifted.flatten().tolist()) in seen


def test_augmented_dataset_keeps_images_unpadded_and_crops_from_them() -> None:
    images = torch.randint(1, 255, (3, 2, 8, 8), dtype=torch.uint8)
    dataset = TensorImageDataset(images, torch.tensor([0, 1, 2]), (0.5, 0.5), (0.25, 0.25))
    augmented = TensorImageDataset(
        images, torch.tensor([0, 1, 2]), (0.5, 0.5), (0.25, 0.25), RandomCropFlip(pad=2)
    )
    assert torch.equal(augmented.images, images) and torch.equal(dataset.images, images)
    expected = (images[1].float() / 255 - 0.5) / 0.25
    assert torch.allclose(dataset[1][0], expected, atol=1e-5)
    torch.manual_seed(0)
    crops = [augmented[1][0] for _ in range(300)]
    assert any(torch.allclose(c, expected, atol=1e-5) for c in crops)
    assert all(c.shape == (2, 8, 8) for c in crops)
    assert any((c == -2).any() for c in crops)  # zero padding, normalised


# ----------------------------------------------------------------------------- defaults pinned


def reference_train_batch(
    images: torch.Tensor, mean: tuple, std: tuple, pad: int | None, indices: list[int]
) -> torch.Tensor:
    """ebcompress 0.1.0's TensorImageDataset + RandomCropFlip(pad), frozen here.

    Shipped recipes and published results depend on this exact path: the same crops and flips
    from the same draws of torch's global generator, the same normalisation arithmetic.
    """
    store = torch.nn.functional.pad(images, (pad,) * 4) if pad else images
    batch = store.index_select(0, torch.as_tensor(indices, dtype=torch.long))
    if pad:
        n = batch.shape[0]
        h, w = batch.shape[2] - 2 * pad, batch.shape[3] - 2 * pad
        side = 2 * pad + 1
        offsets = torch.randint(side * side, (n,))
        windows = batch.unfold(2, h, 1).unfold(3, w, 1)
        crops = windows[torch.arange(n), :, offsets // side, offsets % side]
        batch = torch.where(torch.rand(n, 1, 1, 1) < 0.5, crops.flip(-1), crops)
    scale = 255.0 if images.dtype == torch.uint8 else 1.0
    std_t = torch.tensor(std, dtype=torch.float64).mul(scale).view(-1, 1, 1)
    mean_t = torch.tensor(mean, dtype=torch.float64).mul(scale).view(-1, 1, 1)
    return torch.addcmul((-mean_t / std_t).float(), batch, (1 / std_t).float())


def test_default_augmentation_is_bit_identical_to_0_1_0(tmp_path: Path) -> None:
    fashion = write_fake_fashion_mnist(tmp_path / "fm", n_train=30, n_test=10)
    cifar = write_fake_cifar10(tmp_path / "c10", n_per_batch=6, n_test=6)
    cases = [  # (config, root, the pad 0.1.0 used; None: no augmentation)
        (cfg("digits", image_size=16), None, None),
        (cfg("fake", image_size=8), None, None),
        (cfg("fashion_mnist"), fashion, 4),
        (cfg("fashion_mnist", image_size=12, train_subset=20), fashion, 1),
        (cfg("cifar10"), cifar, 4),
        (cfg("cifar10", image_size=20), cifar, 2),
    ]
    for config, root, pad in cases:
        split = load_data(config, root=None if root is None else str(root), seed=3)
        assert split.train.augment == (None if pad is None else RandomCropFlip(pad=pad))
        assert split.test.augment is None and split.train.erase is None
        indices = [5, 0, 3, 3, 1, 2]
        for dataset, crop in ((split.train, pad), (split.test, None)):
            torch.manual_seed(11)
            got = torch.stack([x for x, _ in dataset.__getitems__(indices)])
            state = torch.get_rng_state()
            torch.manual_seed(11)
            want = reference_train_batch(dataset.images, split.mean, split.std, crop, indices)
            assert torch.equal(got, want), config
            assert torch.equal(state, torch.get_rng_state()), config  # the same draws, no more
    digits = load_data(cfg("digits", image_size=16))
    assert digits.mean[0] == pytest.approx(0.305383394, abs=1e-6)
    assert digits.std[0] == pytest.approx(0.318959523, abs=1e-6)


def test_large_image_folders_keep_timms_imagenet_transforms(tmp_path: Path) -> None:
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform

    write_fake_imagefolder(tmp_path, classes=("a", "b"), per_class=(2, 1), size=70)
    split = load_data(cfg("imagefolder", image_size=65), root=str(tmp_path))
    stats = {"mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD}
    assert repr(split.train.transform) == repr(create_transform(65, is_training=True, **stats))
    assert repr(split.test.transform) == repr(create_transform(65, is_training=False, **stats))
    assert "RandomResizedCrop" in repr(split.train.transform)
    torch.manual_seed(2), random.seed(2)  # timm's crop draws from python's generator
    got = split.train[1][0]
    torch.manual_seed(2), random.seed(2)
    image = split.train.loader(split.train.samples[1][0])
    assert torch.equal(got, create_transform(65, is_training=True, **stats)(image))


# ----------------------------------------------------------------------------- augment options


def transform_types(transform: object) -> list[str]:
    return [type(t).__name__ for t in transform.transforms]


@pytest.mark.parametrize(("size", "pad"), [(16, 2), (64, 8)])
def test_small_image_folders_get_pad_and_crop(tmp_path: Path, size: int, pad: int) -> None:
    write_fake_imagefolder(tmp_path, classes=("a", "b"), per_class=(2, 1), size=12)
    split = load_data(cfg("imagefolder", image_size=size), root=str(tmp_path))
    train, test = split.train.transform, split.test.transform
    assert transform_types(train) == [
        "Resize", "CenterCrop", "RandomCrop", "RandomHorizontalFlip", "MaybeToTensor", "Normalize"
    ]  # fmt: skip
    crop, flip = train.transforms[2], train.transforms[3]
    assert crop.size == (size, size) and crop.padding == pad and flip.p == 0.5
    assert transform_types(test) == ["Resize", "CenterCrop", "MaybeToTensor", "Normalize"]
    assert test.transforms[0].size == size  # a plain resize: no crop margin
    assert split.train[0][0].shape == split.test[0][0].shape == (3, size, size)


def test_image_folder_options_reach_the_transforms(tmp_path: Path) -> None:
    write_fake_imagefolder(tmp_path, classes=("a", "b"), per_class=(2, 1), size=12)
    augment = {"pad": 3, "hflip": 0.0, "vflip": 0.3, "color_jitter": 0.2, "re_prob": 0.5}
    config = cfg("imagefolder", image_size=16, augment=augment, mean=[0.5], std=[0.2, 0.3, 0.4])
    split = load_data(config, root=str(tmp_path))
    train = split.train.transform
    assert transform_types(train) == [
        "Resize", "CenterCrop", "RandomCrop", "RandomVerticalFlip", "ColorJitter",
        "MaybeToTensor", "Normalize", "RandomErasing",
    ]  # fmt: skip
    assert train.transforms[2].padding == 3 and train.transforms[3].p == 0.3
    assert train.transforms[-1].probability == 0.5
    assert split.mean == (0.5, 0.5, 0.5) and split.std == (0.2, 0.3, 0.4)
    assert train.transforms[-2].std.tolist() == pytest.approx([0.2, 0.3, 0.4])
    resized = {"crop": "random_resized", "scale": [0.5, 1.0], "auto_augment": "rand-m9-mstd0.5"}
    config = cfg("imagefolder", image_size=16, augment=resized | {"crop_pct": 0.5})
    split = load_data(config, root=str(tmp_path))
    kinds = transform_types(split.train.transform)
    assert kinds[:3] == ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip", "RandAugment"]
    assert split.train.transform.transforms[0].scale == (0.5, 1.0)
    assert split.test.transform.transforms[0].size == 32  # 16 / crop_pct
    bad = cfg("imagefolder", image_size=16, augment={"auto_augment": "bogus"})
    message = user_error(lambda: load_data(bad, root=str(tmp_path)))
    assert "data.augment.auto_augment 'bogus'" in message


def normalised(split: DataSplit, index: int) -> torch.Tensor:
    plain = TensorImageDataset(split.train.images, split.train.labels, split.mean, split.std)
    return plain[index][0]


def test_tensor_sets_honour_flips_crop_and_erasing() -> None:
    base = {"image_size": 16, "train_subset": 20, "test_subset": 10}
    split = load_data(cfg("fake", augment={"vflip": 1.0}, **base))
    assert split.train.augment == RandomCropFlip(pad=0, hflip=0.0, vflip=1.0)
    assert torch.equal(split.train[3][0], normalised(split, 3).flip(-2))
    assert torch.equal(split.test[3][0], split.test[3][0])  # the test set is never augmented
    split = load_data(cfg("fake", augment={"hflip": 1.0}, **base))
    assert torch.equal(split.train[4][0], normalised(split, 4).flip(-1))
    split = load_data(cfg("digits", augment={"crop": "pad", "pad": 1}, **base))
    assert split.train.augment == RandomCropFlip(pad=1, hflip=0.0)
    torch.manual_seed(0)
    crops = [split.train[2][0] for _ in range(200)]  # 9 offsets: the centre one shows up
    assert any(not torch.equal(c, normalised(split, 2)) for c in crops)
    assert any(torch.equal(c, normalised(split, 2)) for c in crops)
    split = load_data(cfg("fake", augment={"re_prob": 1.0}, **base))
    random.seed(0)
    erased = [split.train[i][0] for i in range(20)]
    assert sum(bool((x == 0).any()) for x in erased) >= 18  # the patch becomes the mean, 0
    assert all(not (normalised(split, i) == 0).any() for i in range(20))


def test_cifar_flip_can_be_turned_off(tmp_path: Path) -> None:
    write_fake_cifar10(tmp_path, n_per_batch=2, n_test=2)
    split = load_data(cfg("cifar10", augment={"hflip": 0, "pad": 2}), root=str(tmp_path))
    assert split.train.augment == RandomCropFlip(pad=2, hflip=0.0)
    split = load_data(cfg("cifar10", augment={"crop": "none"}), root=str(tmp_path))
    assert split.train.augment == RandomCropFlip(pad=0, hflip=0.5)


@pytest.mark.parametrize(
    ("name", "augment", "expected"),
    [
        ("cifar10", {"auto_augment": "rand-m9-mstd0.5"}, "data.augment.auto_augment applies to"),
        ("digits", {"color_jitter": 0.4}, "data.augment.color_jitter applies to image folders"),
        ("fashion_mnist", {"crop_pct": 0.9}, "data.augment.crop_pct applies to image folders"),
        ("fake", {"interpolation": "bicubic"}, "data.augment.interpolation applies to image"),
        ("fake", {"scale": [0.5, 1.0]}, "data.augment.scale applies to image folders"),
        ("cifar100", {"crop": "random_resized"}, "data.augment.crop: random_resized applies"),
        ("digits", {"pad": 2}, "data.augment.pad applies with data.augment.crop: pad only"),
        ("imagefolder", {"ratio": [0.8, 1.2]}, "data.augment.ratio applies with data.augment."),
        ("imagenet", {"crop": "none", "pad": 3}, "data.augment.pad applies with data.augment."),
    ],
)
def test_inapplicable_augment_options_are_refused(
    tmp_path: Path, name: str, augment: dict, expected: str
) -> None:
    config = cfg(name, augment=augment)
    message = user_error(lambda: load_data(config, root=str(tmp_path / "never read")))
    assert expected in message and "never read" not in message


def test_a_resolved_recipe_with_every_default_written_out_still_loads() -> None:
    resolved = DataConfig(name="fake", image_size=8).model_dump(mode="json")
    written = DataConfig.model_validate(resolved)
    assert "interpolation" in written.augment.model_fields_set
    assert load_data(data_options(written)).train.augment is None


def test_the_options_are_plain_data_your_own_code_can_build() -> None:
    split = load_data(DataOptions("fake", image_size=8, augment=AugmentOptions(hflip=1.0)))
    assert split.train.augment == RandomCropFlip(pad=0, hflip=1.0)
    message = user_error(lambda: load_data(DataOptions("mnist")))
    assert message.startswith("data.name 'mnist' is not a data set; choose from digits, ")


def test_mean_std_override_and_its_length_check(tmp_path: Path) -> None:
    split = load_data(cfg("fake", image_size=8, mean=[0.5], std=[0.25]))
    assert split.mean == (0.5,) * 3 and split.std == (0.25,) * 3
    expected = (split.train.images[1] - 0.5) / 0.25
    assert torch.allclose(split.train[1][0], expected, atol=1e-6)
    digits = load_data(cfg("digits", image_size=8, std=[0.5]))
    assert digits.std == (0.5,) and digits.mean[0] == pytest.approx(0.3053, abs=1e-3)
    message = user_error(lambda: load_data(cfg("digits", image_size=8, mean=[0.1, 0.2, 0.3])))
    assert "data.mean has 3 values but digits images have 1 channel" in message
    write_fake_imagefolder(tmp_path, classes=("a", "b"), per_class=(1, 1))
    message = user_error(lambda: load_data(cfg("imagefolder", std=[0.2, 0.3]), root=str(tmp_path)))
    assert "data.std has 2 values" in message and "give 1 value or 3" in message


# ----------------------------------------------------------------------------- unreadable images


def corrupt(path: Path) -> str:
    path.write_bytes(b"\x89PNG\r\n\x1a\n this is not the rest of a PNG")
    return str(path)


def load_all(dataset: torch.utils.data.Dataset, workers: int) -> list[int]:
    batches = iter(torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=workers))
    try:
        return [int(y) for _, ys in batches for y in ys]
    finally:
        # After a worker's error torch joins each worker for 5 s when the iterator is collected
        # (a batch it made is never received); a test need not wait for that.
        for worker in getattr(batches, "_workers", ()):
            worker.terminate()


@pytest.mark.parametrize("workers", [0, 2])
def test_an_unreadable_image_is_one_line_naming_the_file(tmp_path: Path, workers: int) -> None:
    write_fake_imagefolder(tmp_path, classes=("a", "b"), per_class=(3, 1))
    bad = corrupt(tmp_path / "train" / "b" / "1.png")
    split = load_data(cfg("imagefolder", image_size=8, num_workers=workers), root=str(tmp_path))
    message = user_error(lambda: load_all(split.train, workers))
    assert message.startswith(f"image {bad} cannot be read (")
    assert message.endswith("remove or replace it, or set data.skip_bad_images: true")
    assert "Traceback" not in message and "worker" not in message


def test_a_worker_traceback_reduces_to_the_line_raised() -> None:
    from ebcompress.data.image_folder import UnreadableImageError

    wrapped = (
        "Caught UnreadableImageError in DataLoader worker process 1.\nOriginal Traceback (most "
        'recent call last):\n  File "x.py", line 3, in f\n    raise UnreadableImageError(m)\n'
        "ebcompress.data.image_folder.UnreadableImageError: image a.png cannot be read (x); fix\n"
    )
    assert str(UnreadableImageError(wrapped)) == "image a.png cannot be read (x); fix"
    assert str(UnreadableImageError("plain\nline")) == "plain line"


@pytest.mark.parametrize("workers", [0, 2])
def test_skip_bad_images_replaces_and_counts(tmp_path: Path, workers: int) -> None:
    write_fake_imagefolder(tmp_path, classes=("a", "b"), per_class=(3, 3))
    bad_train = corrupt(tmp_path / "train" / "a" / "1.png")
    bad_last = corrupt(tmp_path / "val" / "b" / "2.png")  # the last sample: wraps to the first
    config = cfg("imagefolder", image_size=8, skip_bad_images=True, num_workers=workers)
    split = load_data(config, root=str(tmp_path))
    assert skipped_images(split) == []
    assert load_all(split.train, workers) == [0, 0, 0, 1, 1, 1]  # 1.png became 2.png (label 0)
    assert skipped_images(split) == [bad_train]  # seen in this process, whoever loaded it
    assert load_all(split.test, workers) == [0, 0, 0, 1, 1, 0]
    assert torch.equal(split.test[5][0], split.test[0][0])
    assert skipped_images(split) == sorted([bad_train, bad_last])
    assert skipped_images(load_data(cfg("fake", image_size=8))) == []


def test_the_trainer_logs_newly_skipped_images(tmp_path: Path, capsys) -> None:
    from ebcompress.methods.training import build_trainer
    from ebcompress.recipe import Recipe, TrainConfig

    write_fake_imagefolder(tmp_path, classes=("a", "b"), per_class=(3, 1))
    bad = corrupt(tmp_path / "train" / "b" / "0.png")
    split = load_data(cfg("imagefolder", image_size=8, skip_bad_images=True), root=str(tmp_path))
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(4, 2),
    )  # fmt: skip
    recipe = Recipe(train=TrainConfig(epochs=2, batch_size=8, milestones=[]))
    build_trainer(model, split, recipe, "t", device="cpu", progress=False).fit()
    lines = [line for line in capsys.readouterr().out.splitlines() if "unreadable" in line]
    assert lines == [f"t epoch 1: skipped 1 unreadable image(s), e.g. {bad} (1 so far); "
                     "remove or replace them"]  # fmt: skip
