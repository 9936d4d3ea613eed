import io
import json

import numpy as np
import pytest
import torch
from torch import nn

from ebcompress.channels.draw_options import DrawOptions
from ebcompress.channels.ticket import Ticket, mask_distance, structure_fingerprint
from ebcompress.earlybird.detector import EarlyBird
from ebcompress.earlybird.mask_history import MaskHistory
from ebcompress.errors import UserError

WIDTHS = {"a": 24, "b": 16}  # 40 channels: moving one kept channel is a distance of 0.05
N = sum(WIDTHS.values())


def _mask(kept: list[int]) -> np.ndarray:
    out = np.zeros(N, dtype=bool)
    out[kept] = True
    return out


def _moved(steps: int) -> np.ndarray:
    """STABLE with its last ``steps`` kept channels moved to the first pruned ones."""
    return _mask([*range(28 - steps), *range(28, 28 + steps)])


STABLE = _mask(list(range(28)))  # ratio 0.3: 28 of 40 kept
NEAR = _moved(1)  # distance 0.05 from STABLE
TWO_OFF = _moved(2)  # distance 0.1 = epsilon: not below it
FAR = _mask(list(range(12, 40)))  # distance 0.6 from STABLE


class ScriptedGraph:
    """Stands in for ChannelGraph: draw() hands out the next scripted mask of each ratio."""

    def __init__(self, script: dict[float, list[np.ndarray]], widths: dict[str, int] = WIDTHS):
        self.widths = dict(widths)
        self.fingerprint = structure_fingerprint(self.widths)
        self._script = {ratio: iter(masks) for ratio, masks in script.items()}
        self.draws: list[dict] = []
        self.zero_init_bns: tuple[str, ...] = ()

    def exclude_from_importance(self, bn_names) -> None:
        self.zero_init_bns = tuple(bn_names)

    def bn_modules(self) -> list[nn.BatchNorm2d]:
        return []

    def draw(self, ratio, options=None, **keywords) -> Ticket:
        self.draws.append({"ratio": ratio, "options": options, **keywords})
        mask = next(self._script[ratio])
        return Ticket.from_mask(mask, self.widths, ratio=ratio, epoch=keywords["epoch"])


def _bird(script, ratio=0.3, **options) -> EarlyBird:
    return EarlyBird(nn.Identity(), torch.zeros(1), ratio, graph=ScriptedGraph(script), **options)


def _decisions(bird: EarlyBird, epochs: int) -> list[bool]:
    return [bird.step() for _ in range(epochs)]


# ---------------------------------------------------------------------- MaskHistory
def test_distance_matrix_on_hand_made_masks():
    history = MaskHistory()
    for epoch, kept in enumerate([[0, 1, 2, 3], [0, 1, 2, 4], [5, 6, 7, 8]], start=1):
        history.append(0.5, epoch, _mask(kept))
    distances = history.distance_matrix(0.5)
    expected = np.array([[0, 2, 8], [2, 0, 8], [8, 8, 0]]) / N
    np.testing.assert_allclose(distances, expected, rtol=0, atol=1e-12)
    assert np.array_equal(distances, distances.T)
    assert np.all(np.diag(distances) == 0)


def test_distance_matrix_matches_mask_distance_on_odd_sizes():
    rng = np.random.default_rng(0)
    history = MaskHistory()
    masks = rng.random((9, 37)) < 0.6  # 37 bits: the packed rows carry padding
    for epoch, mask in enumerate(masks):
        history.append(0.3, epoch, mask)
    distances = history.distance_matrix(0.3)
    for i in range(9):
        for j in range(9):
            assert distances[i, j] == pytest.approx(mask_distance(masks[i], masks[j]), abs=1e-12)
        assert np.array_equal(history.mask(0.3, i), masks[i])


def test_window_distances_are_none_until_the_fifo_is_full():
    history = MaskHistory(window=3)
    for epoch, mask in enumerate([FAR, STABLE, NEAR, STABLE, STABLE], start=1):
        history.append(0.3, epoch, mask)
    assert history.window_max_distances(0.3) == pytest.approx([None, None, 0.6, 0.05, 0.05])
    assert history.latest_window_max(0.3) == pytest.approx(0.05)
    history.append(0.3, 6, STABLE)
    assert history.latest_window_max(0.3) == 0.0 == history.window_max_distances(0.3)[-1]


