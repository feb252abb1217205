"""The benchmark scripts run and report what they claim (tiny shapes; their figures are not checked here)."""

from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
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


def test_bench_pretrain_compares_both_sides_in_one_run(tmp_path):
    """The same-run comparison end to end: two child processes (ours and the reference), a ratio of medians.
    In the sequential mode (one side at a time), which shares the children and the report with the alternated one."""
    out = tmp_path / "pretrain.json"
    mode = "sequential"
    command = [sys.executable, str(BENCHMARKS / "bench_pretrain.py"), "--sizes", "smoke", "--steps", "1", "--isa",
               "native", "--sequential", "smoke", "--out", str(out)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(out.read_text())
    (row,) = result["comparisons"]
    assert row["mode"] == mode and row["size"] == "smoke"
    assert row["speedup"] == pytest.approx(row["reference"]["step_s"] / row["ours"]["step_s"])
    for side in ("reference", "ours"):
        assert len(row[side]["step_times_s"]) == 1 and row[side]["max_rss_bytes"] > 0
    assert set(result["cpu"]["isa"]) >= {"avx2", "avx512f"}  # the flags the figures are printed beside
    assert "ratio" in proc.stdout and "CPU:" in proc.stdout


def test_bench_reference_step_masks_as_the_reference_and_trains():
    import bench_reference
    import torch

    step = bench_reference.ReferenceStep("tiny", 2, 64)
    x = step.tokens
    scores = torch.rand(2, 64) * step.book[step.index]
    corrupted, loss_mask, real_mask, counts = step._corrupt(x, scores)
    for b, n in enumerate(counts):
        assert 0 < n <= math.floor(0.15 * 64)
        assert int(loss_mask[b].sum()) == n
        assert int(real_mask[b].sum()) == round(0.8 * n) + round(0.1 * n)
        changed = (corrupted[b] != x[b]).any(-1)
        assert not changed[loss_mask[b] == 0].any()  # nothing outside the selection is touched
        # 80% become the all-MASK octuple (the batch holds regular ids only, so these are the masked rows)
        assert int((corrupted[b] == torch.tensor(bench_reference.MASK_ROW)).all(-1).sum()) == round(0.8 * n)
    before = [p.detach().clone() for p in step.masker.head.parameters()]
    first = step()["loss"]
    assert math.isfinite(first) and first > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, step.masker.head.parameters()))


def test_cpu_info_reads_model_and_isa_flags(tmp_path):
    import cpu_info

    fake = tmp_path / "cpuinfo"
    fake.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu sse avx2 fma avx512f amx_tile\n")
    info = cpu_info.cpu_info(str(fake))
    assert info["model"] == "Test CPU 9000"
    assert info["isa"]["avx2"] and info["isa"]["avx512f"] and info["isa"]["amx_tile"]
    assert not info["isa"]["avx512_bf16"] and not info["isa"]["amx_bf16"]
    assert "avx512f" in cpu_info.describe(info)


def test_accelerator_check_smoke_writes_its_figures(tmp_path):
    out = tmp_path / "check.json"
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run([str(BENCHMARKS / "accelerator_check.sh"), "--smoke", "--steps", "1", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    for key in ("device_kind", "compile_s", "step_s", "tokens_per_s", "flops_per_step", "mfu", "peak_memory_bytes",
                "xla_peak_bytes_estimate", "loss"):
        assert key in result, key
    assert result["dtype"] == "bfloat16" and result["finite"]
    assert result["tokens_per_s"] == pytest.approx(result["batch"] * result["length"] / result["step_s"])
    assert result["mfu"] is None and "MFU" in proc.stdout  # no peak rate is known for a CPU: omitted, with a message


def test_bench_corpus_build_accounts_for_every_file_and_names_the_corrupt_ones(tmp_path):
    """A few dozen variants of real songs (../shared/data) plus corrupt files, built by the default path."""
    import bench_corpus_build

    out = tmp_path / "corpus.json"
    assert bench_corpus_build.main(["--sizes", "24", "--paths", "default", "--max-songs", "6", "--corrupt-every", "6",
                                    "--workers", "1", "--cache", str(tmp_path / "cache"), "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["builds"]
    folder = tmp_path / "cache" / "corpus_24"
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert row["inputs"] == len(files) == 24 + 4 + 1  # variants, one corrupt file of each kind, the README
    counts = row["manifest"]
    assert counts["ok"] + counts["skipped"] + counts["duplicate"] + counts["ignored"] == row["inputs"]
    assert row["accounted"]
    assert counts == {"ok": 24, "skipped": 4, "duplicate": 0, "ignored": 1}  # every variant is distinct and readable
    assert sorted(row["corrupt_files"]) == [f for f in files if f.startswith("corrupt/")]
    assert all(r["status"] == "skipped" and r["reason"] for r in row["corrupt_files"].values())
    assert row["files_per_s"] > 0 and row["parent_peak_rss_mib"] > 0 and row["shards"]["count"] >= 1
    assert row["examples_match_manifest"]  # the manifest's windows, the info's examples and the shards' records
    assert sum(c["shard_records"] for c in row["examples_check"].values()) == 24  # one window per short variant
    beam = bench_corpus_build.build_config(folder, tmp_path / "tfds", "beam", 2, "multi_threading")
    assert beam["beam"] and "--direct_num_workers=2 --direct_running_mode=multi_threading" in beam["beam_options"]


def test_beam_loss_probe_counts_every_stage(tmp_path):
    """The pure-Beam probe of the DirectRunner's lost elements: on a small run nothing is lost, and the
    counts it compares are the ones the pipeline's shape implies (1 of 10 pieces has no window, 1 of 17 two)."""
    import beam_direct_runner_loss

    out = tmp_path / "loss.json"
    assert beam_direct_runner_loss.main(["--pieces", "340", "--rows", "4", "--mode", "in_memory", "--out", str(out)]) == 0
    counts = json.loads(out.read_text())["counts"]
    expected = sum(0 if i % 10 == 0 else 2 if i % 17 == 0 else 1 for i in range(340))
    assert counts == {"tokenized": 340, "expected_examples": expected, "examples": expected, "written": expected}
