"""The recipe schema: every shipped recipe loads; every kind of mistake gets a one-line error."""

from __future__ import annotations

import pytest

from ebcompress.errors import UserError
from ebcompress.recipe import Recipe, load_recipe, parse_overrides, shipped_recipes, validate_recipe


@pytest.mark.parametrize("name", sorted(shipped_recipes()))
def test_every_shipped_recipe_loads(name: str) -> None:
    recipe = load_recipe(name)
    assert isinstance(recipe, Recipe)
    assert recipe.name == name
    assert 0 < recipe.prune.ratio < 1


def test_paper_recipes_carry_the_paper_schedule() -> None:
    for name in ("vgg16_cifar10_p30", "vgg16_cifar100_p50", "preresnet101_cifar10_p70"):
        t = load_recipe(name).train
        assert (t.epochs, t.batch_size, t.lr, t.milestones) == (160, 256, 0.1, [80, 120])
        assert (t.momentum, t.weight_decay) == (0.9, 1e-4)
    r = load_recipe("resnet50_imagenet_p70")
    assert (r.train.epochs, r.train.milestones, r.prune.ratio) == (90, [30, 60], 0.7)
    assert load_recipe("resnet18_imagenet_p10").model.name == "timm:resnet18"


def test_base_chain_applies_deltas_only() -> None:
    p50 = load_recipe("vgg16_cifar10_p50")
    p30 = load_recipe("vgg16_cifar10_p30")
    assert p50.prune.ratio == 0.5
    assert p50.train == p30.train and p50.model == p30.model


def test_overrides_are_typed() -> None:
    r = load_recipe(
        "quickstart", ["train.lr=0.05", "prune.watch_ratios=[0.5]", "retrain.mode=reinit"]
    )
    assert r.train.lr == 0.05 and r.prune.watch_ratios == [0.5] and r.retrain.mode == "reinit"
    assert parse_overrides(["a.b.c=1", "a.d=x"]) == {"a": {"b": {"c": 1}, "d": "x"}}


def _write(tmp_path, text: str) -> str:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("train: {epochs: 3, lr: [1}\n", "malformed YAML at line 1"),
        ("- a\n- b\n", "must be a YAML mapping"),
        ("train: {epoch: 3}\n", "unknown key 'train.epoch'; allowed here: epochs"),
        ("trian: {}\n", "unknown key 'trian'"),
        ("train: {epochs: many}\n", "train.epochs"),
        ("train: {epochs: -2}\n", "train.epochs"),
        ("prune: {ratio: 1.5}\n", "prune.ratio"),
        ("prune: {ratio: 0}\n", "prune.ratio"),
        ("prune: {scope: layerwise}\n", "'global' or 'uniform'"),
        ("prune: {watch_ratios: [0.3, 1.2]}\n", "watch_ratios"),
        ("train: {epochs: 10, milestones: [5, 20]}\n", "milestones [20]"),
        ("data: {name: mnist}\n", "data.name"),
        ("base: no_such_recipe\n", "unknown recipe 'no_such_recipe'"),
    ],
)
def test_bad_recipes_get_one_line_errors(tmp_path, text: str, expected: str) -> None:
    with pytest.raises(UserError) as info:
        load_recipe(_write(tmp_path, text))
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_unknown_recipe_and_missing_file() -> None:
    with pytest.raises(UserError, match="shipped recipes: .*quickstart"):
        load_recipe("no_such_recipe")
    with pytest.raises(UserError, match="does not exist"):
        load_recipe("/nonexistent/recipe.yaml")


def test_bad_override_syntax() -> None:
    with pytest.raises(UserError, match="expected KEY=VALUE"):
        load_recipe("quickstart", ["train.lr"])
    with pytest.raises(UserError, match="unknown key 'train.lrr'"):
        load_recipe("quickstart", ["train.lrr=1"])


def test_resolved_recipe_round_trips_through_yaml(tmp_path) -> None:
    recipe = load_recipe("vgg16_cifar10_p70", ["seed=3"])
    path = tmp_path / "resolved.yaml"
    path.write_text(recipe.to_yaml())
    again = load_recipe(str(path))
    assert again.to_dict() | {"name": recipe.name} == recipe.to_dict()


def test_docs_list_every_recipe_field() -> None:
    from pathlib import Path

    from pydantic import BaseModel

    doc = (Path(__file__).parents[1] / "docs" / "recipes.md").read_text()

    def fields(model: type[BaseModel], prefix: str = ""):
        for name, info in model.model_fields.items():
            ann = info.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                yield from fields(ann, f"{prefix}{name}.")
            else:
                yield f"{prefix}{name}"

    missing = [f for f in fields(Recipe) if f"| `{f}` |" not in doc]
    assert not missing, f"docs/recipes.md lacks {missing}"


@pytest.mark.parametrize("text", ["", "\n# only a comment\n", "null\n", "~\n"])
def test_an_empty_recipe_is_refused_with_a_way_to_start(tmp_path, text) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match="the recipe is empty; start from a shipped recipe") as err:
        load_recipe(str(path))
    assert "base: quickstart" in str(err.value) and str(path) in str(err.value)