def test_history_rejects_repeated_epochs_and_other_widths():
    history = MaskHistory()
    history.append(0.3, 4, STABLE)
    with pytest.raises(UserError, match="not after the last recorded epoch 4"):
        history.append(0.3, 4, STABLE)
    with pytest.raises(ValueError, match="channels"):
        history.append(0.5, 5, np.ones(N + 1, dtype=bool))
    with pytest.raises(UserError, match="window"):
        MaskHistory(window=1)


def test_history_save_load_round_trip(tmp_path):
    history = MaskHistory(window=4)
    for epoch, mask in enumerate([FAR, STABLE, NEAR], start=3):
        history.append(0.3, epoch, mask)
        history.append(0.7, epoch, ~mask)
    history.save(tmp_path / "masks")
    files = sorted(p.name for p in (tmp_path / "masks").iterdir())
    assert files == [
        "distances_p0.3.npy",
        "distances_p0.7.npy",
        "history.json",
        "masks_p0.3.npy",
        "masks_p0.7.npy",
    ]
    packed = np.load(tmp_path / "masks" / "masks_p0.3.npy")
    assert packed.dtype == np.uint8 and packed.shape == (3, (N + 7) // 8)
    saved = np.load(tmp_path / "masks" / "distances_p0.7.npy")
    np.testing.assert_allclose(saved, history.distance_matrix(0.7), atol=1e-7)

    loaded = MaskHistory.load(tmp_path / "masks")
    assert loaded.window == 4 and loaded.ratios == [0.3, 0.7]
    assert loaded.epochs(0.7) == [3, 4, 5]
    assert np.array_equal(loaded.mask(0.7, 4), ~STABLE)
    assert np.array_equal(loaded.distance_matrix(0.3), history.distance_matrix(0.3))


def test_history_load_reports_missing_or_tampered_files(tmp_path):
    with pytest.raises(UserError, match="no history.json"):
        MaskHistory.load(tmp_path)
    history = MaskHistory()
    history.append(0.3, 1, STABLE)
    history.save(tmp_path)
    np.save(tmp_path / "masks_p0.3.npy", np.zeros((2, 3), dtype=np.uint8))
    with pytest.raises(UserError, match="expected uint8"):
        MaskHistory.load(tmp_path)
    (tmp_path / "history.json").write_text("{not json")
    with pytest.raises(UserError, match="unreadable"):
        MaskHistory.load(tmp_path)


# ---------------------------------------------------------------------- emergence
def test_not_emerged_until_the_window_is_full():
    bird = _bird({0.3: [STABLE] * 7})
    assert _decisions(bird, 7) == [False, False, False, False, True, True, True]
    assert bird.emerged_epoch == {0.3: 5}
    assert bird.ticket.epoch == 5
    assert np.array_equal(bird.ticket.mask(), STABLE)
    assert bird.ticket.extra["earlybird"] == {
        "epsilon": 0.1,
        "window": 5,
        "window_max": 0.0,
        "learning_checked": False,
        "learned_epoch": None,
    }


def test_emerges_at_the_exact_epoch_small_drift_allowed():
    bird = _bird({0.3: [FAR, STABLE, STABLE, NEAR, STABLE, STABLE]})
    assert _decisions(bird, 6) == [False] * 5 + [True]
    assert bird.emerged_epoch[0.3] == 6
    assert bird.window_distance() == pytest.approx(0.05)


def test_a_distance_equal_to_epsilon_does_not_pass():
    bird = _bird({0.3: [FAR, STABLE, STABLE, TWO_OFF] + [STABLE] * 5})
    assert _decisions(bird, 9) == [False] * 8 + [True]
    assert bird.history.window_max_distances(0.3)[4:] == pytest.approx([0.6, 0.1, 0.1, 0.1, 0.0])


def test_newest_is_compared_with_every_older_mask_not_just_its_neighbour():
    # Each epoch moves one more channel: consecutive distances are all 0.05 (the paper's
    # Algorithm 1 FIFO would pass), but the newest mask drifts 0.2 from the oldest in the window.
    bird = _bird({0.3: [_moved(k) for k in range(8)]})
    assert _decisions(bird, 8) == [False] * 8
    assert bird.history.window_max_distances(0.3)[4:] == pytest.approx([0.2] * 4)


def test_one_outlier_resets_the_window():
    script = [STABLE] * 4 + [FAR] + [STABLE] * 6
    bird = _bird({0.3: script})
    assert _decisions(bird, 11) == [False] * 9 + [True, True]
    assert bird.emerged_epoch[0.3] == 10


def test_emergence_is_final_and_later_masks_are_still_recorded():
    bird = _bird({0.3: [STABLE] * 5 + [FAR] * 3}, window=5)
    assert _decisions(bird, 8) == [False] * 4 + [True] * 4
    assert np.array_equal(bird.ticket.mask(), STABLE) and bird.ticket.epoch == 5
    assert bird.history.epochs(0.3) == list(range(1, 9))
    assert np.array_equal(bird.latest_ticket().mask(), FAR)
    assert bird.window_distance() == pytest.approx(0.6)


def test_several_ratios_at_once_primary_decides():
    script = {0.5: [FAR] + [STABLE] * 9, 0.3: [FAR, STABLE, FAR, STABLE, FAR] + [NEAR] * 5}
    bird = _bird(script, ratio=[0.5, 0.3], window=3)
    decisions = _decisions(bird, 10)
    assert bird.emerged_epoch == {0.5: 4, 0.3: 8}
    assert decisions == [False, False, False, True, True, True, True, True, True, True]
    assert bird.ticket is bird.tickets[0.5]
    assert bird.tickets[0.3].epoch == 8 and np.array_equal(bird.tickets[0.3].mask(), NEAR)
    assert bird.history.ratios == [0.5, 0.3]

    secondary_first = _bird(script, ratio=[0.3, 0.5], window=3)
    assert _decisions(secondary_first, 10) == [False] * 7 + [True] * 3


def test_step_draws_every_ratio_with_the_detector_options():
    graph = ScriptedGraph({0.3: [STABLE] * 2, 0.7: [FAR] * 2})
    bird = EarlyBird(
        nn.Identity(), torch.zeros(1), [0.3, 0.7], graph=graph, scope="uniform",
        min_keep=2, round_to=4, model_name="toy",
    )  # fmt: skip
    bird.step(10)
    assert [d["ratio"] for d in graph.draws] == [0.3, 0.7]
    for draw in graph.draws:
        assert "importance" not in draw  # an override would rank BN-less groups as "custom"
        assert draw["epoch"] == 10
        assert draw["options"] == DrawOptions(scope="uniform", min_keep=2, round_to=4)
        assert draw["model_name"] == "toy"
    with pytest.raises(UserError, match="after epoch 10"):
        bird.step(10)
    assert bird.step() is False
    assert bird.history.epochs(0.3) == [10, 11]  # a default epoch follows the last recorded one


def test_default_epoch_counts_calls_from_one():
    bird = _bird({0.3: [STABLE] * 3})
    _decisions(bird, 3)
    assert bird.history.epochs(0.3) == [1, 2, 3]
    assert bird.latest_ticket(0.3).epoch == 3


def test_lookups_and_arguments_fail_with_user_errors():
    bird = _bird({0.3: [STABLE]})
    assert bird.ticket is None
    with pytest.raises(UserError, match="no mask drawn yet"):
        bird.latest_ticket()
    with pytest.raises(UserError, match="not watched"):
        bird.latest_ticket(0.5)
    for bad in [0.0, 1.0, [], [0.3, 0.3]]:
        with pytest.raises(UserError, match="ratio"):
            _bird({0.3: []}, ratio=bad)
    with pytest.raises(UserError, match="epsilon"):
        _bird({0.3: []}, epsilon=0)
    with pytest.raises(UserError, match="window"):
        _bird({0.3: []}, window=1)
    with pytest.raises(UserError, match="scope"):
        _bird({0.3: []}, scope="layer")
    with pytest.raises(UserError, match="min_keep=0"):
        _bird({0.3: []}, min_keep=0)


def test_engine_callback_protocol():
    bird = _bird({0.3: [STABLE] * 2}, window=2)
    assert bird.end_of_epoch(0, {"loss": 1.0}) is False
    assert bird.end_of_epoch(1, {"loss": 1.0}) is True
    assert bird.emerged_epoch[0.3] == 1


# ---------------------------------------------------------------------- guards
def test_no_ticket_while_the_network_sits_at_chance():
    bird = _bird({0.3: [STABLE] * 12}, num_classes=10)
    at_chance = [bird.step(train_top1=0.11, train_loss=2.31) for _ in range(6)]
    assert at_chance == [False] * 6 and not bird.learned
    learning = [bird.step(train_top1=0.6, train_loss=1.2) for _ in range(6)]
    # learned at epoch 7; the window must hold 5 masks drawn from then on: epoch 11
    assert bird.learning.learned_epoch == 7
    assert learning == [False] * 4 + [True, True]
    assert bird.emerged_epoch == {0.3: 11}
    provenance = bird.ticket.extra["earlybird"]
    assert provenance["learning_checked"] and provenance["learned_epoch"] == 7


def test_the_loss_alone_decides_when_no_accuracy_is_given():
    bird = _bird({0.3: [STABLE] * 8}, window=2, num_classes=10)  # needs loss <= 0.8 ln 10
    assert [bird.step(train_loss=loss) for loss in (2.4, 2.2, 1.9)] == [False] * 3
    assert bird.step(train_loss=1.7) is False  # learned now; the window needs 2 such masks
    assert bird.step(train_loss=1.5) is True and bird.learning.learned_epoch == 4


def test_the_learning_threshold_follows_the_chance_level():
    bird = _bird({0.3: [STABLE] * 4}, window=2, chance=0.5)  # a majority class of 50 %
    assert bird.learning.top1_needed == pytest.approx(0.6)
    assert [bird.step(train_top1=0.55) for _ in range(2)] == [False, False]
    assert [bird.step(train_top1=0.65) for _ in range(2)] == [False, True]


def test_without_metrics_emergence_is_allowed_but_warned():
    bird = _bird({0.3: [STABLE] * 2}, window=2)
    bird.step()
    with pytest.warns(UserWarning, match="without a check that the network learned"):
        assert bird.step() is True


def test_a_percentage_or_an_unjudgeable_top1_is_a_user_error():
    bird = _bird({0.3: [STABLE] * 2}, window=2, num_classes=10)
    with pytest.raises(UserError, match=r"train_top1=12.0 must be a fraction"):
        bird.step(train_top1=12.0)
    blind = _bird({0.3: [STABLE] * 2}, window=2)  # nn.Identity: no logits, no chance level
    with pytest.raises(UserError, match="pass num_classes= or chance="):
        blind.step(train_top1=0.9)
    assert blind.step(train_loss=2.0) is False  # the loss criterion still works


def test_min_search_epochs_holds_emergence_back():
    bird = _bird({0.3: [STABLE] * 8}, window=2, min_search_epochs=6)
    assert _decisions(bird, 8) == [False] * 5 + [True] * 3
    assert bird.emerged_epoch[0.3] == 6


def test_the_class_count_is_read_from_the_model_output():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(7))
    model(torch.zeros(2, 3, 6, 6))
    bird = EarlyBird(model, torch.zeros(1, 3, 6, 6), 0.25)
    assert bird.learning.chance == pytest.approx(1 / 7)
    assert bird.learning.num_classes is None  # no ln(7) loss reference from a guess
    assert model.training  # the probing forward ran in eval mode and restored the flags


