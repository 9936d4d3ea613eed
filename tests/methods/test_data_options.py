"""The recipe's ``data`` section becomes the data package's own options in one place."""

from __future__ import annotations

import dataclasses

from ebcompress.data import DATASETS, AugmentOptions, DataOptions
from ebcompress.methods.data import data_options
from ebcompress.recipe import AugmentConfig, DataConfig


def test_every_data_set_field_is_carried_over_and_only_the_loader_field_left_out():
    assert {f.name for f in dataclasses.fields(DataOptions)} == set(DataConfig.model_fields) - {
        "num_workers"
    }
    assert [f.name for f in dataclasses.fields(AugmentOptions)] == list(AugmentConfig.model_fields)
    config = DataConfig(
        name="imagefolder",
        root="/data/x",
        image_size=64,
        train_subset=10,
        test_subset=5,
        num_workers=3,
        augment={"crop": "random_resized", "scale": [0.5, 1.0], "re_prob": 0.25},
        mean=[0.5],
        std=[0.25, 0.5, 0.75],
        skip_bad_images=True,
    )
    assert data_options(config) == DataOptions(
        name="imagefolder",
        root="/data/x",
        image_size=64,
        train_subset=10,
        test_subset=5,
        augment=AugmentOptions(crop="random_resized", scale=(0.5, 1.0), re_prob=0.25),
        mean=(0.5,),
        std=(0.25, 0.5, 0.75),
        skip_bad_images=True,
    )


def test_the_defaults_agree_so_an_option_at_its_default_is_never_chosen():
    for name in DATASETS:
        assert data_options(DataConfig(name=name)) == DataOptions(name=name)
    assert data_options(DataConfig(augment={"hflip": 0.5, "pad": 2})).augment.chosen() == [
        "pad",
        "hflip",
    ]
