"""Each baseline through the Method protocol on a tiny model: ticket, plan, ledger, exactness."""

import pytest
import torch
from tiny_runs import assert_slim_matches_masked, tiny_recipe, tiny_run

from ebcompress.baselines import LotteryTicket, NetworkSlimming, Snip, ThiNet
from ebcompress.baselines._masks import WeightMaskCallback, prunable_weights
from ebcompress.channels.slim import slim
from ebcompress.errors import UserError
from ebcompress.methods.base import get_method
from ebcompress.methods.catalog import METHODS
from ebcompress.methods.training import build_trainer
from ebcompress.models import build_model


def _removed(ticket) -> int:
    return ticket.num_channels - ticket.num_kept


def _phase_epochs(run) -> dict[str, tuple[int, int]]:
    return {name: (c.epochs, c.macs_per_sample) for name, c in run.ledger.phases.items()}


def test_the_catalogue_lists_the_four_baselines_and_builds_them():
    for key, title, cls in [
        ("ns", "Network slimming", NetworkSlimming),
        ("lt", "Lottery", LotteryTicket),
        ("snip", "SNIP", Snip),
        ("thinet", "ThiNet", ThiNet),
    ]:
        assert METHODS.get(key).title.startswith(title)
        assert type(get_method(key)) is cls
        assert get_method(key) is not get_method(key)  # a fresh one each time: no shared state


def test_network_slimming_trains_the_full_schedule_then_prunes_globally():
    run = tiny_run(tiny_recipe())
    method = get_method("ns")
    outcome = method.search(run)
    ticket = outcome.ticket
    assert outcome.search_epochs == 2 and ticket.epoch == 2
    assert _removed(ticket) == round(0.5 * ticket.num_channels)
    assert ticket.importance == "bn_gamma"
    assert _phase_epochs(run) == {"search": (2, run.dense_macs)}
    plan = method.retrain_plan(run, outcome)
    assert (plan.start_epoch, plan.end_epoch, plan.reinit, plan.start_state) == (0, 2, False, None)
    assert_slim_matches_masked(run.model, ticket, run.example_inputs)


def test_network_slimming_honours_retrain_epochs_and_reinit():
    method = get_method("ns")
    run = tiny_run(tiny_recipe(retrain={"epochs": 1, "mode": "reinit"}))
    plan = method.retrain_plan(run, None)
    assert (plan.start_epoch, plan.end_epoch, plan.reinit) == (0, 1, True)


def test_lottery_ticket_channel_rewinds_the_survivors_to_their_initial_values():
    run = tiny_run(tiny_recipe())
    method = get_method("lt")
    outcome = method.search(run)
    ticket = outcome.ticket
    assert ticket.importance == "weight_l1" and outcome.weight_masks is None
    assert _removed(ticket) == round(0.5 * ticket.num_channels)
    plan = get_method("lt").retrain_plan(run, outcome)  # the outcome is all it needs
    assert (plan.start_epoch, plan.end_epoch, plan.callbacks) == (0, 2, [])
    for name, value in run.initial_state.items():
        assert torch.equal(plan.start_state[name], value), name
    assert_slim_matches_masked(run.model, ticket, run.example_inputs)
    run.model.load_state_dict(plan.start_state)
    slimmed = slim(run.model, ticket, run.example_inputs)
    kept = list(ticket.kept["features.0"])
    init = run.initial_state
    assert torch.equal(slimmed.features[0].weight, init["features.0.weight"][kept])
    assert torch.equal(slimmed.features[1].running_mean, init["features.1.running_mean"][kept])


def test_lottery_ticket_unstructured_masks_the_smallest_trained_weights():
    run = tiny_run(tiny_recipe(prune={"lt": {"granularity": "unstructured"}}))
    method = get_method("lt")
    outcome = method.search(run)
    masks = outcome.weight_masks
    trained = prunable_weights(run.model)
    assert list(masks) == list(trained)
    total = sum(m.numel() for m in masks.values())
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.5 * total)
    threshold = max(float(trained[n].detach().abs()[~m].max()) for n, m in masks.items())
    assert all(float(trained[n].detach().abs()[m].min()) >= threshold for n, m in masks.items())
    assert outcome.ticket.pruned_fraction == 0.0
    assert outcome.extra["weight_sparsity"] == pytest.approx(0.5, abs=1e-3)
    plan = get_method("lt").retrain_plan(run, outcome)  # the outcome is all it needs
    assert isinstance(plan.callbacks[0], WeightMaskCallback)
    for name, mask in masks.items():
        start, init = plan.start_state[name], run.initial_state[name]
        assert torch.equal(start[mask], init[mask]) and bool((start[~mask] == 0).all())


