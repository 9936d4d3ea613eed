"""The public Python API in a user's own training loop, as the README shows it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import ebcompress as eb
from ebcompress.data import fake_data


def test_earlybird_in_a_hand_written_loop_then_slim_export_and_load(tmp_path) -> None:
    torch.manual_seed(0)
    data = fake_data(image_size=16, n_train=128, n_test=32)
    model = eb.build_model("vgg11_cifar", num_classes=10, width_mult=0.25)
    bird = eb.EarlyBird(model, example_inputs=torch.randn(1, 3, 16, 16), ratio=0.3, window=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader = torch.utils.data.DataLoader(data.train, batch_size=32, shuffle=True)
    for _ in range(6):
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            bird.regularize()
            opt.step()
        if bird.step():
            break
    ticket = bird.ticket or bird.latest_ticket()
    assert abs(ticket.pruned_fraction - 0.3) < 0.01
    slim = eb.slim(model, ticket)  # the input shape comes from the ticket
    masked = eb.masked_equivalent(model, ticket)
    x = torch.randn(4, 3, 16, 16)
    slim.eval()
    masked.eval()
    with torch.no_grad():
        assert (slim(x) - masked(x)).abs().max() < 1e-5
    assert eb.count_flops(slim, (3, 16, 16)).macs < eb.count_flops(model, (3, 16, 16)).macs

    spec = eb.ModelSpec(
        arch="vgg11_cifar",
        build_kwargs={"width_mult": 0.25},
        num_classes=10,
        in_chans=3,
        input_size=(3, 16, 16),
        mean=data.mean,
        std=data.std,
    )
    path = eb.export(slim, tmp_path / "bundle", spec=spec, ticket=ticket)
    loaded = eb.load(path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), slim(x))
    assert eb.Ticket.from_dict(ticket.to_dict()) == ticket
