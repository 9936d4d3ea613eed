"""The pickle-free bundle, ONNX / pt2 / TorchScript exports with verification, timm attributes."""

from __future__ import annotations

import json
import sys
from dataclasses import replace

import numpy as np
import onnxruntime as ort
import pytest
import timm
import torch
import torchvision
from export_fakes import CIFAR_MEAN, CIFAR_STD, randomize_batchnorm, slim_case
from safetensors.torch import load_file, save_file
from torch import nn

from ebcompress.channels.graph import ChannelGraph, draw_ticket
from ebcompress.channels.slim import slim
from ebcompress.channels.ticket import Ticket
from ebcompress.channels.timm_compat import sync_timm_attributes
from ebcompress.deploy.bundle import (
    CONFIG_FILE,
    STRUCTURE_FILE,
    WEIGHTS_FILE,
    ModelSpec,
    export_bundle,
    load,
    read_bundle,
)
from ebcompress.deploy.formats import ExportError, export, infer_spec, verify_outputs
from ebcompress.deploy.spec_inference import IMAGENET_MEAN, IMAGENET_STD
from ebcompress.errors import UserError


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


def test_an_altered_weight_of_the_right_shape_is_caught_by_the_checksum(bundle):
    tensors = load_file(bundle / WEIGHTS_FILE)
    tensors["fc.bias"] = tensors["fc.bias"] + 1e-3  # names, shapes and dtypes still fit
    save_file(tensors, bundle / WEIGHTS_FILE)
    with pytest.raises(UserError, match=r"does not match the weights_sha256 in config\.json"):
        load(bundle)


def test_bundles_without_a_checksum_still_load_and_a_bad_one_is_named(bundle, resnet_case):
    config = json.loads((bundle / CONFIG_FILE).read_text())
    assert len(config["weights_sha256"]) == 64
    del config["weights_sha256"]  # as written before the field existed
    (bundle / CONFIG_FILE).write_text(json.dumps(config))
    x = batch()
    with torch.no_grad():
        assert torch.equal(load(bundle)(x), resnet_case.slim.eval()(x))
    _edit_config(bundle, weights_sha256="not-a-digest")
    with pytest.raises(UserError, match="weights_sha256 'not-a-digest' is not a sha256"):
        load(bundle)


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


def test_a_slim_bundle_needs_its_ticket_and_a_known_format(tmp_path, resnet_case):
    with pytest.raises(UserError, match=r"other widths .*a slim model needs its ticket="):
        export(resnet_case.slim, tmp_path / "b")
    assert not (tmp_path / "b").exists()  # checked before anything is written
    with pytest.raises(UserError, match="'tflite' is not one of"):
        export(resnet_case.slim, tmp_path / "m", format="tflite", spec=resnet_case.spec)


def test_model_spec_validates_its_fields():
    with pytest.raises(UserError, match="num_classes"):
        ModelSpec("timm:test_resnet", {"num_classes": 3}, 10, 3, (3, 32, 32), (0.5,), (0.5,))
    with pytest.raises(UserError, match="in_chans"):
        ModelSpec("timm:test_resnet", {}, 10, 1, (3, 32, 32), (0.5,), (0.5,))
    with pytest.raises(UserError, match="'mean' is missing"):
        ModelSpec.from_dict({"arch": "x", "num_classes": 1, "in_chans": 3, "input_size": [3, 8, 8]})


# --------------------------------------------------------------------------- ignored layers
TEST_RESNET_SPEC = ModelSpec("timm:test_resnet", {}, 10, 3, (3, 32, 32), CIFAR_MEAN, CIFAR_STD)


def _ignoring(layer: str) -> tuple[nn.Module, nn.Module, Ticket]:
    """test_resnet with ``layer`` (a conv or a whole stage) kept dense: dense, slim, ticket."""
    torch.manual_seed(0)
    dense = randomize_batchnorm(TEST_RESNET_SPEC.build_dense())
    ignored = [dense.get_submodule(layer)]
    ticket = ChannelGraph(dense, batch(1), ignored_layers=ignored).draw(0.3)
    return dense, slim(dense, ticket).eval(), ticket


@pytest.mark.parametrize("layer", ["layer1.0.conv1", "layer1"])
def test_ignored_layers_survive_the_bundle_round_trip(tmp_path, layer):
    dense, slimmed, ticket = _ignoring(layer)
    assert ticket.ignored_layers == (layer,)
    assert not any(name == layer or name.startswith(layer + ".") for name in ticket.widths)
    folder = export(slimmed, tmp_path / "b", spec=TEST_RESNET_SPEC, ticket=ticket)
    assert json.loads((folder / STRUCTURE_FILE).read_text())["ignored_layers"] == [layer]
    loaded = load(folder)
    assert widths(loaded) == widths(slimmed)

    def out_widths(model: nn.Module) -> dict[str, int]:  # an ignored layer keeps its outputs
        state = model.get_submodule(layer).state_dict()
        return {k: v.shape[0] for k, v in state.items() if k.endswith("weight")}

    assert out_widths(loaded) == out_widths(dense)
    with torch.no_grad():
        assert torch.equal(loaded(batch()), slimmed(batch()))


