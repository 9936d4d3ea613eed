"""``export`` and ``load`` under bad input (#17 item 8).

Hypothesis draws bad values for each argument of ``export`` and tampers with a bundle (JSON
fields replaced, removed or added, bytes flipped or cut off, tensors renamed, reshaped or
retyped): each bad call must be :func:`bad_inputs.refused`, and a tampered bundle is refused
naming its folder or loads a model that computes exactly what the exported one does, nothing
in between. Named cases cover missing files and paths that cannot work.
"""

from __future__ import annotations

import json
import shutil
from functools import partial
from pathlib import Path

import pytest
import torch
from bad_inputs import BAD_INPUTS, FILES, FUZZ, NOT_A_MODULE, NOT_A_PATH, NOT_AN_INT, X, refused
from export_fakes import slim_case
from hypothesis import event, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

import ebcompress as eb
from ebcompress.deploy.bundle import CONFIG_FILE, STRUCTURE_FILE, WEIGHTS_FILE
from ebcompress.deploy.formats import FORMATS
from ebcompress.errors import UserError


@pytest.fixture(scope="module")
def vgg():
    return slim_case("vgg11_cifar", {"width_mult": 0.125})


@pytest.fixture(scope="module")
def resnet():
    return slim_case("timm:test_resnet")


# ----------------------------------------------------------------------------- export
EXPORT = {
    "model": NOT_A_MODULE,
    "path": NOT_A_PATH,
    "format": st.one_of(st.text(max_size=8).filter(lambda f: f not in FORMATS), NOT_AN_INT),
    "spec": st.one_of(NOT_AN_INT, st.just({"arch": "vgg11_cifar"})),
    "ticket": st.one_of(NOT_AN_INT, st.just({"groups": []})),
    "example_inputs": BAD_INPUTS.filter(lambda v: v is not None),
}


@pytest.mark.parametrize("name", EXPORT)
@FUZZ
@given(data=st.data())
def test_export_refuses_every_bad_argument(vgg, tmp_path, name, data) -> None:
    arguments = {"model": vgg.slim, "path": tmp_path / "b", "spec": vgg.spec, "ticket": vgg.ticket}
    arguments[name] = data.draw(EXPORT[name], label=name)
    refused(lambda: eb.export(**arguments), name, model=vgg.slim)
    assert not (tmp_path / "b").exists()  # refused before anything was written


def test_export_refuses_paths_and_tickets_that_cannot_work(vgg, resnet, tmp_path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    for path, fmt in ((afile, "bundle"), (afile / "sub", "bundle"), (tmp_path, "onnx")):
        refused(lambda p=path, f=fmt: eb.export(vgg.slim, p, format=f, spec=vgg.spec), str(path))
    spec, folder = vgg.spec, tmp_path / "b"
    for model, ticket in ((vgg.slim, resnet.ticket), (vgg.dense, vgg.ticket)):
        call = partial(eb.export, model, folder, spec=spec, ticket=ticket)
        refused(call, "ticket", model=model)
    assert not (tmp_path / "b").exists()
    # a slim model exported as if dense: only the written bundle can tell, and it says so
    refused(lambda: eb.export(vgg.slim, tmp_path / "c", spec=vgg.spec), "ticket")


# ----------------------------------------------------------------------------- load
@pytest.fixture(scope="module")
def exported(resnet, tmp_path_factory) -> Path:
    """test_resnet's bundle: its config has no build_kwargs, which an edit could turn into a
    network of gigabytes (a width multiplier of 70), as a tampered bundle may ask for."""
    folder = tmp_path_factory.mktemp("api") / "good"
    return eb.export(resnet.slim, folder, spec=resnet.spec, ticket=resnet.ticket)


def _copy(exported: Path, tmp_path: Path) -> Path:
    shutil.rmtree(tmp_path / "bundle", ignore_errors=True)
    return Path(shutil.copytree(exported, tmp_path / "bundle"))


def loads_or_refuses(folder: Path, resnet) -> None:
    """What every tampered bundle must do: be refused naming the folder, or load a model that
    computes what the exported one does."""
    try:
        model = eb.load(folder)
    except (TypeError, ValueError, UserError):
        refused(lambda: eb.load(folder), str(folder))
        return
    event("loaded")
    with torch.no_grad():
        assert torch.equal(model(X), resnet.slim(X)), "a tampered bundle loaded another model"


def test_load_refuses_missing_and_broken_files(exported, tmp_path) -> None:
    refused(lambda: eb.load(tmp_path / "nowhere"), "nowhere")
    refused(lambda: eb.load(None), "path")
    refused(lambda: eb.load(exported, map_location="gpu0"), "map_location")
    for name in (CONFIG_FILE, STRUCTURE_FILE, WEIGHTS_FILE):
        folder = _copy(exported, tmp_path)
        (folder / name).unlink()
        refused(lambda f=folder: eb.load(f), str(folder))
        for content in (b"", (exported / name).read_bytes()[:40], b"\xff\xfe garbage"):
            (folder / name).write_bytes(content)
            refused(lambda f=folder: eb.load(f), str(folder))


JSON_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-2, 70), st.floats(), st.text(max_size=6)
)


