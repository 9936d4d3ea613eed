"""retrain.distill in the recipe: its defaults, and every mistake a one-line UserError."""

from __future__ import annotations

import pytest
import yaml

from ebcompress.errors import UserError
from ebcompress.recipe import DistillSection, load_recipe, validate_recipe

FILE = "retrain.distill.teacher=/weights/teacher.safetensors"


def test_distillation_is_off_by_default_and_an_empty_section_is_the_dense_teacher() -> None:
    assert load_recipe("quickstart").retrain.distill is None
    distill = load_recipe("quickstart", ["retrain.distill={}"]).retrain.distill
    assert isinstance(distill, DistillSection)
    assert (distill.teacher, distill.alpha, distill.temperature) == ("dense", 0.5, 4.0)
    assert not distill.from_file
    assert (distill.model, distill.kwargs, distill.teacher_sha256) == (None, {}, None)


def test_a_file_teacher_takes_its_architecture_and_checksum() -> None:
    sha = "0123456789abcdef" * 4
    recipe = load_recipe(
        "quickstart",
        [
            FILE,
            "retrain.distill.model=vgg16_cifar",
            "retrain.distill.kwargs={width_mult: 0.5}",
            f"retrain.distill.teacher_sha256={sha}",
            "retrain.distill.alpha=0.9",
            "retrain.distill.temperature=2",
        ],
    )
    distill = recipe.retrain.distill
    assert distill.from_file and distill.teacher == "/weights/teacher.safetensors"
    assert (distill.model, distill.kwargs, distill.teacher_sha256) == (
        "vgg16_cifar",
        {"width_mult": 0.5},
        sha,
    )
    assert (distill.alpha, distill.temperature) == (0.9, 2.0)
    again = validate_recipe(yaml.safe_load(recipe.to_yaml()))
    assert again.retrain.distill == distill  # what recipe.yaml records loads back the same


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["retrain.distill.techer=dense"], "unknown key 'retrain.distill.techer'"),
        (["retrain.distill.model=vgg11_cifar"], "model describes a teacher file"),
        (["retrain.distill.kwargs={width_mult: 0.5}"], "kwargs describes a teacher file"),
        ([f"retrain.distill.teacher_sha256={'a' * 64}"], "teacher_sha256 describes a teacher"),
        (
            [FILE, "retrain.distill.model=vgg11_cifar", "retrain.distill.kwargs={num_classes: 3}"],
            r"kwargs \['num_classes'\] are set",
        ),
        ([FILE, "retrain.distill.kwargs={width_mult: 0.5}"], "set model too"),
        ([FILE, "retrain.distill.teacher_sha256=abc"], "retrain.distill.teacher_sha256"),
        (["retrain.distill.teacher="], "retrain.distill"),
        (["retrain.distill.alpha=1.5"], "retrain.distill.alpha"),
        (["retrain.distill.alpha=-0.1"], "retrain.distill.alpha"),
        (["retrain.distill.temperature=0"], "retrain.distill.temperature"),
        (
            ["prune.method=snip", "retrain.distill={}"],
            "retrain.distill.teacher 'dense': SNIP prunes at initialisation",
        ),
    ],
)
def test_distill_mistakes_are_one_line_user_errors(overrides, expected) -> None:
    with pytest.raises(UserError, match=expected) as info:
        load_recipe("quickstart", overrides)
    assert "\n" not in str(info.value)


def test_snip_distils_from_a_file() -> None:
    recipe = load_recipe("quickstart", ["prune.method=snip", FILE])
    assert recipe.prune.method == "snip" and recipe.retrain.distill.from_file


@pytest.mark.parametrize("method", ["eb", "ns", "lt", "thinet"])
def test_the_methods_that_train_a_dense_network_distil_from_it(method) -> None:
    recipe = load_recipe("quickstart", [f"prune.method={method}", "retrain.distill={}"])
    assert recipe.retrain.distill.teacher == "dense"


def test_an_unknown_key_in_the_optional_distill_section_lists_its_fields() -> None:
    with pytest.raises(
        UserError,
        match=r"unknown key 'retrain\.distill\.alpah'; allowed here: "
        r"teacher, model, kwargs, teacher_sha256, alpha, temperature",
    ):
        load_recipe("quickstart", ["retrain.distill.alpah=0.3"])