def test_bundles_that_kept_typed_fields_in_extra_still_load(tmp_path):
    _, slimmed, ticket = _ignoring("layer1.0.conv1")
    folder = export_bundle(slimmed, tmp_path / "b", spec=TEST_RESNET_SPEC, ticket=ticket)
    structure = json.loads((folder / STRUCTURE_FILE).read_text())
    for key in ("ignored_layers", "input_shape", "kept_dense"):  # the layout before typing
        structure["extra"][key] = structure.pop(key)
    (folder / STRUCTURE_FILE).write_text(json.dumps(structure))
    untyped = {**ticket.extra, "ignored_layers": ["layer1.0.conv1"]}  # bundle.load reads it
    assert read_bundle(folder)[2] == replace(ticket, ignored_layers=(), extra=untyped)
    with torch.no_grad():
        assert torch.equal(load(folder)(batch()), slimmed(batch()))
    del structure["extra"]["ignored_layers"]
    (folder / STRUCTURE_FILE).write_text(json.dumps(structure))
    with pytest.raises(UserError, match="'layer1.0.conv1' is missing from the ticket"):
        load(folder)


# --------------------------------------------------------------------------- inferred spec
def _slim_without_spec(dense: nn.Module, x: torch.Tensor) -> tuple[nn.Module, Ticket]:
    randomize_batchnorm(dense.eval())
    ticket = draw_ticket(dense, 0.3, example_inputs=x)
    return slim(dense, ticket).eval(), ticket


def _config(folder) -> dict:
    return json.loads((folder / CONFIG_FILE).read_text())


def test_export_infers_the_spec_of_a_timm_model(tmp_path):
    torch.manual_seed(0)
    dense = timm.create_model("test_resnet", num_classes=7)  # not via build_model: its cfg
    slimmed, ticket = _slim_without_spec(dense, batch(1))
    folder = export(slimmed, tmp_path / "b", ticket=ticket)
    config = _config(folder)
    assert (config["arch"], config["build_kwargs"], config["num_classes"]) == (
        "timm:test_resnet",
        {},
        7,
    )
    assert config["input_size"] == [3, 32, 32]  # as drawn, not the cfg's 160 px
    assert config["mean"] == config["std"] == [0.5, 0.5, 0.5]  # test_resnet's cfg
    loaded = load(folder)
    assert widths(loaded) == widths(slimmed) != widths(dense)
    with torch.no_grad():
        assert torch.equal(loaded(batch()), slimmed(batch()))


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_export_infers_the_spec_of_a_torchvision_model(tmp_path, name):
    torch.manual_seed(0)
    dense = getattr(torchvision.models, name)(num_classes=5)  # resnet18: one of 10 ResNets
    slimmed, ticket = _slim_without_spec(dense, batch(1))
    folder = export(slimmed, tmp_path / "b", ticket=ticket)
    config = _config(folder)
    assert (config["arch"], config["num_classes"], config["in_chans"]) == (f"tv:{name}", 5, 3)
    assert config["input_size"] == [3, 32, 32]
    assert config["mean"] == list(IMAGENET_MEAN) and config["std"] == list(IMAGENET_STD)
    with torch.no_grad():
        assert torch.equal(load(folder)(batch()), slimmed(batch()))


def test_export_infers_the_build_kwargs_build_model_recorded(tmp_path, vgg_case):
    folder = export(vgg_case.slim, tmp_path / "b", ticket=vgg_case.ticket)
    config = _config(folder)
    expected = vgg_case.spec.to_dict()
    for key in ("arch", "build_kwargs", "num_classes", "in_chans", "input_size"):
        assert config[key] == expected[key], key
    with torch.no_grad():
        assert torch.equal(load(folder)(batch()), vgg_case.slim(batch()))


def test_a_dense_timm_model_exports_without_spec_or_ticket(tmp_path):
    dense = randomize_batchnorm(timm.create_model("test_resnet", num_classes=3)).eval()
    folder = export(dense, tmp_path / "b", example_inputs=batch(1, seed=3)[:, :, :24, :24])
    assert _config(folder)["input_size"] == [3, 24, 24] and not _config(folder)["slim"]
    with torch.no_grad():
        assert torch.equal(load(folder)(batch()), dense(batch()))


def test_spec_inference_names_the_field_it_cannot_infer(tmp_path):
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    with pytest.raises(UserError, match=r"ModelSpec\.arch: a Sequential was not built by"):
        infer_spec(plain)
    tv = torchvision.models.resnet18(num_classes=3)
    with pytest.raises(UserError, match=r"ModelSpec\.input_size: neither example_inputs"):
        infer_spec(tv)
    # a constructor argument the model does not record: the rebuild computes something else
    max_pool = timm.create_model("test_resnet", num_classes=3, global_pool="max").eval()
    at_64_px = torch.randn(1, 3, 64, 64)  # a 2x2 final map: max and mean pooling differ
    with pytest.raises(UserError, match=r"computes other outputs.*pass spec=ModelSpec\(\.\.\.\)$"):
        export(max_pool, tmp_path / "b", example_inputs=at_64_px)
    assert not (tmp_path / "b").exists()


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
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no temporary file left


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
    # The module itself, whatever the package attribute of that name is bound to.
    export_module = sys.modules["ebcompress.deploy.formats"]

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
