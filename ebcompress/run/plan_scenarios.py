"""The rows ``ebcompress plan`` shows (:class:`~ebcompress.cost.forecast.Scenario`): dense
training, network slimming, and EB Train at a few emergence epochs, from the recipe alone."""

from __future__ import annotations

from ebcompress.cost.forecast import Scenario
from ebcompress.errors import UserError
from ebcompress.methods.base import retrain_epochs_after_search
from ebcompress.recipe import Recipe

#: Early-Bird emergence epochs shown, as fractions of train.epochs (the paper's tickets
#: emerge in the first 10-20 % of the schedule), besides prune.max_search_epochs.
EMERGENCE_FRACTIONS = (0.1, 0.2)


def scenarios(recipe: Recipe) -> tuple[list[Scenario], list[str]]:
    """The rows ``ebcompress plan`` shows, and the notes they need."""
    train, prune = recipe.train.epochs, recipe.prune
    retrain = recipe.retrain.epochs or train
    ns_search = train if prune.dense_epochs is None else prune.dense_epochs
    rows = [
        Scenario("dense", "full schedule", {"train": train}),
        Scenario(
            "ns",
            "full schedule + fine-tune",
            {"search": ns_search, "retrain": retrain},
        ),
    ]
    limit = min(prune.max_search_epochs or train, train)
    earliest = min(max(prune.window, prune.min_search_epochs, 1), limit)
    emergence = sorted(
        {min(max(round(f * train), earliest), limit) for f in EMERGENCE_FRACTIONS} | {limit}
    )
    notes = [
        "EB's search lasts until its ticket emerges, which no forecast knows: rows at "
        f"{', '.join(f'{f:.0%}' for f in EMERGENCE_FRACTIONS)} of train.epochs (at least "
        f"prune.window = {prune.window} epochs) and at the limit ({limit} epochs)"
    ]
    for epoch in emergence:
        try:
            start, end = retrain_epochs_after_search(recipe, epoch)
        except UserError as exc:
            notes.append(f"EB with a ticket at epoch {epoch}: {exc}")
            continue
        label = f"no ticket by epoch {epoch}" if epoch == limit else f"ticket at epoch {epoch}"
        rows.append(Scenario("eb", label, {"search": epoch, "retrain": end - start}))
    return rows, notes