def test_lottery_ticket_rewinds_to_an_early_epoch():
    recipe = tiny_recipe(prune={"lt": {"rewind_epoch": 1}})
    run = tiny_run(recipe)
    method = get_method("lt")
    outcome = method.search(run)
    plan = get_method("lt").retrain_plan(run, outcome)  # the outcome is all it needs
    assert (plan.start_epoch, plan.end_epoch) == (1, 2)
    torch.manual_seed(recipe.seed)  # the same dense model, trained for one epoch only
    twin = build_model(recipe.model.name, run.data.num_classes, 3, **recipe.model.kwargs)
    build_trainer(twin, run.data, recipe, "search", device="cpu", progress=False, end_epoch=1).fit()
    for name, value in twin.state_dict().items():
        assert torch.equal(plan.start_state[name], value), name
    with pytest.raises(UserError, match="rewind_epoch"):
        method.search(tiny_run(tiny_recipe(prune={"lt": {"rewind_epoch": 2}})))


@pytest.mark.parametrize("granularity", ["channel", "unstructured"])
def test_snip_prunes_at_initialisation_without_training(granularity):
    run = tiny_run(tiny_recipe(prune={"snip": {"granularity": granularity}}))
    method = get_method("snip")
    outcome = method.search(run)
    assert outcome.search_epochs == 0 and outcome.ticket.epoch == 0
    assert run.ledger.phases == {}
    for name, value in run.model.state_dict().items():
        assert torch.equal(value, run.initial_state[name]), name  # the probe changed nothing
    plan = get_method("snip").retrain_plan(run, outcome)  # the outcome is all it needs
    assert (plan.start_epoch, plan.end_epoch) == (0, 2)
    if granularity == "channel":
        assert _removed(outcome.ticket) == round(0.5 * outcome.ticket.num_channels)
        assert outcome.ticket.importance == "snip" and plan.callbacks == []
        assert_slim_matches_masked(run.model, outcome.ticket, run.example_inputs)
    else:
        masks = outcome.weight_masks
        total = sum(m.numel() for m in masks.values())
        assert sum(int((~m).sum()) for m in masks.values()) == round(0.5 * total)
        assert outcome.ticket.pruned_fraction == 0.0
        assert isinstance(plan.callbacks[0], WeightMaskCallback)


@pytest.mark.parametrize("ratio", [0.5, 0.7])
@pytest.mark.parametrize("key", ["lt", "snip"])
def test_channel_tickets_prune_every_layer_instead_of_emptying_some(key, ratio):
    # Raw filter sums grow with fan-in, so a global ranking of them cut LT's first five VGG
    # layers (SNIP's last two) to one channel while keeping the rest nearly whole.
    run = tiny_run(tiny_recipe(prune={"ratio": ratio}))
    ticket = get_method(key).search(run).ticket
    assert _removed(ticket) == round(ratio * ticket.num_channels)
    kept = {name: len(ticket.kept[name]) / width for name, width in ticket.widths.items()}
    assert min(kept.values()) >= (1 - ratio) / 3, kept
    assert max(kept.values()) <= 1 - ratio / 3, kept


def test_thinet_prunes_each_layer_uniformly_and_rescales_its_consumer():
    run = tiny_run(tiny_recipe())
    method = get_method("thinet")
    outcome = method.search(run)
    ticket = outcome.ticket
    assert ticket.importance == "thinet" and outcome.search_epochs == 2
    for name, width in ticket.widths.items():
        assert len(ticket.kept[name]) == width - round(0.5 * width), name
    extra = outcome.extra
    assert extra["thinet_groups"] == list(ticket.widths) and extra["l1_fallback_groups"] == []
    for name, errors in extra["relative_reconstruction_error"].items():
        assert errors["rescaled"] <= errors["selected"] + 1e-12, name
    plan = get_method("thinet").retrain_plan(run, outcome)  # the outcome is all it needs
    assert (plan.start_epoch, plan.end_epoch) == (0, 2)
    start = plan.start_state
    removed = ticket.pruned("features.0")
    assert bool((start["features.4.weight"][:, removed] == 0).all())  # consumer columns
    assert_slim_matches_masked(run.model, ticket, run.example_inputs)


def test_thinet_falls_back_to_filter_norms_on_residual_groups():
    run = tiny_run(tiny_recipe(model={"name": "resnet20_cifar", "kwargs": {}}))
    outcome = get_method("thinet").search(run)
    fallback = outcome.extra["l1_fallback_groups"]
    assert fallback == ["conv1", "layer2.0.conv2", "layer3.0.conv2"]
    assert "layer1.0.conv1" in outcome.extra["thinet_groups"]
    for name, width in outcome.ticket.widths.items():
        assert len(outcome.ticket.kept[name]) == width - round(0.5 * width), name
    assert_slim_matches_masked(run.model, outcome.ticket, run.example_inputs)
