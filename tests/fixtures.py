"""Builders shared by the tests: tiny configs, a tiny local GPT-2 with a BPE tokenizer trained here,
synthetic records of every study stage, a whole-study configuration. Nothing is downloaded."""

from __future__ import annotations

import math
import random
from pathlib import Path

import torch

from nanobard.config import ModelConfig, TrainConfig
from nanobard.hf.finetune import FinetuneResult, Sample
from nanobard.interp.analysis import Analysis
from nanobard.interp.attention import (
    AttentionAnalysis,
    Causality,
    attention_findings,
    head_statistics,
)
from nanobard.interp.circuits import (
    AblationResult,
    InductionResult,
    LogitLensResult,
    PositionLoss,
    circuit_findings,
)
from nanobard.interp.patching import LogitAttribution, PatchingResult
from nanobard.model.evaluate import Score
from nanobard.records import EvalRow
from nanobard.rundir import RunDir
from nanobard.study.records import (
    AttentionStudy,
    CorpusInfo,
    Headline,
    InterpretStudy,
    Scores,
    StudyState,
    TrackSummary,
)
from nanobard.train.loop import TrainResult

# --- training

TINY_MODEL = ModelConfig(block_size=16, n_layer=2, n_head=2, n_embd=32)


def tcfg(**kw):
    base = dict(
        batch_size=8,
        max_steps=30,
        lr=3e-3,
        min_lr=3e-4,
        warmup_steps=5,
        eval_interval=10,
        eval_iters=2,
        seed=7,
    )
    return TrainConfig(**{**base, **kw})


# --- a tiny Hugging Face model


