"""Benchmark cases. Each returns a dict of measurements and runs in its own subprocess (see
bench.py), so its peak resident memory and its CPU settings (``--emulate avx2``) are its own.

Achieved GFLOP/s = model training FLOPs per token x tokens/s, with FLOPs per token = 6 N + 12 L C T
(N parameters, L layers, C width, T context; forward + backward, PaLM appendix B). Fine-tuning
counts 6 N (4 N + 6 x trainable for LoRA, whose frozen weights get no gradients); its attention
term, about 3% at T = 128, is left out.
"""

from __future__ import annotations

import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "int8": torch.int8}


def _clock(device: torch.device) -> float:
    """perf_counter after the device has finished its queued work (GPUs run asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
    return time.perf_counter()


def _gpu_memory(device: torch.device) -> dict[str, float]:
    return (
        {"peak_gpu_mb": torch.cuda.max_memory_allocated(device) / 2**20}
        if device.type == "cuda"
        else {}
    )


def case_matmul(dtype: str, n: int = 2048, reps: int = 10, device: str = "cpu") -> dict[str, Any]:
    dev = torch.device(device)
    a, b = (torch.randn(n, n, dtype=DTYPES[dtype], device=dev) for _ in range(2))
    a @ b
    t = _clock(dev)
    for _ in range(reps):
        a @ b
    return {"gflops": 2 * n**3 / ((_clock(dev) - t) / reps) / 1e9, "n": n}


def set_fields(cfg: Any, items: list[str]) -> Any:
    """``cfg`` with each ``FIELD=VALUE`` of ``items`` replaced, VALUE read as the type of the
    field's current value (``true``/``false`` for flags, ``None`` for none): the benchmark
    scripts' ``--set``."""
    import dataclasses

    for item in items:
        name, value = item.split("=", 1)
        old = getattr(cfg, name)
        new: Any
        if value == "None":
            new = None
        elif isinstance(old, bool):
            new = value.lower() in ("1", "true", "yes")
        else:
            new = type(old)(value) if old is not None else float(value)
            if old is None and new.is_integer() and value.lstrip("-").isdigit():
                new = int(value)  # a step count, not a rate
        cfg = dataclasses.replace(cfg, **{name: new})
    return cfg


def same_shape_peak(
    m: int, c: int, n_layer: int, vocab: int, dtype: torch.dtype, device: torch.device
) -> float:
    """GFLOP/s of the model's own matmuls alone, at its shapes and dtype: per layer (M, C) x (C,
    3C), (C, C), (C, 4C) and (M, 4C) x (4C, C), and the output layer (C, V), with M = batch x
    context; each timed forward and in its two backward shapes, FLOP-weighted. The ceiling a
    training step at those shapes could reach, against which its achieved GFLOP/s are a share."""
    flops, seconds = 0.0, 0.0
    for k, n, count in ((c, 3 * c, n_layer), (c, c, n_layer), (c, 4 * c, n_layer),
                        (4 * c, c, n_layer), (c, vocab, 1)):  # fmt: skip
        for a_shape, b_shape in (((m, k), (k, n)), ((m, n), (n, k)), ((k, m), (m, n))):
            a = torch.randn(*a_shape, dtype=dtype, device=device)
            b = torch.randn(*b_shape, dtype=dtype, device=device)
            for _ in range(3):
                a @ b
            reps = 20
            t = _clock(device)
            for _ in range(reps):
                a @ b
            dt = (_clock(device) - t) / reps
            flops += count * 2 * a_shape[0] * a_shape[1] * b_shape[1]
            seconds += count * dt
    return flops / seconds / 1e9


