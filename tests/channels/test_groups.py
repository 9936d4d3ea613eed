import copy

import pytest
import torch
from torch import nn

from ebcompress.channels.groups import clone_module, trace_channel_groups
from ebcompress.models import build_model

X = torch.randn(2, 3, 8, 8)


class CachesInEval(nn.Module):
    """Like timm's LeViT attention: eval-mode forwards cache a tensor computed from a
    parameter (a non-leaf, which deepcopy refuses) and switching to training clears it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.bias = nn.Parameter(torch.zeros(1, 4, 1, 1))
        self.cache: dict[str, torch.Tensor] = {}
        self.fc = nn.Linear(4, 2)

    def train(self, mode: bool = True) -> "CachesInEval":
        super().train(mode)
        if mode:
            self.cache = {}
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            self.cache.setdefault("bias", self.bias * 2)
        return self.fc((self.bn(self.conv(x)) + self.bias).mean(dim=(2, 3)))


def test_clone_module_copies_a_model_holding_an_eval_cache_and_keeps_its_modes():
    model = CachesInEval().eval()
    model(X)
    with pytest.raises(RuntimeError, match="deepcopy"):
        copy.deepcopy(model)
    clone = clone_module(model)
    assert not clone.training and not clone.bn.training and not model.training
    torch.testing.assert_close(clone(X), model(X))


def test_dense_keeps_a_named_group_out_of_the_handles_with_its_reason():
    model = build_model("vgg11_cifar", num_classes=3, width_mult=0.125).eval()
    x = torch.randn(1, 3, 32, 32)
    names = [h.info.name for h in trace_channel_groups(model, x).handles]
    trace = trace_channel_groups(model, x, dense={names[1]: "because"})
    assert [h.info.name for h in trace.handles] == names[:1] + names[2:]
    assert trace.kept_dense[names[1]] == "because"
