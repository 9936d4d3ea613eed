"""Side-by-side dense/slim latency: the timing loop, the result, the table, both runtimes."""

from __future__ import annotations

import json
import time

import pytest
from export_fakes import slim_case
from rich.console import Console

from ebcompress.deploy.bench import bench_bundle, bench_models, bench_table, time_interleaved
from ebcompress.deploy.bundle import export_bundle
from ebcompress.errors import UserError


@pytest.fixture(scope="module")
def vgg_case():
    return slim_case("vgg11_cifar", {"width_mult": 0.25}, ratio=0.5)


def test_time_interleaved_orders_and_scales_the_calls():
    log = []

    def sleeper(label, seconds):
        def call():
            log.append(label)
            time.sleep(seconds)

        return call

    fast, slow = time_interleaved(
        [sleeper("fast", 0.002), sleeper("slow", 0.008)],
        warmup=1,
        repeats=4,
        sync=lambda: log.append("|"),
    )
    assert 2.0 < slow / fast < 6.0
    blocks = [block.split()[0] for block in " ".join(log).split("|") if block.strip()]
    # Two warm-ups, then timed blocks whose order flips every repeat.
    assert blocks == ["fast", "slow"] + ["fast", "slow", "slow", "fast"] * 2


def test_time_interleaved_rejects_bad_counts():
    with pytest.raises(UserError, match="repeats"):
        time_interleaved([lambda: None], repeats=0)


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
def test_bench_models_reports_both_models(vgg_case, runtime):
    result = bench_models(
        vgg_case.dense, vgg_case.slim, vgg_case.spec.input_size, batch_sizes=(1, 2),
        runtime=runtime, warmup=1, repeats=2,
    )  # fmt: skip
    assert [t.batch_size for t in result.timings] == [1, 2]
    assert result.mac_reduction > 1.3  # half the channels removed
    assert result.slim_params < result.dense_params
    assert all(t.dense_s > 0 and t.slim_s > 0 for t in result.timings)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["runtime"] == runtime and data["machine"]["date"]
    assert data["timings"][0]["speedup"] == pytest.approx(result.timings[0].speedup)
    console = Console(record=True, width=160)
    console.print(bench_table(result))
    assert "MAC reduction" in console.export_text()


def test_bench_bundle_rebuilds_the_dense_model(tmp_path, vgg_case):
    folder = export_bundle(
        vgg_case.slim, tmp_path / "b", spec=vgg_case.spec, ticket=vgg_case.ticket
    )
    result = bench_bundle(folder, batch_sizes=(2,), warmup=1, repeats=1)
    assert result.dense_params == sum(p.numel() for p in vgg_case.dense.parameters())
    assert result.slim_params == sum(p.numel() for p in vgg_case.slim.parameters())


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [("runtime", "tensorrt", "runtime 'tensorrt'"), ("device", "tpu", "device 'tpu'")],
)
def test_bench_rejects_unknown_choices(vgg_case, option, value, message):
    with pytest.raises(UserError, match=message):
        bench_models(vgg_case.dense, vgg_case.slim, (3, 32, 32), **{option: value})


def test_bench_rejects_bad_batch_sizes(vgg_case):
    with pytest.raises(UserError, match="batch sizes"):
        bench_models(vgg_case.dense, vgg_case.slim, (3, 32, 32), batch_sizes=(0,))
