"""``nanobard bench``: measure this machine and nanobard on it; write JSON and a readable table.

Each case runs in its own subprocess (so its peak resident memory is its own), several times;
the table reports the median and the spread (min-max). Nothing here asserts a time.

Achieved GFLOP/s = model training FLOPs per token x tokens/s, with FLOPs per token = 6 N + 12 L C T
(N parameters, L layers, C width, T context; forward + backward, PaLM appendix B) for training and
2 N + 4 L C T for a forward pass. Fine-tuning counts 6 N (4 N + 6 x trainable for LoRA, whose frozen
weights get no gradients); its attention term, about 3% at T = 128, is left out.
Utilisation = achieved / measured peak matmul GFLOP/s of the same dtype.
"""

from __future__ import annotations

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

import torch

logger = logging.getLogger(__name__)

SCRATCH_CONFIGS = ("baby", "quick", "gpu")

# nanoGPT's figures measured on this project's 2-core machine kind (issue #5), for the target table.
REFERENCES = {
    "time to 1.886": ("105 s (nanoGPT, baby config, 2,000 steps)", "<= 50 s"),
    "best loss in 10 min": ("1.567 (nanoGPT, baby config, 11,000 steps, 580 s)", "<= 1.50"),
    "generation": ("24.6 tokens/s (nanoGPT, no KV cache)", ">= 250 tokens/s"),
    "fine-tuning": ("131 tokens/s (plain float32 PyTorch loop)", ">= 260 tokens/s"),
}


# --------------------------------------------------------------------------------------------
# cases (each returns a dict of measurements; run inside a subprocess by `run_case`)


def case_matmul(dtype: str, n: int = 2048, reps: int = 10) -> dict[str, Any]:
    dt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    a, b = torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt)
    for _ in range(2):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    s = (time.perf_counter() - t) / reps
    return {"gflops": 2 * n**3 / s / 1e9}


def case_train(preset: str, dtype: str, steps: int = 20, warmup: int = 3, compile: bool = False,
               batch_size: int | None = None) -> dict[str, Any]:
    from nanobard.config import get_preset, with_overrides
    from nanobard.model import GPT
    from nanobard.optim import make_optimizer
    from nanobard.train import autocast_context

    p = get_preset(preset)
    mcfg = with_overrides(p.model, {"vocab_size": 65, "dropout": 0.0})
    tcfg = with_overrides(p.train, {"dtype": dtype, "batch_size": batch_size})
    torch.manual_seed(0)
    model = GPT(mcfg)
    opt = make_optimizer(model, tcfg, torch.device("cpu"))
    fwd = torch.compile(model) if compile else model
    B, T = tcfg.batch_size, mcfg.block_size
    x = torch.randint(0, 65, (B, T))
    t0 = None
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        with autocast_context(torch.device("cpu"), dtype):
            loss = fwd(x, x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    s = time.perf_counter() - t0
    tps = steps * B * T / s
    return {"tokens_per_s": tps, "gflops": tps * model.flops_per_token() / 1e9,
            "params": model.num_params(), "flops_per_token": model.flops_per_token(), "batch": B, "context": T}


def case_generate(use_cache: bool, new_tokens: int = 500, dtype: str = "float32") -> dict[str, Any]:
    from nanobard.config import get_preset, with_overrides
    from nanobard.model import GPT
    from nanobard.sampling import SamplingConfig, ScratchDecoder, generate_ids

    cfg = with_overrides(get_preset("gpu").model, {"vocab_size": 65, "dropout": 0.0})
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    t = time.perf_counter()
    decoder = ScratchDecoder(model, use_cache=use_cache, dtype=getattr(torch, dtype))
    n = sum(1 for _ in generate_ids(decoder, [0], new_tokens,
                                    SamplingConfig(temperature=1.0, seed=0)))
    s = time.perf_counter() - t
    return {"tokens_per_s": n / s, "params": model.num_params(), "context": cfg.block_size}


def case_finetune(mode: str, steps: int = 3, batch: int = 8, block: int = 128, loss: str = "chunked") -> dict[str, Any]:
    """Training steps of the embedded SmolLM2-135M as ``nanobard finetune`` runs them: fused AdamW
    (the Trainer's default) and, with ``loss="chunked"``, its chunked loss; ``loss="hf"`` takes
    the model's own loss."""
    from nanobard.finetune import chunked_lm_loss
    from nanobard.pretrained import EMBEDDED, load_pretrained

    pre = load_pretrained(EMBEDDED)
    model = pre.model
    if mode == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=True)
    x = torch.randint(0, 1000, (batch, block))
    times = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode in ("bfloat16", "lora")):
            out = chunked_lm_loss(model, x, x) if loss == "chunked" else model(input_ids=x, labels=x).loss
        out.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    s = statistics.median(times[1:])
    n = pre.num_params
    # 6 N per token for full training; LoRA computes no weight gradients for the frozen N
    # (forward 2 N + input gradients 2 N) and 6 per trainable parameter.
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    flops = 6 * n if mode != "lora" else 4 * n + 6 * trainable
    return {"tokens_per_s": batch * block / s, "gflops": batch * block / s * flops / 1e9, "params": n}


