"""The pickle-free bundle, ONNX / pt2 / TorchScript exports with verification, timm attributes."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch
from export_fakes import slim_case
from safetensors.torch import load_file, save_file
from torch import nn

from ebcompress.bundle import (
    CONFIG_FILE,
    STRUCTURE_FILE,
    WEIGHTS_FILE,
    ModelSpec,
    export_bundle,
    load,
)
from ebcompress.errors import UserError
from ebcompress.export import ExportError, export, verify_outputs
from ebcompress.timm_compat import sync_timm_attributes


@pytest.fixture(scope="module")
def resnet_case():
    return slim_case("timm:test_resnet")


@pytest.fixture(scope="module")
def vgg_case():
    return slim_case("vgg11_cifar", {"width_mult": 0.25})


@pytest.fixture
def bundle(tmp_path, resnet_case):
    return export_bundle(
        resnet_case.slim, tmp_path / "bundle", spec=resnet_case.spec, ticket=resnet_case.ticket
    )


def batch(n: int = 2, seed: int = 7) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def widths(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- bundle
@pytest.mark.parametrize("case_name", ["resnet_case", "vgg_case"])
def test_bundle_round_trip_gives_identical_outputs(request, tmp_path, case_name):
    case = request.getfixturevalue(case_name)
    folder = export(case.slim, tmp_path / "b", spec=case.spec, ticket=case.ticket)
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE, STRUCTURE_FILE]
    loaded = load(folder)
    assert widths(loaded) == widths(case.slim)
    assert widths(loaded) != widths(case.dense)  # the bundle really holds the slim shapes
    with torch.no_grad():
        assert torch.equal(loaded(batch()), case.slim(batch()))
    assert not loaded.training


def test_bundle_loads_from_a_run_directory(tmp_path, resnet_case):
    case = resnet_case
    export_bundle(case.slim, tmp_path / "run" / "model", spec=case.spec, ticket=case.ticket)
    with torch.no_grad():
        assert torch.equal(load(tmp_path / "run")(batch()), case.slim(batch()))
    with pytest.raises(UserError, match="neither a bundle"):
        load(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        load(tmp_path / "nowhere")


def test_slim_weights_without_structure_are_rejected(tmp_path, resnet_case):
    folder = export_bundle(resnet_case.slim, tmp_path / "b", spec=resnet_case.spec, ticket=None)
    with pytest.raises(UserError, match="tensor shapes differ"):
        load(folder)


def test_dense_bundle_round_trip(tmp_path, resnet_case):
    folder = export_bundle(resnet_case.dense, tmp_path / "b", spec=resnet_case.spec, ticket=None)
    assert not (folder / STRUCTURE_FILE).exists()
    with torch.no_grad():
        assert torch.equal(load(folder)(batch()), resnet_case.dense(batch()))


def test_changed_tensor_shape_is_rejected_by_name(bundle):
    tensors = load_file(bundle / WEIGHTS_FILE)
    tensors["layer1.0.conv1.weight"] = tensors["layer1.0.conv1.weight"][:-1].clone()
    save_file(tensors, bundle / WEIGHTS_FILE)
    with pytest.raises(UserError, match=r"layer1\.0\.conv1\.weight \["):
        load(bundle)


def test_missing_and_unexpected_tensors_are_named(bundle):
    tensors = load_file(bundle / WEIGHTS_FILE)
    tensors["extra.weight"] = tensors.pop("fc.weight")
    save_file(tensors, bundle / WEIGHTS_FILE)
    with pytest.raises(UserError, match=r"unexpected extra\.weight; missing fc\.weight"):
        load(bundle)


@pytest.mark.parametrize("name", [WEIGHTS_FILE, STRUCTURE_FILE, CONFIG_FILE])
def test_missing_file_is_named(bundle, name):
    (bundle / name).unlink()
    with pytest.raises(UserError, match=CONFIG_FILE if name == CONFIG_FILE else name):
        load(bundle)


def _edit_config(folder, **changes) -> None:
    config = json.loads((folder / CONFIG_FILE).read_text())
    config.update(changes)
    (folder / CONFIG_FILE).write_text(json.dumps(config))


def test_wrong_architecture_is_rejected(bundle):
    _edit_config(bundle, arch="vgg11_cifar", build_kwargs={"width_mult": 0.25})
    with pytest.raises(UserError, match=r"structure\.json .*does not fit arch 'vgg11_cifar'"):
        load(bundle)


def test_unknown_architecture_is_rejected(bundle):
    _edit_config(bundle, arch="timm:no_such_net")
    with pytest.raises(UserError, match="no_such_net"):
        load(bundle)


def test_structure_from_another_export_is_rejected(bundle):
    _edit_config(bundle, fingerprint="0123456789abcdef")
    with pytest.raises(UserError, match="different exports"):
        load(bundle)


def test_edited_structure_is_caught_by_weight_shapes(bundle):
    structure = json.loads((bundle / STRUCTURE_FILE).read_text())
    group = structure["groups"][0]
    group["kept"] = group["kept"][:-1]
    (bundle / STRUCTURE_FILE).write_text(json.dumps(structure))
    with pytest.raises(UserError, match="tensor shapes differ"):
        load(bundle)


def test_unreadable_weights_are_rejected(bundle):
    (bundle / WEIGHTS_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="not a readable safetensors"):
        load(bundle)


def test_bundle_needs_a_spec_and_a_known_format(tmp_path, resnet_case):
    with pytest.raises(UserError, match="needs spec"):
        export(resnet_case.slim, tmp_path / "b")
    with pytest.raises(UserError, match="'tflite' is not one of"):
        export(resnet_case.slim, tmp_path / "m", format="tflite", spec=resnet_case.spec)


def test_model_spec_validates_its_fields():
    with pytest.raises(UserError, match="num_classes"):
        ModelSpec("timm:test_resnet", {"num_classes": 3}, 10, 3, (3, 32, 32), (0.5,), (0.5,))
    with pytest.raises(UserError, match="in_chans"):
        ModelSpec("timm:test_resnet", {}, 10, 1, (3, 32, 32), (0.5,), (0.5,))
    with pytest.raises(UserError, match="'mean' is missing"):
        ModelSpec.from_dict({"arch": "x", "num_classes": 1, "in_chans": 3, "input_size": [3, 8, 8]})


# --------------------------------------------------------------------------- other formats
@pytest.mark.parametrize("dynamic", [True, False])
def test_onnx_parity_with_onnxruntime(tmp_path, vgg_case, dynamic):
    path = export(
        vgg_case.slim, tmp_path / "m.onnx", format="onnx", spec=vgg_case.spec, dynamic_batch=dynamic
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    n = 3 if dynamic else 2
    (out,) = session.run(None, {"input": batch(n).numpy()})
    with torch.no_grad():
        expected = vgg_case.slim(batch(n)).numpy()
    np.testing.assert_allclose(out, expected, atol=1e-4, rtol=1e-4)
    assert session.get_inputs()[0].shape[0] == ("batch" if dynamic else 2)
    assert not list(tmp_path.glob("*.partial*"))


@pytest.mark.slow
def test_pt2_round_trip(tmp_path, resnet_case):
    path = export(resnet_case.slim, tmp_path / "m.pt2", format="pt2", spec=resnet_case.spec)
    reloaded = torch.export.load(str(path)).module()
    with torch.no_grad():
        for n in (1, 3):
            torch.testing.assert_close(reloaded(batch(n)), resnet_case.slim(batch(n)))


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_round_trip(tmp_path, resnet_case):
    path = export(resnet_case.slim, tmp_path / "m.pt", format="torchscript", spec=resnet_case.spec)
    reloaded = torch.jit.load(str(path))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(batch(3)), resnet_case.slim(batch(3)))


def test_export_keeps_the_model_mode(tmp_path, vgg_case):
    vgg_case.slim.train()
    try:
        export(vgg_case.slim, tmp_path / "m.onnx", format="onnx", spec=vgg_case.spec)
        assert vgg_case.slim.training
    finally:
        vgg_case.slim.eval()


def test_verification_rejects_a_different_output(vgg_case):
    batches = [batch()]
    with torch.no_grad():
        off = vgg_case.slim(batches[0]) + 1e-2
    with pytest.raises(ExportError, match="differs from PyTorch by 0.01"):
        verify_outputs(vgg_case.slim, lambda x: off, batches, what="test export")
    with pytest.raises(ExportError, match="returns shapes"):
        verify_outputs(vgg_case.slim, lambda x: off[:1], batches, what="test export")
    assert verify_outputs(vgg_case.slim, vgg_case.slim, batches, what="same") == 0.0


def test_failed_export_leaves_no_file(tmp_path, vgg_case, monkeypatch):
    # sys.modules: the package attribute `ebcompress.export` is the function, not this module.
    export_module = sys.modules["ebcompress.export"]

    def broken(*args, **kwargs):
        raise ExportError("verification failed")

    monkeypatch.setattr(export_module, "verify_outputs", broken)
    with pytest.raises(ExportError):
        export(vgg_case.slim, tmp_path / "m.onnx", format="onnx", spec=vgg_case.spec)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- timm
@pytest.mark.slow
def test_slim_timm_model_stays_a_timm_model(tmp_path):
    case = slim_case("timm:resnet18", ratio=0.5)
    model = load(export_bundle(case.slim, tmp_path / "b", spec=case.spec, ticket=case.ticket))
    width = model.fc.in_features
    assert width < case.dense.num_features  # the last stage was slimmed
    assert model.num_features == model.head_hidden_size == width
    assert model.pretrained_cfg["architecture"] == "resnet18"
    assert [info["num_chs"] for info in model.feature_info][-1] == width
    with torch.no_grad():
        features = model.forward_features(batch())
        assert features.shape[1] == width
        torch.testing.assert_close(model.forward_head(features), model(batch()))
        model.reset_classifier(5)
        assert isinstance(model.fc, nn.Linear) and model.fc.in_features == width
        assert model(batch()).shape == (2, 5)


def test_sync_timm_attributes_measures_widths(resnet_case):
    model = resnet_case.slim
    model.num_features = model.head_hidden_size = 12345  # what torch-pruning leaves stale
    sync_timm_attributes(model, batch())
    assert model.num_features == model.head_hidden_size == model.fc.in_features
    assert not model.training
    plain = nn.Sequential(nn.Conv2d(3, 4, 3))
    assert sync_timm_attributes(plain, batch()) is plain  # not timm-style: untouched