def test_zero_initialised_scales_are_left_alone_and_recorded():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8)
    )
    model.append(nn.Flatten())
    model.append(nn.Linear(8 * 2 * 2, 3))
    nn.init.zeros_(model[4].weight)
    bird = EarlyBird(model, torch.zeros(1, 3, 6, 6), 0.25, window=2)
    assert not model[4].weight.any()  # the model trains as the user built it
    bird.step()
    # its group has no other BN to be ranked by, so it is counted, and not claimed otherwise
    assert bird.latest_ticket().zero_init_bns == ()


def test_learning_state_survives_resume():
    script = {0.3: [STABLE] * 10}
    bird = _bird(script, window=2, num_classes=10)
    for top1 in (0.1, 0.5, 0.5):
        bird.step(train_top1=top1)
    resumed = _bird({0.3: [STABLE] * 10}, window=2, num_classes=10)
    resumed.load_state_dict(_through_torch_save(bird.state_dict()))
    assert resumed.learning == bird.learning and resumed.learning.learned_epoch == 2


def test_a_state_from_before_the_guard_resumes_unguarded():
    bird = _bird({0.3: [STABLE] * 6}, window=2, num_classes=10)
    bird.step()
    state = bird.state_dict()
    del state["learning"], state["unguarded"], state["zero_init_bns"]
    resumed = _bird({0.3: [STABLE] * 6}, window=2, num_classes=10)
    resumed.load_state_dict(state)
    assert resumed.step(train_top1=0.05) is True  # as it would have before the guard existed