def test_normalisation_in_0_255_units_is_refused() -> None:
    with pytest.raises(UserError, match=r"data.*mean \[123.7, 116.3, 103.5\] must be in 0..1"):
        load_recipe("quickstart", ["data.mean=[123.7,116.3,103.5]"])
    assert load_recipe("quickstart", ["data.std=[0.5]"]).data.std == [0.5]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("prune.method=magic", "prune.method: Value error, method 'magic' is not one of eb, ns,"),
        ("train.precision=int4", "train.precision: Value error, precision 'int4' is not one of"),
        ("retrain.precision=fp8", "retrain.precision: Value error, precision 'fp8' is not one"),
        ("data.name=mnist", "data.name: Value error, data set 'mnist' is not one of digits,"),
        ("export.formats=[onnx,tflite]", "export.formats.1: Value error, export format 'tflite'"),
    ],
)
def test_registered_names_are_checked_against_their_registries(override, expected) -> None:
    with pytest.raises(UserError) as info:
        load_recipe("quickstart", [override])
    assert expected in str(info.value)


def test_timm_optimizers_and_schedules_are_recipe_fields() -> None:
    r = load_recipe(
        "quickstart",
        [
            "train.optimizer=adamw",
            "train.optimizer_kwargs.betas=[0.9,0.99]",
            "train.lr=0.002",
            "train.schedule=cosine",
            "train.warmup_epochs=2",
            "train.min_lr=1e-5",
        ],
    )
    t = r.train
    assert (t.optimizer, t.optimizer_kwargs, t.schedule, t.warmup_epochs) == (
        "adamw", {"betas": [0.9, 0.99]}, "cosine", 2,
    )  # fmt: skip
    defaults = Recipe().train  # the paper's optimiser and schedule
    assert (defaults.optimizer, defaults.optimizer_kwargs, defaults.filter_bias_and_bn) == (
        "sgd", {}, False,
    )  # fmt: skip
    assert (defaults.warmup_epochs, defaults.min_lr, defaults.decay_epochs) == (0, 0.0, None)
    assert load_recipe("quickstart", ["train.schedule=step", "train.decay_epochs=10"]).train


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["train.optimizer=adamx"], "train.optimizer: Value error, 'adamx' is not in timm's "
         "optimizer registry: adabelief, adadelta"),
        (["train.optimizer=adahessian"], "'adahessian' needs second-order gradients"),
        (["train.optimizer=adamw", "train.optimizer_kwargs={betaz: 1}"],
         "optimizer_kwargs ['betaz']: adamw takes lr, betas, eps, weight_decay, amsgrad"),
        (["train.optimizer_kwargs={lr: 1}"], "optimizer_kwargs ['lr']: set train.lr instead"),
        (["train.optimizer=adamw", "train.nesterov=true"], "nesterov applies to optimizer sgd"),
        (["train.schedule=plateau"], "train.schedule: Input should be 'multistep', 'step',"),
        (["train.schedule=step"], "schedule step multiplies the lr by gamma every decay_epochs"),
        (["train.warmup_epochs=30"], "warmup_epochs=30 must be < epochs=30"),
    ],
)  # fmt: skip
def test_optimizer_and_schedule_mistakes_get_one_line_errors(overrides, expected) -> None:
    with pytest.raises(UserError) as info:
        load_recipe("quickstart", overrides)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_each_method_with_options_brings_its_own_section_from_the_catalogue() -> None:
    from ebcompress.methods.catalog import METHODS
    from ebcompress.recipe import PruneConfig

    owned = {key: info.options for key, info in METHODS.items() if info.options is not None}
    assert set(owned) == {"lt", "snip", "thinet"}
    for key, options in owned.items():
        assert PruneConfig.model_fields[key].annotation is options
        assert getattr(PruneConfig(), key) == options()
    recipe = load_recipe("quickstart", ["prune.lt.rewind_epoch=2", "prune.snip.batches=1"])
    assert (recipe.prune.lt.rewind_epoch, recipe.prune.snip.batches) == (2, 1)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("prune.lt.rewind=2", "unknown key 'prune.lt.rewind'; allowed here: granularity, rewind"),
        ("prune.snip.granularity=block", "prune.snip.granularity"),
        ("prune.thinet.samples=4", "prune.thinet.samples"),
        ("prune.ns.anything=1", "unknown key 'prune.ns'"),  # ns has no options of its own
    ],
)
def test_method_options_reject_unknown_keys_and_bad_values(override, expected) -> None:
    with pytest.raises(UserError, match=expected):
        load_recipe("quickstart", [override])


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("prune.min_keep=0", "prune.min_keep: Value error, min_keep=0 must be >= 1"),
        ("prune.max_group_ratio=1.5", "prune.max_group_ratio: Value error, max_group_ratio=1.5"),
        ("prune.round_to=0", "prune.round_to: Value error, round_to=0 must be >= 1"),
    ],
)
def test_draw_options_are_checked_by_draw_options_itself(override, expected) -> None:
    with pytest.raises(UserError) as info:
        load_recipe("quickstart", [override])
    assert expected in str(info.value)


