"""The benchmark scripts run and report what they claim (tiny shapes; their figures are not checked here)."""

from __future__ import annotations

import json
import math
import pathlib
import sys

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module", autouse=True)
def benchmarks_on_path():
    sys.path.insert(0, str(BENCHMARKS))
    yield
    sys.path.remove(str(BENCHMARKS))


def test_bench_attention_reports_every_part_with_its_flops(tmp_path):
    import bench_attention

    out = tmp_path / "attention.json"
    assert bench_attention.main(["--sizes", "smoke", "--steps", "1", "--out", str(out)]) == 0
    (size,) = json.loads(out.read_text())["sizes"]
    parts = {p["name"]: p for p in size["parts"]}
    assert set(parts) == {"layer", "attention", "attention_absolute", "attention_no_dropout", "dense_rest"}
    batch, length, hidden, _, mlp = bench_attention.CASES["smoke"]
    feed_forward = 3 * 2 * 2 * batch * length * hidden * mlp / 1e9
    # The layer is attention + feed-forward; the relative terms cost as many FLOPs as q.k and p.v together.
    assert parts["layer"]["gflop"] == pytest.approx(parts["attention"]["gflop"] + feed_forward)
    relative = parts["attention"]["gflop"] - parts["attention_absolute"]["gflop"]
    assert relative == pytest.approx(3 * 2 * 2 * batch * length * length * hidden / 1e9)
    for name in ("layer", "attention", "attention_absolute", "attention_no_dropout"):
        assert parts[name]["ms"] > 0 and 0 < parts[name]["fraction_of_matmul"] < math.inf
    assert size["scores_copy"]["gb_per_s"] > 0
    assert 0 < size["attention_share_of_layer_flops"] < 1


def test_bench_pretrain_times_the_real_step(tmp_path):
    import bench_pretrain
    from matmul_rate import Matmul

    case = bench_pretrain.Case("smoke", "tiny", 2, 64, count_unrolled=False)
    bench_pretrain.time_round_robin([case], 1, Matmul(256))
    result = case.result()
    assert result["tokens_per_s"] == pytest.approx(2 * 64 / result["step_s"])
    assert result["flops_analytic"] > result["flops_six_n_tokens"] * 0.5
    assert 0 < result["fraction_of_matmul"] < math.inf
    # At most floor(0.15 L) notes of the 56 real ones (bench_pretrain pads the last eighth).
    assert math.isfinite(result["loss"]) and 0 < result["selected_fraction"] <= math.floor(0.15 * 64) / 56 + 1e-6
