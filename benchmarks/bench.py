"""Measure this machine and nanobard on it; write JSON and a readable table.
Nothing here asserts a time.

    .venv/bin/python benchmarks/bench.py [--only GROUP ...] [--repeats 3] [--emulate avx2]
        [--nanogpt DIR]
    (``nanobard bench`` and ``make bench`` run this file too)

Each case runs in its own subprocess (so its peak resident memory is its own), several times; the
table reports the median and the spread (min-max) and says which CPU kind produced it.
``--emulate avx2`` runs every case with ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2``, which
makes torch behave like a CPU without AVX-512 (so without native bfloat16): the bfloat16 peak
matmul case shows whether it took (it drops from hundreds of GFLOP/s to about one). Cases that
would take minutes on a CPU without native bfloat16 are shrunk (matmul) or skipped (training,
generation and fine-tuning in bfloat16), and the table says so.

Utilisation = achieved GFLOP/s / measured peak matmul GFLOP/s of the same dtype (see cases.py).

``--device cuda`` (or ``mps``) runs the matmul, training, generation and fine-tuning cases on that
device (``auto``: the one nanobard would pick); int8 generation is a CPU path and is skipped there.
The time-to-loss and 10-minute cases compare CPU configurations and always run on the CPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger("nanobard.bench")
HERE = Path(__file__).resolve().parent
GROUPS = ("matmul", "train", "generate", "finetune", "time_to_loss")
OPTIONAL = ("ten_minutes",)  # 10-minute runs: only when named with --only
SCRATCH_CONFIGS = ("baby", "quick", "gpu")
TARGET = 1.886  # nanoGPT's baby-config validation loss after 2,000 steps


def machine(env: dict[str, str], device: str = "cpu") -> dict[str, Any]:
    """hardware.describe() as a process with ``env`` sees it (emulation included)."""
    code = (
        "import json, sys; from nanobard.hardware import describe, pick_device; "
        "print(json.dumps(describe(pick_device(sys.argv[1]))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, device], env=env, capture_output=True, text=True
    )
    if out.returncode != 0:
        raise SystemExit(
            f"--device {device}: "
            f"{out.stderr.strip().splitlines()[-1] if out.stderr.strip() else 'failed'}"
        )
    return json.loads(out.stdout)


def run_case(
    name: str, kwargs: dict[str, Any], repeats: int, env: dict[str, str], timeout: float = 1800
) -> dict[str, Any]:
    """Run a case ``repeats`` times, each in a fresh subprocess; median, min, max, peak RSS."""
    runs = []
    for _ in range(repeats):
        proc = subprocess.run(
            [sys.executable, __file__, "--case", name, json.dumps(kwargs)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"benchmark {name} {kwargs} failed: {proc.stderr[-800:]}")
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    out: dict[str, Any] = {"case": name, "args": kwargs, "runs": runs}
    for key, v in runs[0].items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            vals = [r[key] for r in runs]
            out[key] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}
    return out


def _case_main(name: str, kwargs: str) -> None:
    sys.path.insert(0, str(HERE))
    from cases import CASES

    r = CASES[name](**json.loads(kwargs))
    rss = [
        resource.getrusage(who).ru_maxrss
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    ]
    # a case that runs `nanobard train` as a child reports the child's
    r["peak_rss_mb"] = max(rss) / 1024
    print(json.dumps(r))


def plan(
    which: list[str],
    tiny: bool,
    native_bf16: bool,
    data: str | None,
    nanogpt: str | None,
    repeats: int,
    device: str = "cpu",
) -> list[tuple[str, str, dict[str, Any], int] | tuple[str, str]]:
    """(label, case, kwargs, repeats) per case to run, or (label, why) for a case skipped here.
    ``device``: where the matmul, train, generate and finetune cases run (a torch device string)."""
    items: list[Any] = []
    slow_bf16 = (
        "skipped: bfloat16 is emulated on this CPU (tens of times slower than float32)"
        if device == "cpu"
        else f"skipped: bfloat16 is not native on {device}"
    )
    on = {} if device == "cpu" else {"device": device}
    big = 2048 if device == "cpu" else 8192
    if "matmul" in which:
        items.append(
            (
                "peak matmul float32",
                "matmul",
                {"dtype": "float32", "n": 256 if tiny else big, **on},
                repeats,
            )
        )
        n, reps = (256, 10) if tiny or not native_bf16 else (big, 10)
        items.append(
            (
                "peak matmul bfloat16",
                "matmul",
                {"dtype": "bfloat16", "n": n, "reps": reps, **on},
                repeats,
            )
        )
    if "train" in which:
        for preset in ("baby",) if tiny else SCRATCH_CONFIGS:
            for dt in ("float32", "bfloat16"):
                if dt == "bfloat16" and not native_bf16 and not tiny:
                    items.append((f"train {preset} {dt}", slow_bf16))
                    continue
                kw = {
                    "preset": preset,
                    "dtype": dt,
                    "steps": 2 if tiny else (5 if preset == "gpu" and device == "cpu" else 20),
                    "warmup": 1 if tiny else 3,
                    **on,
                }
                items.append((f"train {preset} {dt}", "train", kw, repeats))
    # decoding reads the weights: bfloat16/int8 weights pay on any CPU (hardware.py)
    if "generate" in which:
        for cache, dt in (
            (False, "float32"),
            (True, "float32"),
            (True, "bfloat16"),
            (True, "int8"),
        ):
            label = f"generate 10.7M {'KV cache' if cache else 'no cache'} {dt}"
            if dt == "int8" and device != "cpu":
                items.append((label, "skipped: weight-only int8 is a CPU path"))
                continue
            items.append(
                (
                    label,
                    "generate",
                    {"use_cache": cache, "dtype": dt, "new_tokens": 5 if tiny else 500, **on},
                    repeats,
                )
            )
    if "finetune" in which:
        for mode, loss in (
            ("float32", "hf"),
            ("float32", "chunked"),
            ("bfloat16", "hf"),
            ("bfloat16", "chunked"),
            ("lora", "chunked"),
        ):
            label = f"finetune smollm2-135m {mode}{' (model loss)' if loss == 'hf' else ''}"
            if mode == "bfloat16" and not native_bf16:
                items.append((label, slow_bf16))
                continue
            items.append(
                (
                    label,
                    "finetune",
                    {"mode": mode, "loss": loss, "steps": 1 if tiny else 3, **on},
                    1 if tiny else repeats,
                )
            )
    if "time_to_loss" in which or "ten_minutes" in which:
        if not data:
            raise ValueError(
                "time_to_loss needs tiny Shakespeare: --data PATH or NANOBARD_TINYSHAKESPEARE"
            )
    if "time_to_loss" in which:
        for label, args in (
            ("baby float32 (baseline)", ["--preset", "baby"]),
            ("fast", ["--preset", "fast"]),
        ):
            if tiny:
                args = [*args, "--max-steps", "3", "--eval-interval", "3", "--eval-iters", "1"]
            items.append(
                (
                    f"time to val loss {TARGET}: {label}",
                    "time_to_loss",
                    {"target": TARGET, "data": data, "args": args},
                    1 if tiny else repeats,
                )
            )
        if nanogpt:
            items.append(
                (
                    f"time to val loss {TARGET}: nanoGPT baby",
                    "nanogpt",
                    {
                        "target": TARGET,
                        "data": data,
                        "nanogpt": nanogpt,
                        **({"max_iters": 3} if tiny else {}),
                    },
                    1 if tiny else repeats,
                )
            )
    if "ten_minutes" in which:
        for seed in (1337, 2):
            items.append(
                (
                    f"10 minutes: cpu-10min seed {seed}",
                    "ten_minutes",
                    {"data": data, "seed": seed},
                    1,
                )
            )
    return items


def run_benchmarks(
    which: list[str],
    repeats: int = 3,
    tiny: bool = False,
    data: str | None = None,
    emulate: str | None = None,
    nanogpt: str | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Run the named groups. ``tiny`` checks the harness only (seconds).
    Returns {"meta", "results"}."""
    from nanobard.hardware import emulation_env

    env = {**os.environ, **(emulation_env(emulate) if emulate else {})}
    meta = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "emulate": emulate, **machine(env, device)}
    results = []
    for item in plan(which, tiny, meta["native_bf16"], data, nanogpt, repeats, meta["device"]):
        if len(item) == 2:
            results.append({"label": item[0], "case": "skipped", "skipped": item[1]})
            continue
        label, case, kw, reps = item
        logger.info("bench: %s", label)
        r = run_case(case, kw, reps, env)
        r["label"] = label
        results.append(r)
    return {"meta": meta, "results": results}