def build_tiny_hf_model(folder: Path, text: str, vocab_size: int = 300, seed: int = 0) -> Path:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        [text], vocab_size=vocab_size, min_frequency=2, special_tokens=["<|endoftext|>"]
    )
    tok = GPT2TokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=4,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    model = GPT2LMHeadModel(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


# --- the study's records


def _grid(rng: random.Random, L: int, H: int) -> list[list[float]]:
    return [[round(rng.random(), 3) for _ in range(H)] for _ in range(L)]


def synthetic_analysis(
    model: str, L: int, H: int, *, ablated: list[int] | None = None, seed: int = 0, width: int = 96
) -> Analysis:
    """One model's interpretability results with plausible shapes and values. ``ablated``: the
    layers whose heads were ablated (all by default); the others' costs are None."""
    rng = random.Random(seed)
    layers = list(range(L)) if ablated is None else ablated
    ind = InductionResult(model, 20, 4, [0, 60], _grid(rng, L, H), _grid(rng, L, H), 4.0, 1.5)
    delta = [
        [round(rng.uniform(-0.01, 0.3), 4) if i in layers else None for _ in range(H)]
        for i in range(L)
    ]
    abl = AblationResult(model, "mean", layers, delta, 2.1, 256, 900, 0.5)
    lens = LogitLensResult(
        model,
        list(range(L + 1)),
        [6.0 - 4.0 * i / L for i in range(L + 1)],
        [0.1 + 0.9 * i / L for i in range(L + 1)],
        2.0,
        256,
        900,
    )
    bpc = [None] + [2.0 + 2.0 / math.sqrt(x) for x in range(1, width)]
    pos = PositionLoss(model, bpc, [0] + [12] * (width - 1), 2.2, 12, 64)
    said = circuit_findings(induction=ind, ablation=abl, lens=lens, positions=pos)
    return Analysis(
        model, {"ablation": {"max_tokens": 256}}, {"induction": 0.1}, ind, abl, lens, pos, said
    )


def synthetic_interpret(
    scratch_name: str = "from scratch", hf_name: str = "tiny-gpt2"
) -> InterpretStudy:
    return InterpretStudy(
        scratch=synthetic_analysis(scratch_name, 2, 4, seed=1),
        pretrained=synthetic_analysis(
            f"{hf_name} fine-tuned", 6, 3, ablated=[0, 3, 5], seed=2, width=160
        ),
        pretrained_before=synthetic_analysis(
            f"{hf_name} before fine-tuning", 6, 3, ablated=[0, 3], seed=3, width=160
        ),
        patching_scratch=synthetic_patching(scratch_name, 2, 4, seed=4),
        patching_pretrained=synthetic_patching(
            f"{hf_name} fine-tuned", 6, 3, seed=5, layers=[0, 3, 5]
        ),  # fmt: skip
    )


def synthetic_patching(
    name: str, L: int, H: int, *, seed: int, T: int = 12, layers: list[int] | None = None
) -> PatchingResult:
    """A patching result whose clue moves to the last position at layer L // 2; ``layers``:
    the layers patched (None: all)."""
    rng = random.Random(seed)
    keep = set(range(L) if layers is None else layers)

    def row(layer: int, n: int, hot: int | None) -> list[float | None]:
        if layer not in keep:
            return [None] * n
        return [1.0 if i == hot else round(rng.uniform(-0.1, 0.2), 3) for i in range(n)]

    clean = list(f"ROMEO: {EVIL}"[:T].ljust(T, "x"))
    return PatchingResult(
        model=name, tokens_clean=clean, tokens_corrupt=["J", *clean[1:]], target="O",
        target_id=3, logit_clean=4.0, logit_corrupt=1.0,
        resid_pre=[row(i, T, 0 if i < L // 2 else T - 1) for i in range(L)],
        attn_out=[row(i, T, T - 1 if i == L // 2 else None) for i in range(L)],
        mlp_out=[row(i, T, None) for i in range(L)],
        heads=[row(i, H, 1 if i == L // 2 else None) for i in range(L)],
        dla=LogitAttribution(embed=0.1, heads=_grid(rng, L, H), attn_bias=[0.0] * L,
                             mlp=[0.2] * L, rest=0.05, logit=4.0),
    )  # fmt: skip


def synthetic_history(n: int = 6, *, heads: bool = True, L: int = 2, H: int = 4) -> list[EvalRow]:
    """A training history whose loss falls and whose L1H2 becomes an induction head midway."""
    rows = []
    for k in range(n):
        prev = [[min(1.0, 0.1 + 0.15 * k * (h == 1)) for h in range(H)] for _ in range(L)]
        ind = [
            [0.9 if (i, h) == (1, 2) and k >= n // 2 else 0.05 for h in range(H)] for i in range(L)
        ]
        rows.append(
            EvalRow(
                step=10 * k,
                tokens=2560 * k,
                val_loss=4.2 - 0.4 * k,
                train_loss=4.1 - 0.4 * k,
                lr=1e-3,
                heads={"previous_token": prev, "induction": ind} if heads else None,
            )
        )
    return rows


def synthetic_headline(hf_name: str = "tiny-gpt2") -> Headline:
    return Headline(
        corpus="shakespeare",
        score_chars=1500,
        scratch=TrackSummary("from scratch", 12_000, 12.5, 9000.0, 40, 35.0, 2.6),
        pretrained=TrackSummary(
            hf_name, 135_000_000, 30.0, 800.0, 6, 12.0, 1.9, 2.3, "the default"
        ),
    )


EVIL = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
HF = f"tiny-gpt2 {EVIL}"  # a model name is outside text too
TEXT = f"ROMEO:\nBut soft {EVIL} light"
# a 1 x 1 PNG: the report embeds whatever figures the run folder has
PNG_1PX = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d4944415478"
    "da63f8cfc0f01f0005000201d1b6a0a00000000049454e44ae426082"
)


def _causal_weights(L: int, H: int, T: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(L, H, T, T, generator=g).masked_fill(
        torch.ones(T, T).triu(1).bool(), float("-inf")
    )
    return scores.softmax(-1)  # [layer, head, T, T], rows sum to 1


def _attention(name: str, tokens: list[str], weights: torch.Tensor) -> AttentionAnalysis:
    L, H, T, _ = weights.shape
    stats = head_statistics(weights)
    return AttentionAnalysis(
        name,
        L,
        H,
        tokens,
        stats,
        attention_findings(stats, name),
        Causality(T, 0.0, "pass", 0.0, "pass"),
        2.0,
        2.5,
    )


def _score(model: str, bpc: float) -> Score:
    return Score(
        model, 1500, 1500 if model == "scratch" else 400, bpc * 1500 * math.log(2), 32, 16, 0.5
    )


def _samples(prompts: list[str]) -> list[Sample]:
    return [
        Sample(m, s, p, f" {m} continues with {s} {EVIL if m == 'after' else ''}")
        for p in prompts
        for s in ("greedy", "top_k", "temperature")
        for m in ("scratch", "before", "after")
    ]


def synthetic_study(
    out: Path, *, figures: bool = True, heads: bool = True
) -> tuple[RunDir, StudyState, Headline]:
    """A finished study's records in ``out``: a 2-layer x 4-head scratch model, a 6 x 3 pretrained
    one (the ablation skipped some of its layers), an evil string in the corpus text, a prompt, a
    sample and the pretrained model's name; attention_weights.pt and, with ``figures``, one 1-pixel
    PNG per figure name."""
    run = RunDir(out).ensure()
    prompts = ["ROMEO:\n", f"{EVIL} "]
    hf_tokens = [
        "ROMEO",
        ":\n",
        "But",
        " soft",
        " <",
        "script",
        ">",
        "alert",
        "(1)",
        "</",
        "script",
        ">",
        " light",
    ]
    w_s, w_h = _causal_weights(2, 4, len(TEXT), 0), _causal_weights(6, 3, len(hf_tokens), 1)
    torch.save({"scratch": w_s, "pretrained": w_h}, run / RunDir.ATTENTION_WEIGHTS)
    history = synthetic_history(heads=heads)
    state = StudyState(
        corpus=CorpusInfo(f"corpus {EVIL}", 9000, 1000, 1500, 60, prompts, TEXT),
        scratch=TrainResult(
            out, 12_000, 40, 10_240, 12.5, 9000.0, 4.2, 2.2, 2.2, 2.1, "time", history, 15.0
        ),
        finetune=FinetuneResult(
            out,
            HF,
            "a tiny local model",
            135_000,
            135_000,
            6,
            768,
            30.0,
            800.0,
            _score("before", 2.3),
            _score("after", 1.9),
            synthetic_history(3, heads=False),
            [s for s in _samples(prompts) if s.model != "scratch"],
            20.0,
        ),
        evaluate=Scores(_score("scratch", 2.6), _score("before", 2.3), _score("after", 1.9), 1500),
        attention=AttentionStudy(
            TEXT,
            _attention("from scratch", list(TEXT), w_s),
            _attention(f"{HF} fine-tuned", hf_tokens, w_h),
        ),
        interpret=synthetic_interpret(hf_name=HF),
        samples=_samples(prompts),
        seconds={
            "corpus": 0.1,
            "scratch": 16.2,
            "finetune": 24.0,
            "evaluate": 1.0,
            "attention": 0.5,
            "interpret": 3.0,
            "samples": 2.0,
            "figures": 4.0,
        },
    )
    names = [
        RunDir.FIG_TRAINING_SCRATCH,
        RunDir.FIG_TRAINING_HF,
        RunDir.FIG_COMPARISON,
        RunDir.FIG_ATTENTION_SCRATCH,
        RunDir.FIG_ATTENTION_HF,
        *RunDir.FIG_INDUCTION.values(),
        *RunDir.FIG_ABLATION.values(),
        RunDir.FIG_LOGIT_LENS,
        RunDir.FIG_LOSS_BY_POSITION,
        *RunDir.FIG_PATCHING.values(),
    ] + ([RunDir.FIG_HEAD_FORMATION] * heads)
    for name in names if figures else []:
        (run / name).write_bytes(PNG_1PX)
    state.figures = names if figures else []
    return run, state, synthetic_headline(HF)


# --- a whole study in seconds


def study_kwargs(tmp_path: Path, text: str, evil: bool = True, **extra) -> dict:
    """A whole study in seconds: a tiny corpus (with a hostile string in it), a tiny scratch model
    and a tiny local GPT-2 (nothing downloaded)."""
    if evil:
        text = (
            text[:12_000] + f"\n\nROMEO:\nWhat is this {EVIL} in my text?\n\n" + text[12_000:16_000]
        )
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text)
    hf = build_tiny_hf_model(tmp_path / "tiny_gpt2", text)
    return dict(
        data_path=str(corpus),
        scratch_overrides=dict(
            n_layer=2,
            n_head=4,
            n_embd=16,
            block_size=32,
            batch_size=8,
            max_steps=20,
            eval_interval=10,
            eval_iters=2,
            warmup_steps=2,
        ),
        finetune_overrides=dict(
            pretrained=str(hf),
            block_size=32,
            batch_size=4,
            max_steps=6,
            eval_interval=3,
            eval_blocks=2,
            score_chars=1500,
            sample_tokens=8,
            precision="float32",
            warmup_steps=1,
        ),
        prompts=("ROMEO:\n", f"{EVIL} "),
        progress=False,
        **extra,
    )


def disk_full(monkeypatch, after: int = 0) -> None:
    """From now on the disk takes ``after`` more bytes of what nanobard.files writes, then refuses
    with ENOSPC: its ``os.write`` calls, the system calls a full disk fails, write what fits and
    then raise, as a full disk does."""
    import errno
    import os
    import types

    from nanobard import files

    left = [after]

    def write(fd, data):
        n = min(len(data), left[0])
        if n == 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        left[0] -= n
        return os.write(fd, bytes(data[:n]))

    full_os = types.SimpleNamespace(
        **{k: getattr(os, k) for k in dir(os) if not k.startswith("__")}
    )
    full_os.write = write
    monkeypatch.setattr(files, "os", full_os)


# what torch's CPU allocator raises when the memory a tensor asks for is not there
CPU_OOM = (
    "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
    "tried to allocate 68719476736 bytes. Error code 12 (Cannot allocate memory)"
)


def tensorboard_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of the event files in ``log_dir``, read by TensorBoard itself."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}
