"""The benchmark harness works (tiny sizes; nothing here measures or asserts a speed)."""

import json

from benchmarks.bench import plan, ratios, run_benchmarks, table, write_results

from tests.conftest import SHARED_TINY


def test_tiny_benchmark_run_writes_json_and_tables(tmp_path):
    groups = ["matmul", "train", "generate"] + (["time_to_loss"] if SHARED_TINY.exists() else [])
    bench = run_benchmarks(
        groups, repeats=2, tiny=True, data=str(SHARED_TINY) if SHARED_TINY.exists() else None
    )
    results = bench["results"]
    labels = [r["label"] for r in results]
    assert (
        "peak matmul float32" in labels
        and "train baby bfloat16" in labels
        and "generate 10.7M KV cache bfloat16" in labels
    )
    assert (
        bench["meta"]["cpu"]["kind"]
        and bench["meta"]["cpu"]["capability"]
        and "native_bf16" in bench["meta"]
    )
    for r in results:
        assert len(r["runs"]) == (1 if r["case"] == "time_to_loss" else 2)
        assert r["peak_rss_mb"]["median"] > 10
        for key in ("tokens_per_s", "gflops", "seconds"):
            if key in r:
                assert r[key]["min"] <= r[key]["median"] <= r[key]["max"] and r[key]["median"] > 0
    trains = [r for r in results if r["case"] == "train"]
    assert trains and all(r["shape_peak_gflops"]["median"] > 0 for r in trains)
    rows = [ln.split() for ln in table(bench).splitlines() if ln.startswith("train baby")]
    # ... util share, same-shape share, peak RSS
    assert len(rows) == 2 and all(r[-3].endswith("%") and r[-2].endswith("%") for r in rows)
    path = write_results(bench, tmp_path)
    assert json.loads(path.read_text())["results"][0]["case"] == "matmul"
    text = table(bench)
    assert bench["meta"]["cpu"]["kind"] in text.splitlines()[0] and "peak matmul bfloat16" in text
    if SHARED_TINY.exists():
        assert "time to 1.886: fast" in ratios(bench)


def test_without_native_bfloat16_the_slow_cases_are_skipped_or_shrunk():
    native = {
        item[0]: item
        for item in plan(["matmul", "train", "generate", "finetune"], False, True, None, None, 3)
    }
    emulated = {
        item[0]: item
        for item in plan(["matmul", "train", "generate", "finetune"], False, False, None, None, 3)
    }
    assert (
        native["peak matmul bfloat16"][2]["n"] == 2048
        and emulated["peak matmul bfloat16"][2]["n"] == 256
    )
    for label in ("train gpu bfloat16", "finetune smollm2-135m bfloat16"):
        assert (
            len(native[label]) == 4
            and len(emulated[label]) == 2
            and "emulated" in emulated[label][1]
        )
    # memory-bound decoding gains anyway
    assert len(emulated["generate 10.7M KV cache bfloat16"]) == 4
    assert len(emulated["train gpu float32"]) == 4