def _value(r: dict[str, Any]) -> tuple[str, str]:
    for key, unit in (
        ("tokens_per_s", "tok/s"),
        ("rescored_val_loss", "loss"),
        ("seconds", "s"),
        ("gflops", "GFLOP/s"),
    ):
        if key in r:
            return key, unit
    raise KeyError(r["label"])


def table(bench: dict[str, Any]) -> str:
    """The results as text, headed by the CPU that produced them."""
    m = bench["meta"]
    cpu = m["cpu"]
    emulated = " (emulated with --emulate " + m["emulate"] + ")" if m.get("emulate") else ""
    head = (
        f"{cpu['model']}: {cpu['kind']}{emulated}, "
        f"torch capability {cpu['capability']}, flags {' '.join(cpu['flags'])}, "
        f"{cpu['threads']} threads, torch {m['torch']}, {m['time']}"
        + (f"\ncases on {m['device']}" if m.get("device", "cpu") != "cpu" else "")
        + (f": {m['gpu']}" if m.get("gpu") else "")
    )
    results = bench["results"]
    peaks = {r["args"]["dtype"]: r["gflops"]["median"] for r in results if r["case"] == "matmul"}
    lines = [
        head,
        f"{'benchmark':<44} {'median':>14} {'min-max':>21} {'util':>6} {'shape':>6} "
        f"{'peak RSS':>9}",
    ]
    for r in results:
        if r["case"] == "skipped":
            lines.append(f"{r['label']:<44} {r['skipped']}")
            continue
        key, unit = _value(r)
        m_ = r[key]
        util = ""
        if "gflops" in r and r["case"] in ("train", "finetune"):
            dt = r["args"].get("dtype") or (
                "bfloat16" if r["runs"][0].get("bfloat16") else "float32"
            )
            if dt in peaks:
                util = f"{100 * r['gflops']['median'] / peaks[dt]:.0f}%"
        # the share of the matmul speed at the model's own shapes and dtype (cases.same_shape_peak)
        shape = (
            f"{100 * r['gflops']['median'] / r['shape_peak_gflops']['median']:.0f}%"
            if "shape_peak_gflops" in r
            else ""
        )
        extra = ""
        if r["case"] in ("time_to_loss", "nanogpt"):
            extra = f"  best val {r['best_val_loss']['median']:.3f}" + (
                "" if all(x["reached"] for x in r["runs"]) else " (not reached)"
            )
        if r["case"] == "ten_minutes":
            extra = (
                f"  in-run best {r['best_val_loss']['median']:.4f} "
                f"at step {r['runs'][0]['best_step']}"
            )
        if "peak_gpu_mb" in r:
            extra = f"  peak GPU memory {r['peak_gpu_mb']['median']:.0f} MB"
        lines.append(
            f"{r['label']:<44} {m_['median']:>9.4g} {unit:<5}{m_['min']:>10.4g}-{m_['max']:<10.4g}"
            f"{util:>6} {shape:>6} {r['peak_rss_mb']['median']:>7.0f}MB{extra}"
        )
    return "\n".join(lines)