def test_the_searchs_left_out_batchnorms_survive_resume():
    bird = _bird({0.3: [STABLE] * 2}, window=2)
    bird.graph.zero_init_bns = ("layer1.0.bn2",)
    resumed = _bird({0.3: [STABLE] * 2}, window=2)
    resumed.load_state_dict(bird.state_dict())
    assert resumed.graph.zero_init_bns == ("layer1.0.bn2",)


# ---------------------------------------------------------------------- resume
def _through_torch_save(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("split", [3, 6, 9])
def test_state_dict_round_trip_gives_the_same_decisions(split):
    script = {
        0.3: [FAR, STABLE, STABLE, NEAR, FAR] + [STABLE] * 7,
        0.7: [STABLE] * 5 + [FAR] + [NEAR] * 6,
    }
    reference = _bird(script, ratio=[0.3, 0.7])
    expected = _decisions(reference, 12)

    first = _bird({r: m[:split] for r, m in script.items()}, ratio=[0.3, 0.7])
    decisions = _decisions(first, split)
    state = _through_torch_save(first.state_dict())
    resumed = _bird({r: m[split:] for r, m in script.items()}, ratio=[0.3, 0.7])
    resumed.load_state_dict(state)
    decisions += _decisions(resumed, 12 - split)

    assert decisions == expected
    assert resumed.emerged_epoch == reference.emerged_epoch == {0.3: 10, 0.7: 5}
    assert resumed.tickets == reference.tickets
    assert resumed.latest_ticket(0.7) == reference.latest_ticket(0.7)
    np.testing.assert_array_equal(
        resumed.history.distance_matrix(0.3), reference.history.distance_matrix(0.3)
    )


def test_state_is_plain_data_and_json_friendly_apart_from_tensors():
    bird = _bird({0.3: [STABLE] * 5}, window=2)
    _decisions(bird, 5)
    state = bird.state_dict()
    assert json.loads(json.dumps(state["emerged"]))[0]["epoch"] == 2
    assert isinstance(state["history"]["ratios"][0]["packed"], torch.Tensor)


def test_load_state_dict_refuses_another_network_or_ratios():
    bird = _bird({0.3: [STABLE] * 2})
    _decisions(bird, 2)
    state = bird.state_dict()
    other_net = EarlyBird(
        nn.Identity(), torch.zeros(1), graph=ScriptedGraph({0.3: []}, widths={"a": 20})
    )
    with pytest.raises(UserError, match="different network"):
        other_net.load_state_dict(state)
    with pytest.raises(UserError, match="watches ratios"):
        _bird({0.5: []}, ratio=0.5).load_state_dict(state)
    with pytest.raises(UserError, match="window"):
        _bird({0.3: []}, window=3).load_state_dict(state)
    with pytest.raises(UserError, match="not a valid"):
        _bird({0.3: []}).load_state_dict({"format": 1})


# ---------------------------------------------------------------------- end to end
def _tiny_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 4),
    )


