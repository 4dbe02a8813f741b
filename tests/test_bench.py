"""The benchmark harness works (tiny sizes; nothing here measures or asserts a speed)."""

import json

import pytest

from nanobard.bench import run_benchmarks, table, target_table, write_results
from tests.conftest import SHARED_TINY


def test_tiny_benchmark_run_writes_json_and_tables(tmp_path):
    groups = ["matmul", "train", "generate"] + (["time_to_loss"] if SHARED_TINY.exists() else [])
    results = run_benchmarks(groups, repeats=2, tiny=True, data=str(SHARED_TINY) if SHARED_TINY.exists() else None)
    labels = [r["label"] for r in results]
    assert "peak matmul float32" in labels and "train baby bfloat16" in labels and "generate 10.7M KV cache bfloat16" in labels
    for r in results:
        assert len(r["runs"]) == (1 if r["case"] == "time_to_loss" else 2)
        assert r["peak_rss_mb"]["median"] > 10
        for key in ("tokens_per_s", "gflops", "seconds"):
            if key in r:
                assert r[key]["min"] <= r[key]["median"] <= r[key]["max"] and r[key]["median"] > 0
    train = next(r for r in results if r["label"] == "train baby float32")
    assert train["gflops"]["median"] == pytest.approx(
        train["tokens_per_s"]["median"] * train["runs"][0]["flops_per_token"] / 1e9, rel=1e-6)
    path = write_results(results, tmp_path)
    assert json.loads(path.read_text())["results"][0]["case"] == "matmul"
    assert "peak matmul bfloat16" in table(results) and "generation" in target_table(results)
