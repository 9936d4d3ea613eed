"""Starting weights from a local file: build_model(init=...) and ebcompress.models.weights."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import pytest
import timm
import timm.models._builder as timm_builder
import torch
from safetensors.torch import save_file

from ebcompress.errors import UserError
from ebcompress.models import build_model
from ebcompress.models.weights import file_sha256, read_weights

TINY = {"width_mult": 0.25}


def _tiny(num_classes: int = 10, seed: int = 1) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("vgg11_cifar", num_classes, 1, **TINY)


def _assert_same(expected: dict[str, torch.Tensor], model: torch.nn.Module, skip=()) -> None:
    got = model.state_dict()
    assert set(got) == set(expected)
    for key, value in expected.items():
        if not key.startswith(tuple(skip)):
            assert torch.equal(got[key], value), key


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt or timm download fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("tried the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    for name in ("load_state_dict_from_url", "load_state_dict_from_hf", "download_cached_file"):
        monkeypatch.setattr(timm_builder, name, refuse)


def _save(state: dict[str, torch.Tensor], path: Path, layout: str) -> Path:
    if layout == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, path.with_suffix(".safetensors"))
        return path.with_suffix(".safetensors")
    wrapped = {
        "plain": state,
        "state_dict": {"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3},
        "model": {"model": state, "optimizer": {"lr": 0.1}},
    }[layout]
    torch.save(wrapped, path.with_suffix(".pt"))
    return path.with_suffix(".pt")


@pytest.mark.parametrize("layout", ["safetensors", "plain", "state_dict", "model"])
def test_a_saved_model_loads_back_bit_identically(tmp_path, layout) -> None:
    trained = _tiny(seed=1)
    expected = {k: v.clone() for k, v in trained.state_dict().items()}
    path = _save(expected, tmp_path / "w", layout)
    loaded = build_model("vgg11_cifar", 10, 1, init=path, **TINY)  # seeded 0 elsewhere: differs
    _assert_same(expected, loaded)
    assert loaded._ebcompress_init == {"file": str(path), "new_head": []}
    assert not torch.equal(_tiny(seed=2).features[0].weight, expected["features.0.weight"])


def test_the_checksum_is_the_files_sha256(tmp_path) -> None:
    path = _save(_tiny().state_dict(), tmp_path / "w", "safetensors")
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


class NotWeights:
    """An arbitrary object: reading it back needs a full unpickle."""


def test_a_pickled_object_is_refused_in_one_line(tmp_path) -> None:
    path = tmp_path / "full_model.pt"
    torch.save({"model": NotWeights()}, path)
    with pytest.raises(UserError) as err:
        build_model("vgg11_cifar", 10, 1, init=path, **TINY)
    message = str(err.value)
    assert "\n" not in message
    assert "is not a weights-only file" in message and "NotWeights" in message
    assert "torch.save(model.state_dict()" in message  # how to convert it


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"not a checkpoint", "is not a PyTorch checkpoint"),
        (b"\x10\x00\x00\x00\x00\x00\x00\x00{broken header!!", "not a readable safetensors file"),
    ],
)
def test_an_unreadable_file_is_one_line(tmp_path, content, expected) -> None:
    path = tmp_path / ("w.safetensors" if b"header" in content else "w.pt")
    path.write_bytes(content)
    with pytest.raises(UserError, match=expected) as err:
        read_weights(path)
    assert "\n" not in str(err.value)


def test_a_missing_file_and_a_non_state_dict_are_one_line(tmp_path) -> None:
    with pytest.raises(UserError, match="is not a file"):
        read_weights(tmp_path / "absent.pt")
    torch.save({"weights": [1, 2, 3], "note": "hi"}, tmp_path / "odd.pt")
    with pytest.raises(UserError, match="entries are not tensors") as err:
        read_weights(tmp_path / "odd.pt")
    assert "\n" not in str(err.value)


def test_missing_and_unexpected_keys_are_named_in_one_line(tmp_path) -> None:
    state = dict(_tiny().state_dict())
    del state["features.0.weight"], state["features.1.running_var"]
    state["extra.bias"] = torch.zeros(3)
    path = _save(state, tmp_path / "w", "plain")
    with pytest.raises(UserError) as err:
        build_model("vgg11_cifar", 10, 1, init=path, **TINY)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    assert "2 missing: features.0.weight, features.1.running_var" in message
    assert "1 unexpected: extra.bias" in message


def test_weights_of_other_widths_are_named_by_shape(tmp_path) -> None:
    path = _save(_tiny().state_dict(), tmp_path / "w", "plain")
    with pytest.raises(UserError, match=r"of another shape: features\.0\.weight \(file 16x1x3x3"):
        build_model("vgg11_cifar", 10, 1, init=path, width_mult=0.5)


def test_a_classifier_for_other_classes_keeps_its_initialisation(tmp_path) -> None:
    expected = _tiny(num_classes=10).state_dict()
    path = _save(expected, tmp_path / "w", "safetensors")
    torch.manual_seed(5)
    fresh_head = build_model("vgg11_cifar", 7, 1, **TINY).fc.weight.clone()
    torch.manual_seed(5)
    loaded = build_model("vgg11_cifar", 7, 1, init=path, **TINY)
    assert loaded._ebcompress_init["new_head"] == ["fc"]
    assert torch.equal(loaded.fc.weight, fresh_head)
    for key, value in loaded.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(value, expected[key]), key


@pytest.mark.parametrize("name", ["test_resnet", "resnet10t"])
def test_timm_loads_the_file_through_its_own_mechanism(tmp_path, monkeypatch, no_network, name):
    created = timm_builder.load_state_dict
    read = []

    def spy(path, *args, **kwargs):
        read.append(path)
        return created(path, *args, **kwargs)

    monkeypatch.setattr(timm_builder, "load_state_dict", spy)
    torch.manual_seed(3)
    source = timm.create_model(name, pretrained=False, num_classes=10, in_chans=1)
    expected = {k: v.clone() for k, v in source.state_dict().items()}
    path = _save(expected, tmp_path / "w", "safetensors")
    torch.manual_seed(0)
    loaded = build_model(f"timm:{name}", 10, 1, init=path)
    assert read == [str(path)]  # timm's pretrained_cfg_overlay=dict(file=...) path
    _assert_same(expected, loaded)
    assert loaded._ebcompress_init["new_head"] == []
    # a head for other classes: timm drops the file's and everything else still loads
    other = build_model(f"timm:{name}", 4, 1, init=path)
    assert other._ebcompress_init["new_head"] == ["fc"] and other.fc.out_features == 4
    _assert_same(
        {**expected, **{k: other.state_dict()[k] for k in ("fc.weight", "fc.bias")}}, other
    )


def test_timm_mismatches_are_one_line(tmp_path, no_network) -> None:
    state = dict(timm.create_model("test_resnet", num_classes=10, in_chans=1).state_dict())
    state.pop("conv1.0.weight")
    path = _save(state, tmp_path / "w", "plain")
    for classes in (10, 4):  # strict (timm raises) and head dropped (checked here)
        with pytest.raises(UserError, match="1 missing: conv1.0.weight") as err:
            build_model("timm:test_resnet", classes, 1, init=path)
        assert "\n" not in str(err.value)


def test_torchvision_loads_strictly_but_for_the_last_linear(tmp_path) -> None:
    torch.manual_seed(4)
    source = build_model("tv:mobilenet_v3_small", 10, 1)
    path = _save(source.state_dict(), tmp_path / "w", "plain")
    loaded = build_model("tv:mobilenet_v3_small", 10, 1, init=path)
    _assert_same(source.state_dict(), loaded)
    other = build_model("tv:mobilenet_v3_small", 5, 1, init=path)
    assert other._ebcompress_init["new_head"] == ["classifier.3"]


def test_init_is_not_a_model_argument() -> None:
    with pytest.raises(UserError, match="is not a file"):
        build_model("vgg11_cifar", 10, 1, init="nowhere.safetensors", **TINY)