def test_the_prune_section_builds_the_draw_options() -> None:
    from ebcompress.channels.draw_options import DrawOptions

    prune = load_recipe("quickstart", ["prune.scope=uniform", "prune.round_to=8"]).prune
    assert prune.draw_options() == DrawOptions(scope="uniform", round_to=8)
    assert Recipe().prune.draw_options() == DrawOptions()  # the defaults are DrawOptions' own


_NO_WATCH = "prune.watch_ratios=[]"  # the quickstart watches 0.5 and 0.7 besides its ratio


def test_a_budget_field_becomes_the_draw_options_budget() -> None:
    from ebcompress.channels.draw_options import Budget, DrawOptions

    prune = load_recipe("quickstart", [_NO_WATCH, "prune.target_macs=0.5"]).prune
    assert prune.draw_options() == DrawOptions(budget=Budget(0.5, "macs"))
    prune = load_recipe("quickstart", [_NO_WATCH, "prune.target_params=0.25"]).prune
    assert prune.draw_options().budget == Budget(0.25, "params")
    assert load_recipe("quickstart").prune.draw_options().budget is None


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["prune.target_macs=1.2"], "prune.target_macs: Value error, target_macs=1.2 must be"),
        (["prune.target_params=0"], "prune.target_params: Value error, target_params=0"),
        (
            ["prune.target_macs=0.5", "prune.target_params=0.5"],
            "target_macs=0.5 and target_params=0.5: a ticket meets one budget; set one of them",
        ),
        (["prune.target_macs=0.5"], "watch_ratios [0.5, 0.7]: with target_macs the ticket is"),
        (
            ["prune.method=lt", "prune.lt.granularity=unstructured", "prune.target_macs=0.5"],
            "target_macs slims channels; lt.granularity 'unstructured' masks weights",
        ),
    ],
)
def test_budget_mistakes_are_one_line_user_errors(overrides, expected) -> None:
    with pytest.raises(UserError) as info:
        load_recipe("quickstart", [*([] if "watch" in expected else [_NO_WATCH]), *overrides])
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_a_resolved_recipe_written_before_the_registries_loads_the_same() -> None:
    # recipe.yaml of a run written by the previous version (its prune section in full)
    written = load_recipe("vgg16_cifar10_p30").to_dict()
    old_prune = {
        "method": "eb", "ratio": 0.3, "watch_ratios": [], "scope": "global", "sparsity": 0.0001,
        "epsilon": 0.1, "window": 5, "max_search_epochs": None, "min_search_epochs": 0,
        "learning_margin": 0.2, "min_keep": 1, "max_group_ratio": 1.0, "round_to": None,
        "lt": {"granularity": "channel", "rewind_epoch": 0},
        "snip": {"granularity": "channel", "batches": 4},
        "thinet": {"samples": 256, "positions_per_sample": 8},
    }  # fmt: skip
    # fields added since (target_macs, target_params, ...) sit at defaults that change nothing
    added = {key: value for key, value in written["prune"].items() if key not in old_prune}
    assert {"target_macs", "target_params"} <= set(added) and set(added.values()) == {None}
    assert written["prune"] == {**old_prune, **added}
    assert [key for key in written["prune"] if key not in added] == list(old_prune)
    assert validate_recipe({**written, "prune": old_prune}).to_dict() == written


@pytest.mark.parametrize("method", ["ns", "lt", "thinet"])
def test_dense_epochs_sets_the_dense_training_of_the_methods_that_have_one(method) -> None:
    recipe = load_recipe("quickstart", [f"prune.method={method}", "prune.dense_epochs=0"])
    assert recipe.prune.dense_epochs == 0
    assert load_recipe("quickstart", [f"prune.method={method}"]).prune.dense_epochs is None


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["prune.dense_epochs=0"], "dense_epochs sets the dense training of ns, lt, thinet;"),
        (["prune.method=snip", "prune.dense_epochs=3"], "method 'snip' has none"),
        (["prune.method=ns", "prune.dense_epochs=-1"], "prune.dense_epochs: Input should be"),
        ([f"model.init_sha256={'a' * 64}"], "init_sha256 pins the checksum of model.init"),
        (["model.init=w.pt", "model.init_sha256=ABC"], "model.init_sha256: String should match"),
        (["model.kwargs={init: w.pt}"], "kwargs ['init']: the starting weights are model.init"),
        (["model.init=''"], "model.init: String should have at least 1 character"),
    ],
)
def test_starting_weight_mistakes_are_one_line_user_errors(overrides, expected) -> None:
    with pytest.raises(UserError) as info:
        load_recipe("quickstart", overrides)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_model_init_is_a_path_and_its_checksum_optional() -> None:
    recipe = load_recipe("quickstart", ["model.init=weights/resnet.safetensors"])
    assert (recipe.model.init, recipe.model.init_sha256) == ("weights/resnet.safetensors", None)
    assert load_recipe("quickstart").model.init is None