def ratios(bench: dict[str, Any]) -> str:
    """The figures the issues set targets on,
    as ratios against baselines measured in the same run."""
    by = {r["label"]: r for r in bench["results"] if r["case"] != "skipped"}

    def med(label: str, key: str) -> float | None:
        r = by.get(label)
        return r[key]["median"] if r and key in r else None

    lines = []
    fast = med(f"time to val loss {TARGET}: fast", "seconds")
    for base in ("nanoGPT baby", "baby float32 (baseline)"):
        b = med(f"time to val loss {TARGET}: {base}", "seconds")
        if fast and b:
            lines.append(
                f"time to {TARGET}: fast {fast:.1f} s / {base} {b:.1f} s = {fast / b:.2f}x"
            )
    gen0 = med("generate 10.7M no cache float32", "tokens_per_s")
    for dt in ("float32", "bfloat16", "int8"):
        g = med(f"generate 10.7M KV cache {dt}", "tokens_per_s")
        if g and gen0:
            lines.append(
                f"generation, KV cache {dt}: {g:.0f} tokens/s "
                f"({g / gen0:.1f}x no cache, {gen0:.0f})"
            )
    ft0 = med("finetune smollm2-135m float32 (model loss)", "tokens_per_s")
    for mode in ("float32", "bfloat16", "lora"):
        f = med(f"finetune smollm2-135m {mode}", "tokens_per_s")
        if f and ft0:
            lines.append(
                f"fine-tuning {mode}: {f:.0f} tokens/s "
                f"({f / ft0:.2f}x float32 with the model's own loss)"
            )
    return "\n".join(lines)