def case_time_to_loss(target: float, data: str, args: list[str]) -> dict[str, Any]:
    """Wall time of a real `nanobard train` process until val loss <= target (from process start)."""
    import tempfile

    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "nanobard", "-q", "train", "--corpus", "tinyshakespeare", "--out", out,
               "--target-loss", str(target), "--sample-tokens", "0", "--no-progress", *args]
        env = {**os.environ, "NANOBARD_TINYSHAKESPEARE": data}
        t = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        s = time.perf_counter() - t
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-500:])
        rows = [json.loads(ln) for ln in Path(out, "metrics.jsonl").read_text().splitlines()]
    best = min(r["val_loss"] for r in rows)
    return {"seconds": s, "best_val_loss": best, "reached": best <= target, "steps": rows[-1]["step"]}


CASES = {"matmul": case_matmul, "train": case_train, "generate": case_generate, "finetune": case_finetune,
         "time_to_loss": case_time_to_loss}


def run_case(name: str, kwargs: dict[str, Any], repeats: int, timeout: float = 900) -> dict[str, Any]:
    """Run a case ``repeats`` times, each in a fresh subprocess; median, min, max, peak RSS."""
    runs = []
    for _ in range(repeats):
        code = ("import json,sys,resource; from nanobard.bench import CASES; "
                f"r = CASES[{name!r}](**json.loads(sys.argv[1])); "
                "r['peak_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024; print(json.dumps(r))")
        proc = subprocess.run([sys.executable, "-c", code, json.dumps(kwargs)], capture_output=True, text=True,
                              timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"benchmark {name} {kwargs} failed: {proc.stderr[-800:]}")
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    out: dict[str, Any] = {"case": name, "args": kwargs, "runs": runs}
    for key, v in runs[0].items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            vals = [r[key] for r in runs]
            out[key] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}
    return out


def run_benchmarks(which: list[str], repeats: int = 3, tiny: bool = False, data: str | None = None) -> list[dict[str, Any]]:
    """Run the named benchmark groups. ``tiny`` checks the harness only (seconds)."""
    plan: list[tuple[str, str, dict[str, Any], int]] = []
    if "matmul" in which:
        for dt in ("float32", "bfloat16"):
            plan.append((f"peak matmul {dt}", "matmul", {"dtype": dt, "n": 256 if tiny else 2048}, repeats))
    if "train" in which:
        for preset in (("baby",) if tiny else SCRATCH_CONFIGS):
            for dt in ("float32", "bfloat16"):
                kw = {"preset": preset, "dtype": dt, "steps": 2 if tiny else (5 if preset == "gpu" else 20),
                      "warmup": 1 if tiny else 3}
                plan.append((f"train {preset} {dt}", "train", kw, repeats))
    if "generate" in which:
        for cache, dt in ((False, "float32"), (True, "float32"), (True, "bfloat16")):
            plan.append((f"generate 10.7M {'KV cache' if cache else 'no cache'} {dt}", "generate",
                         {"use_cache": cache, "dtype": dt, "new_tokens": 5 if tiny else 500}, repeats))
    if "finetune" in which:
        for mode, loss in (("float32", "hf"), ("float32", "chunked"), ("bfloat16", "hf"), ("bfloat16", "chunked"),
                           ("lora", "chunked")):
            plan.append((f"finetune smollm2-135m {mode}{' (model loss)' if loss == 'hf' else ''}", "finetune",
                         {"mode": mode, "loss": loss, "steps": 1 if tiny else 3}, 1 if tiny else repeats))
    if "time_to_loss" in which:
        if not data:
            raise ValueError("time_to_loss needs tiny Shakespeare: --data PATH or NANOBARD_TINYSHAKESPEARE")
        for label, args in (("baby float32 (baseline)", ["--preset", "baby"]), ("fast", ["--preset", "fast"])):
            if tiny:
                args = [*args, "--max-steps", "3", "--eval-interval", "3", "--eval-iters", "1"]
            plan.append((f"time to val loss 1.886: {label}", "time_to_loss",
                         {"target": 1.886, "data": data, "args": args}, 1 if tiny else repeats))
    results = []
    for label, case, kw, reps in plan:
        logger.info("bench: %s", label)
        r = run_case(case, kw, reps)
        r["label"] = label
        results.append(r)
    return results


