"""Data sets by name: shapes, splits, normalisation, subsets, and one-line errors for bad files."""

from __future__ import annotations

import gzip
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
    DataSplit,
    RandomCropFlip,
    TensorImageDataset,
    balanced_subset,
    fake_data,
    load_data,
)
from ebcompress.errors import UserError
from ebcompress.recipe import DataConfig

REAL_FASHION = Path(DEFAULT_ROOTS["fashion_mnist"])


def cfg(name: str, **kwargs: object) -> DataConfig:
    return DataConfig(name=name, **kwargs)


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
