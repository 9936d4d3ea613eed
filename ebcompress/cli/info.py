"""``ebcompress recipes`` and ``ebcompress flops``: look before you train."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from ebcompress.cli.app import app
from ebcompress.errors import UserError


@app.command()
def recipes() -> None:
    """List the shipped recipes."""
    from ebcompress.recipe import load_recipe, shipped_recipes

    table = Table(title="ebcompress recipes (use: ebcompress prune --recipe NAME)")
    table.add_column("name", no_wrap=True)
    for column in ("model", "data", "epochs", "ratio", "description"):
        table.add_column(column)
    for name in shipped_recipes():
        r = load_recipe(name)
        table.add_row(
            name,
            r.model.name,
            r.data.name,
            str(r.train.epochs),
            f"{r.prune.ratio:g}",
            r.description,
        )
    Console().print(table)


@app.command()
def flops(
    model: str = typer.Argument(
        ..., help="vgg16_cifar | timm:resnet50 | tv:resnet18 | a timm name"
    ),
    input_size: tuple[int, int, int] = typer.Option((3, 224, 224), help="C H W of one sample"),
    num_classes: int = typer.Option(1000, min=1),
    epochs: int | None = typer.Option(None, min=1, help="dense epochs, for training FLOPs"),
    samples: int | None = typer.Option(None, min=1, help="training samples per epoch"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """Forward MACs, FLOPs (= 2 x MACs) and params; training FLOPs of a dense schedule."""
    from ebcompress.cost.flops import count_flops, training_flops
    from ebcompress.models import build_model

    if (epochs is None) != (samples is None):
        raise UserError("give both --epochs and --samples for training FLOPs, or neither")
    net = build_model(model, num_classes=num_classes, in_chans=input_size[0])
    cost = count_flops(net, input_size)
    out = {"model": model, "input_size": list(input_size), **cost.to_dict()}
    if epochs is not None and samples is not None:
        out.update(
            epochs=epochs,
            samples=samples,
            training_flops=training_flops(cost.macs, samples, epochs),
        )
    if as_json:
        print(json.dumps(out))
        return
    table = Table(title=f"{model} at {'x'.join(map(str, input_size))}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for key in ("macs", "flops", "params", "training_flops"):
        if key in out:
            table.add_row(key, f"{out[key]:,}")
    Console().print(table)
