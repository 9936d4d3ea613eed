"""The generic registry: names in order, duplicates refused, unknown names listed, lazy
entries imported only when asked for."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ebcompress.errors import UserError
from ebcompress.registry import Registry, import_target


def test_register_as_a_call_or_a_decorator_and_get_it_back() -> None:
    shapes: Registry[object] = Registry("shape")

    @shapes.register("square")
    def square() -> str:
        return "square"

    circle = object()
    assert shapes.register("circle", circle) is circle
    assert shapes.get("square") is square and shapes.get("circle") is circle
    assert shapes.names() == ("square", "circle") == tuple(shapes)  # registration order
    assert "square" in shapes and "triangle" not in shapes and len(shapes) == 2
    assert shapes.items() == [("square", square), ("circle", circle)]


def test_a_duplicate_name_is_refused_and_the_first_entry_kept() -> None:
    shapes: Registry[int] = Registry("shape")
    shapes.register("square", 1)
    with pytest.raises(ValueError, match="shape 'square' is already registered"):
        shapes.register("square", 2)
    with pytest.raises(ValueError, match="already registered"):
        shapes.register_lazy("square", "math:pi")
    assert shapes.get("square") == 1
    with pytest.raises(ValueError, match="non-empty name"):
        shapes.register("", 3)


def test_an_unknown_name_is_a_user_error_listing_the_registered_ones() -> None:
    shapes: Registry[int] = Registry("shape")
    shapes.register("square", 1)
    shapes.register("circle", 2)
    with pytest.raises(UserError, match=r"^shape 'triangle' is not one of square, circle$"):
        shapes.get("triangle")
    with pytest.raises(ValueError, match="shape 'triangle' is not one of square, circle"):
        shapes.check("triangle")  # what schema validators raise
    assert shapes.check("circle") == "circle"
    assert "(none registered)" in Registry("colour").unknown("red")


def test_a_lazy_entry_is_imported_on_first_get_only() -> None:
    # a fresh interpreter: whether the module was imported must not depend on other tests
    code = (
        "import sys\n"
        "from ebcompress.registry import Registry\n"
        "r = Registry('codec')\n"
        "r.register_lazy('json', 'json.decoder:JSONDecoder')\n"
        "assert r.names() == ('json',) and 'json' in r\n"
        "assert 'json.decoder' not in sys.modules\n"
        "import json.decoder\n"
        "assert r.get('json') is json.decoder.JSONDecoder\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_lazy_target_must_name_a_module_and_an_attribute() -> None:
    with pytest.raises(ValueError, match="package.module:attribute"):
        Registry("codec").register_lazy("json", "json.decoder.JSONDecoder")
    assert import_target("math:pi") == pytest.approx(3.14159, abs=1e-5)


def test_the_project_registries_list_what_they_build() -> None:
    from ebcompress.data import DATASETS
    from ebcompress.deploy.formats import FORMATS
    from ebcompress.engine.bfp8 import BlockFloat8
    from ebcompress.engine.precision import PRECISIONS
    from ebcompress.methods.catalog import METHODS

    assert METHODS.names() == ("eb", "ns", "lt", "snip", "thinet")
    assert PRECISIONS.names() == ("fp32", "bf16", "fp16", "bfp8")
    assert PRECISIONS.get("bfp8") is BlockFloat8
    assert FORMATS.names() == ("bundle", "onnx", "torchscript", "pt2")
    assert FORMATS.get("bundle").write is None and FORMATS.get("onnx").file_name == "model.onnx"
    assert DATASETS.names() == (
        "digits", "fashion_mnist", "cifar10", "cifar100", "imagenet", "imagefolder", "fake",
    )  # fmt: skip