def write_results(bench: dict[str, Any], out: str | os.PathLike) -> Path:
    p = Path(out)
    p.mkdir(parents=True, exist_ok=True)
    bench["meta"]["maxrss_parent_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    where = bench["meta"]["cpu"]["kind"] + (
        "" if bench["meta"].get("device", "cpu") == "cpu" else "-" + bench["meta"]["device"]
    )
    path = p / f"bench-{where.replace(':', '')}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(bench, indent=2))
    (p / "latest.txt").write_text(table(bench) + "\n\n" + ratios(bench) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="nanobard bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--only", nargs="+", choices=[*GROUPS, *OPTIONAL, "nanogpt"], help="run only these groups"
    )
    ap.add_argument(
        "--repeats", type=int, default=3, help="runs per case (median and spread reported)"
    )
    ap.add_argument(
        "--tiny",
        action="store_true",
        help="seconds-long sizes: checks the harness, not the machine",
    )
    ap.add_argument(
        "--data",
        metavar="PATH",
        help="tiny Shakespeare for time-to-loss (or NANOBARD_TINYSHAKESPEARE)",
    )
    ap.add_argument(
        "--emulate", choices=["avx2"], help="run every case as on a CPU without AVX-512 (see above)"
    )
    ap.add_argument(
        "--nanogpt", metavar="DIR", help="a nanoGPT checkout: time its baby config alongside ours"
    )
    ap.add_argument(
        "--device",
        default="cpu",
        help="cpu (default), cuda, mps or auto: where the matmul/train/generate/finetune cases run",
    )
    ap.add_argument("--out", default="bench_results", help="folder for the JSON results")
    # one case, in a subprocess
    ap.add_argument("--case", nargs=2, metavar=("NAME", "JSON"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    from nanobard.hardware import keep_freed_memory

    keep_freed_memory()  # as the nanobard command does
    if args.case:
        _case_main(*args.case)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    which = args.only or list(GROUPS)
    if "nanogpt" in which:
        which = [*which, "time_to_loss"]
    data = args.data or os.environ.get("NANOBARD_TINYSHAKESPEARE")
    if ("time_to_loss" in which or "ten_minutes" in which) and not data:
        from nanobard.data.corpus import tiny_shakespeare_path

        data = str(tiny_shakespeare_path())
    bench = run_benchmarks(
        which, args.repeats, args.tiny, data, args.emulate, args.nanogpt, args.device
    )
    path = write_results(bench, args.out)
    print(table(bench), ratios(bench), f"results: {path}", sep="\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