@FILES
@given(data=st.data(), name=st.sampled_from([CONFIG_FILE, STRUCTURE_FILE]))
def test_load_of_an_edited_json_file_refuses_or_is_exact(resnet, exported, tmp_path, data, name):
    folder = _copy(exported, tmp_path)
    document = json.loads((folder / name).read_text())
    holders = [document]  # every object and list in the file; the top level half the time
    for holder in holders:
        children = holder.values() if isinstance(holder, dict) else holder
        holders.extend(c for c in children if isinstance(c, (dict, list)) and c)
    holder = document if data.draw(st.booleans()) else data.draw(st.sampled_from(holders))
    keys = list(holder) if isinstance(holder, dict) else list(range(len(holder)))
    key, value = data.draw(st.sampled_from(keys)), data.draw(JSON_VALUES)
    edit = data.draw(st.sampled_from(["replace", "delete", "add"]))
    if edit == "replace":
        holder[key] = value
    elif edit == "delete":
        del holder[key]
    elif isinstance(holder, dict):
        holder[data.draw(st.text(min_size=1, max_size=6))] = value
    else:
        holder.append(value)
    (folder / name).write_text(json.dumps(document))
    loads_or_refuses(folder, resnet)


@FILES
@given(data=st.data(), name=st.sampled_from([CONFIG_FILE, STRUCTURE_FILE, WEIGHTS_FILE]))
def test_load_of_a_corrupted_file_refuses_or_is_exact(resnet, exported, tmp_path, data, name):
    folder = _copy(exported, tmp_path)
    content = bytearray((folder / name).read_bytes())
    # Weights have no checksum, so a flipped byte among them is a different model that loads;
    # the header (names, dtypes, shapes, offsets) is what must never load wrongly.
    end = 8 + int.from_bytes(content[:8], "little") if name == WEIGHTS_FILE else len(content)
    at = data.draw(st.integers(0, end - 1))
    if data.draw(st.booleans()):
        content[at] = data.draw(st.integers(0, 255).filter(lambda b: b != content[at]))
    else:
        del content[at:]
    (folder / name).write_bytes(bytes(content))
    loads_or_refuses(folder, resnet)


@pytest.mark.parametrize("edit", ["rename", "drop", "add", "reshape", "retype", "flatten"])
@settings(FUZZ, max_examples=6)
@given(index=st.integers(0, 100))
def test_load_refuses_tensors_renamed_reshaped_or_retyped(exported, tmp_path, edit, index):
    folder = _copy(exported, tmp_path)
    tensors = load_file(str(folder / WEIGHTS_FILE))
    key = sorted(tensors)[index % len(tensors)]
    value = tensors.pop(key) if edit != "add" else tensors[key]
    tensors.update(
        {
            "rename": {key + "_": value},
            "drop": {},
            "add": {"extra.weight": torch.zeros(2)},
            "reshape": {key: torch.zeros(value.numel() + 1)},
            "retype": {key: value.bool() if value.is_floating_point() else value.float()},
            "flatten": {key: value.reshape(-1, 1)},
        }[edit]
    )
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    refused(lambda: eb.load(folder), str(folder))