def table(results: list[dict[str, Any]]) -> str:
    peaks = {r["args"]["dtype"]: r["gflops"]["median"] for r in results if r["case"] == "matmul"}
    lines = [f"{'benchmark':<44} {'median':>14} {'min-max':>21} {'util':>6} {'peak RSS':>9}"]
    for r in results:
        key, unit = ("tokens_per_s", "tok/s") if "tokens_per_s" in r else (("seconds", "s") if "seconds" in r else ("gflops", "GFLOP/s"))
        m = r[key]
        util = ""
        if "gflops" in r and r["case"] in ("train", "finetune"):
            dt = r["args"].get("dtype") or ("float32" if r["args"].get("mode") == "float32" else "bfloat16")
            if dt in peaks:
                util = f"{100 * r['gflops']['median'] / peaks[dt]:.0f}%"
        extra = ""
        if r["case"] == "time_to_loss":
            extra = f"  best val {r['best_val_loss']['median']:.3f}"
        lines.append(f"{r['label']:<44} {m['median']:>9.1f} {unit:<5}{m['min']:>10.1f}-{m['max']:<10.1f}"
                     f"{util:>6} {r['peak_rss_mb']['median']:>7.0f}MB{extra}")
    return "\n".join(lines)


def target_table(results: list[dict[str, Any]]) -> str:
    """The issue's target rows: our figure, nanoGPT's reference, our own float32 baseline, ratio."""
    by = {r["label"]: r for r in results}
    rows = []

    def med(label: str, key: str) -> float | None:
        r = by.get(label)
        return r[key]["median"] if r and key in r else None

    fast, base = med("time to val loss 1.886: fast", "seconds"), med("time to val loss 1.886: baby float32 (baseline)", "seconds")
    if fast is not None:
        rows.append(("time to 1.886", f"{fast:.1f} s", f"{base:.1f} s" if base else "-",
                     f"{base / fast:.2f}x faster" if base else ""))
    def vs_baseline(name: str, value: float | None, what: str, base: float | None, base_what: str, digits: int) -> None:
        if value is not None:
            rows.append((name, f"{value:.0f} tokens/s ({what})", f"{base:.0f} tokens/s (ours, {base_what})" if base else "-",
                         f"{value / base:.{digits}f}x" if base else ""))

    gen0 = med("generate 10.7M no cache float32", "tokens_per_s")
    for dt in ("float32", "bfloat16"):
        vs_baseline("generation", med(f"generate 10.7M KV cache {dt}", "tokens_per_s"), f"cache, {dt}", gen0, "no cache", 1)
    ft0 = med("finetune smollm2-135m float32 (model loss)", "tokens_per_s")
    for mode, what in (("bfloat16", "full, bfloat16"), ("lora", "LoRA r=8")):
        vs_baseline("fine-tuning", med(f"finetune smollm2-135m {mode}", "tokens_per_s"), what, ft0, "float32", 2)
    lines = [f"{'target':<20} {'ours':<32} {'our float32 baseline':<34} {'ratio':<14} {'reference (nanoGPT)':<48} goal"]
    for name, ours, baseline, ratio in rows:
        ref, goal = REFERENCES[name]
        lines.append(f"{name:<20} {ours:<32} {baseline:<34} {ratio:<14} {ref:<48} {goal}")
    return "\n".join(lines)


def write_results(results: list[dict[str, Any]], out: str | os.PathLike) -> Path:
    p = Path(out)
    p.mkdir(parents=True, exist_ok=True)
    meta = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "maxrss_parent_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    path = p / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    (p / "latest.txt").write_text(table(results) + "\n\n" + target_table(results) + "\n")
    return path