def case_train(
    preset: str,
    dtype: str,
    steps: int = 20,
    warmup: int = 3,
    batch_size: int | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Training steps of a preset's model and optimizer on random tokens
    (the trainer's own step)."""
    from nanobard.config import get_preset, with_overrides
    from nanobard.hardware import resolve_precision
    from nanobard.model.gpt import GPT
    from nanobard.train.optim import make_optimizer
    from nanobard.train.step import train_step

    p = get_preset(preset)
    mcfg = with_overrides(p.model, {"vocab_size": 65, "dropout": 0.0})
    tcfg = with_overrides(p.train, {"dtype": dtype, "batch_size": batch_size})
    torch.manual_seed(0)
    dev = torch.device(device)
    model = GPT(mcfg).to(dev)
    opt = make_optimizer(model, tcfg, dev)
    x = torch.randint(0, 65, (tcfg.batch_size, mcfg.block_size), device=dev)
    for i in range(warmup + steps):
        if i == warmup:
            t0 = _clock(dev)
        train_step(model, opt, [(x, x)], tcfg, dev)
    tps = steps * x.numel() / (_clock(dev) - t0)
    return {
        "tokens_per_s": tps,
        "gflops": tps * model.flops_per_token() / 1e9,
        "shape_peak_gflops": same_shape_peak(
            x.numel(),
            mcfg.n_embd,
            mcfg.n_layer,
            mcfg.vocab_size,
            resolve_precision(tcfg.dtype, dev),
            dev,
        ),
        "params": model.num_params(),
        "flops_per_token": model.flops_per_token(),
        "batch": x.size(0),
        "context": x.size(1),
        **_gpu_memory(dev),
    }


def case_generate(
    use_cache: bool, new_tokens: int = 500, dtype: str = "float32", device: str = "cpu"
) -> dict[str, Any]:
    """The 10.7M (`gpu` preset) model generating ``new_tokens`` tokens after a 1-token prompt."""
    from nanobard.config import get_preset, with_overrides
    from nanobard.model.gpt import GPT
    from nanobard.model.sampling import SamplingConfig, ScratchDecoder, generate_ids

    cfg = with_overrides(get_preset("gpu").model, {"vocab_size": 65, "dropout": 0.0})
    torch.manual_seed(0)
    dev = torch.device(device)
    model = GPT(cfg).to(dev).eval()
    # start the GPU's libraries outside the timing (a CPU has nothing to start)
    if dev.type != "cpu":
        sum(
            1
            for _ in generate_ids(
                ScratchDecoder(model, use_cache=use_cache, dtype=DTYPES[dtype]),
                [0],
                8,
                SamplingConfig(temperature=1.0, seed=1),
            )
        )
    t = _clock(dev)
    decoder = ScratchDecoder(model, use_cache=use_cache, dtype=DTYPES[dtype])
    n = sum(
        1 for _ in generate_ids(decoder, [0], new_tokens, SamplingConfig(temperature=1.0, seed=0))
    )
    return {
        "tokens_per_s": n / (_clock(dev) - t),
        "params": model.num_params(),
        "context": cfg.block_size,
    }


def case_finetune(
    mode: str,
    steps: int = 3,
    batch: int = 8,
    block: int = 128,
    loss: str = "chunked",
    device: str = "cpu",
) -> dict[str, Any]:
    """Training steps of the embedded SmolLM2-135M as ``nanobard finetune`` runs them: fused AdamW
    and, with ``loss="chunked"``, the chunked loss. ``mode``: float32, bfloat16 (autocast) or
    lora (rank 8, in the precision ``auto`` picks)."""
    from nanobard.hardware import resolve_precision
    from nanobard.hf.pretrained import EMBEDDED, load_pretrained
    from nanobard.hf.trainer import chunked_lm_loss

    dev = torch.device(device)
    pre = load_pretrained(EMBEDDED, device=dev)
    model = pre.model
    if mode == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"),
        )
    bf16 = mode == "bfloat16" or (
        mode == "lora" and resolve_precision("auto", dev) == torch.bfloat16
    )
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=True)
    x = torch.randint(0, 1000, (batch, block), device=dev)
    times = []
    for _ in range(steps + 1):
        t = _clock(dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            out = (
                chunked_lm_loss(model, x, x)
                if loss == "chunked"
                else model(input_ids=x, labels=x).loss
            )
        out.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(_clock(dev) - t)
    s = statistics.median(times[1:])
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    flops = 6 * pre.num_params if mode != "lora" else 4 * pre.num_params + 6 * trainable
    return {
        "tokens_per_s": batch * block / s,
        "gflops": batch * block / s * flops / 1e9,
        "params": pre.num_params,
        "bfloat16": bf16,
        **_gpu_memory(dev),
    }


def _first_eval_at_or_below(
    cmd: list[str], env: dict[str, str], target: float, parse: Any
) -> dict[str, Any]:
    """Run ``cmd``, read evaluations from its output with ``parse(line) -> (step, val) | None``,
    and stop it at the first val <= target. Seconds are counted from process start. The child's
    Python writes unbuffered (PYTHONUNBUFFERED), so a line arrives when it is printed, not when a
    pipe buffer fills or the process exits."""
    t = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        env={**env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    best, step, seconds, tail = float("inf"), 0, None, collections.deque(maxlen=20)
    with proc.stdout:
        for line in proc.stdout:
            tail.append(line)
            got = parse(line)
            if got is None:
                continue
            step, val = got
            best = min(best, val)
            if val <= target:
                seconds = time.perf_counter() - t
                proc.kill()
                break
    code = proc.wait()
    if seconds is None:  # never reached: the whole run, which must have ended well
        seconds = time.perf_counter() - t
        if code != 0:
            raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({code}): {''.join(tail)[-500:]}")
    return {"seconds": seconds, "best_val_loss": best, "reached": best <= target, "steps": step}


def case_time_to_loss(target: float, data: str, args: list[str]) -> dict[str, Any]:
    """Wall time of a real `nanobard train` process from its start to its first evaluation with
    val loss <= target, read from the line it logs per evaluation (``step N/M: val loss V, ...``,
    ``nanobard.train.loop.EVAL_LINE``), timed as nanoGPT's is below: both lines come before the
    checkpoint is saved, and saving and exiting are counted for neither."""
    from nanobard.train.loop import EVAL_LINE

    def parse(line: str) -> tuple[int, float] | None:
        m = EVAL_LINE.search(line)
        return (int(m.group(1)), float(m.group(2))) if m else None

    with tempfile.TemporaryDirectory() as out:
        cmd = [
            sys.executable,
            "-m",
            "nanobard",
            "train",
            "--corpus",
            "tinyshakespeare",
            "--out",
            out,
            "--target-loss",
            str(target),
            "--sample-tokens",
            "0",
            "--no-progress",
            "--device",
            "cpu",
            *args,
        ]
        env = {**os.environ, "NANOBARD_TINYSHAKESPEARE": data}
        got = _first_eval_at_or_below(cmd, env, target, parse)
    if got["best_val_loss"] == float("inf"):
        raise RuntimeError(f"no evaluation line from {' '.join(cmd)}")
    return got


NANOGPT_BABY = [
    "config/train_shakespeare_char.py",
    "--device=cpu",
    "--compile=False",
    "--eval_iters=20",
    "--log_interval=1",
    "--block_size=64",
    "--batch_size=12",
    "--n_layer=4",
    "--n_head=4",
    "--n_embd=128",
    "--max_iters=2000",
    "--lr_decay_iters=2000",
    "--dropout=0.0",
]


def case_nanogpt_time_to_loss(
    target: float, data: str, nanogpt: str, max_iters: int = 2000
) -> dict[str, Any]:
    """nanoGPT's CPU "baby" configuration (its README), run from a checkout at ``nanogpt``, timed
    the same way: from process start to the first evaluation with val loss <= target."""
    import re

    root = Path(nanogpt)
    prep = root / "data" / "shakespeare_char"
    if not (prep / "train.bin").exists():
        (prep / "input.txt").write_bytes(Path(data).read_bytes())
        subprocess.run([sys.executable, "prepare.py"], cwd=prep, check=True, capture_output=True)
    pattern = re.compile(r"step (\d+): train loss [\d.]+, val loss ([\d.]+)")

    def parse(line: str) -> tuple[int, float] | None:
        m = pattern.search(line)
        return (int(m.group(1)), float(m.group(2))) if m else None

    with tempfile.TemporaryDirectory() as out:
        args = [
            a if not a.startswith("--max_iters") else f"--max_iters={max_iters}"
            for a in NANOGPT_BABY
        ]
        cmd = [sys.executable, "train.py", *args, f"--out_dir={out}"]
        old = os.getcwd()
        os.chdir(root)
        try:
            return _first_eval_at_or_below(cmd, dict(os.environ), target, parse)
        finally:
            os.chdir(old)


def case_ten_minutes(
    data: str,
    seed: int = 1337,
    preset: str = "cpu-10min",
    rescore_batches: int = 200,
    extra: list[str] | None = None,
) -> dict[str, Any]:
    """`nanobard train --preset cpu-10min` on tiny Shakespeare, then its best checkpoint re-scored
    on ``rescore_batches`` validation batches x 3 seeds (the in-run figure averages 20 batches)."""
    from nanobard.data.corpus import load_split
    from nanobard.model.checkpoint import load_model
    from nanobard.train.step import EVAL_SEED_OFFSET, estimate_loss

    with tempfile.TemporaryDirectory() as out:
        cmd = [
            sys.executable,
            "-m",
            "nanobard",
            "-q",
            "train",
            "--preset",
            preset,
            "--corpus",
            "tinyshakespeare",
            "--out",
            out,
            "--seed",
            str(seed),
            "--sample-tokens",
            "0",
            "--no-progress",
            "--device",
            "cpu",
            *(extra or []),
        ]
        t = time.perf_counter()
        proc = subprocess.run(
            cmd,
            env={**os.environ, "NANOBARD_TINYSHAKESPEARE": data},
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - t
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-500:])
        rows = [json.loads(ln) for ln in Path(out, "metrics.jsonl").read_text().splitlines()]
        model, tok, _ = load_model(Path(out, "model_scratch_best.pt"))
        val = torch.tensor(tok.encode(load_split(data_path=data).val))
        cfg = json.loads(Path(out, "config.json").read_text())["train"]
        rescored = [
            estimate_loss(
                model,
                val,
                model.config.block_size,
                cfg["batch_size"],
                rescore_batches,
                s + EVAL_SEED_OFFSET,
                torch.device("cpu"),
                "float32",
            )
            for s in (1, 2, 3)
        ]
    best = min(rows, key=lambda r: r["val_loss"])
    return {
        "seconds": seconds,
        "best_val_loss": best["val_loss"],
        "best_step": best["step"],
        "best_at_s": best["elapsed_s"],
        "steps": rows[-1]["step"],
        "rescored_val_loss": statistics.mean(rescored),
        "rescored": rescored,
    }


CASES = {
    "matmul": case_matmul,
    "train": case_train,
    "generate": case_generate,
    "finetune": case_finetune,
    "time_to_loss": case_time_to_loss,
    "nanogpt": case_nanogpt_time_to_loss,
    "ten_minutes": case_ten_minutes,
}