def _train(model: nn.Module, bird: EarlyBird | None, epochs: int) -> list[bool]:
    generator = torch.Generator().manual_seed(1)
    data = [
        (
            torch.randn(8, 3, 12, 12, generator=generator),
            torch.randint(0, 4, (8,), generator=generator),
        )
        for _ in range(4)
    ]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    decisions = []
    for epoch in range(1, epochs + 1):
        for x, y in data:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            if bird is not None:
                bird.regularize()
            optimizer.step()
        if bird is not None:
            decisions.append(bird.step(epoch))
    return decisions


@pytest.mark.slow  # ~0.5 s of training, but the first optimizer imports torch._dynamo (~5 s)
def test_end_to_end_on_a_tiny_conv_bn_net():
    torch.manual_seed(0)
    model = _tiny_net()
    with torch.no_grad():
        for module in model:
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.0)  # distinct scales: the first mask is meaningful
    plain = _tiny_net()
    plain.load_state_dict(model.state_dict())

    bird = EarlyBird(model, torch.zeros(1, 3, 12, 12), [0.25, 0.5], sparsity=5e-3, window=3)
    assert bird.graph.widths == {"0": 8, "3": 16}
    assert bird.graph.bn_modules() == [model[1], model[4]]
    decisions = _train(model, bird, epochs=6)
    _train(plain, None, epochs=6)

    regularised = torch.cat([m.weight.abs() for m in model if isinstance(m, nn.BatchNorm2d)])
    unregularised = torch.cat([m.weight.abs() for m in plain if isinstance(m, nn.BatchNorm2d)])
    assert regularised.sum() < unregularised.sum() - 0.05
    assert (regularised < unregularised).float().mean() > 0.9

    assert len(decisions) == 6 and bird.history.epochs(0.5) == list(range(1, 7))
    for ratio in (0.25, 0.5):
        ticket = bird.latest_ticket(ratio)
        assert ticket.pruned_fraction == ratio and ticket.num_channels == 24
    assert decisions[-1] == (bird.ticket is not None)
    if bird.ticket is not None:
        assert bird.ticket.pruned_fraction == 0.25
