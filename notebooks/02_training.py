# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 2. Training a GPT from scratch
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/nanobard/nanobard/blob/main/notebooks/02_training.ipynb)
#
# How `nanobard.train.loop.train` turns a randomly initialised model into one that writes pseudo-
# Shakespeare, and the tools around the loop that every real training run needs. One section per
# learning outcome of the seed project:
#
# 1. Training loops from scratch
# 2. Loss tracking and validation
# 3. Model checkpointing and resumption
# 4. Hyperparameter tuning strategies
# 5. Early stopping
# 6. Learning rate scheduling
#
# About 3-4 minutes on a 2-core CPU (several short training runs). With `NANOBARD_NOTEBOOK_TINY=1`
# every size shrinks and the whole notebook runs in about a minute. Everything it writes goes to
# `runs/notebooks/02_training/`.

# %%
# Setup for Colab or any fresh Python: installs nanobard when it is missing (nothing otherwise)
import importlib.metadata
import importlib.util
import subprocess
import sys


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *args], check=True)


if importlib.util.find_spec("nanobard") is None:
    _pip("nanobard @ git+https://github.com/nanobard/nanobard@main")

from nanobard.hardware import pick_device

DEVICE = pick_device("auto")  # a GPU when there is one (CUDA, then Apple MPS), else the CPU
print(f"nanobard runs on {DEVICE}")
if DEVICE.type == "cpu" and "google.colab" in sys.modules:
    print("for a GPU: Runtime > Change runtime type > T4 GPU, then run this cell again")

# %%
import dataclasses
import inspect
import json
import math
import time
from dataclasses import asdict

import matplotlib.pyplot as plt  # figures are saved as files (nanobard.plots selects Agg)
import torch

from nanobard.config import PRESETS, ModelConfig, TrainConfig
from nanobard.hf.pretrained import scratch_generator
from nanobard.lessons.figures import plot_lr_sweep
from nanobard.lessons.notebook import start
from nanobard.lessons.scratch import lr_sweep
from nanobard.model.sampling import STRATEGIES
from nanobard.study.figures import training_progress
from nanobard.train.loop import RunState, read_metrics, train
from nanobard.train.schedule import lr_at
from nanobard.train.step import estimate_loss, train_step

# its output folder, runs/notebooks/02_training/, and the tiny mode (toy sizes)
nb = start("02_training")
TINY, OUT, show = nb.tiny, nb.out, nb.show

data = nb.corpus()  # the 38 plays shipped with nanobard (a slice of them in tiny mode)
print(
    f"{data.name}: {len(data.train):,} training characters, "
    f"{len(data.val):,} validation characters, {data.tokenizer.vocab_size} distinct characters"
)

# nanoGPT's CPU "baby" model: 4 layers, 4 heads, 128 dims, context 64 (about 0.8M parameters)
MODEL = ModelConfig(block_size=64, n_layer=4, n_head=4, n_embd=128)
TRAIN = TrainConfig(
    batch_size=16,
    max_steps=600,
    lr=3e-3,
    min_lr=3e-4,
    warmup_steps=50,
    eval_interval=100,
    eval_iters=10,
)
if TINY:
    MODEL = ModelConfig(block_size=32, n_layer=2, n_head=4, n_embd=64)
    TRAIN = TrainConfig(
        batch_size=8,
        max_steps=40,
        lr=3e-3,
        min_lr=3e-4,
        warmup_steps=5,
        eval_interval=10,
        eval_iters=2,
    )

# %% [markdown]
# ## 1. Training loops from scratch
#
# Training repeats one step: take a batch of examples, run the model to get the loss, let autograd
# compute the gradient of the loss with respect to every weight (`loss.backward()`), and let the
# optimizer move the weights a little against it. Here an example is a window of 64 characters and
# its target is the same window shifted by one: at every position the model is asked for the next
# character, and the loss is the cross-entropy of its prediction (in nats per character; a model
# guessing uniformly among V characters scores ln V). nanobard's step, `train.train_step`, is short
# enough to read in full. It also clips the gradient's norm (one unlucky batch cannot throw the
# weights far) and can accumulate several micro-batches into one step:

# %%
print(inspect.getsource(train_step))

# %% [markdown]
# `train.train` wraps that step in what a real run needs, each the subject of a section below: a
# learning rate that changes over the run, an evaluation on held-out text every `eval_interval`
# steps, checkpoints, and the rules that end a run (a step, epoch or time budget, early stopping, a
# target loss). Its counters live in a small `RunState` that is saved in every checkpoint.

# %%
res = train(MODEL, TRAIN, data, OUT / "main", progress=False)
print(
    f"{res.num_params:,} parameters; {res.steps} steps, {res.tokens:,} characters in "
    f"{res.elapsed_s:.1f} s ({res.tokens_per_s:,.0f} characters/s); stopped by: {res.stopped}"
)
print(
    f"validation loss {res.first_val_loss:.3f} -> {res.best_val_loss:.3f} nats per character "
    f"(uniform guessing: ln {data.tokenizer.vocab_size} = "
    f"{math.log(data.tokenizer.vocab_size):.3f})"
)
print("files:", sorted(p.name for p in res.out_dir.iterdir()))

ckpt = torch.load(OUT / "main" / "ckpt_last.pt", weights_only=True)
print(RunState.from_dict(json.loads(ckpt["train_state"]["counters"])))

# %% [markdown]
# What did 600 steps buy? A sample from the best checkpoint (temperature 0.8):

# %%
gen = scratch_generator(OUT / "main" / "model_scratch_best.pt")
print("ROMEO:\n" + gen.complete("ROMEO:\n", 60 if TINY else 250, STRATEGIES["temperature"]))

# %% [markdown]
# ## 2. Loss tracking and validation
#
# The loss on the batch just trained on says how well the model fits what it has seen. What we care
# about is text it has *not* seen, so the corpus is split once: the first 90% of the characters
# train, the last 10% validate. At each evaluation, `estimate_loss` averages the loss over
# `eval_iters` batches of each part. They are the same batches every time (a fixed seed), so two
# evaluations differ only because the model changed, not because the batches did:

# %%
print(inspect.getsource(estimate_loss))

# %%
print(f"{'step':>5} {'train':>7} {'validation':>10} {'val - train':>11} {'lr':>9}")
for r in res.history:
    print(
        f"{r.step:>5} {r.train_loss:>7.3f} {r.val_loss:>10.3f} {r.val_loss - r.train_loss:>+11.3f} "
        f"{r.lr:>9.2e}"
    )
rows = read_metrics(OUT / "main" / "metrics.jsonl")
print(f"metrics.jsonl holds the same {len(rows)} evaluations, one JSON line each")
show(training_progress(res.history, "the baby model on the plays", OUT / "training_progress.png"))

# %% [markdown]
# Read the two curves together. Both falling: the model is still learning something general. The gap
# between them (validation minus training) is the part of what it learned that does not carry over
# to new text. This run reads about 600,000 characters of a 4-million-character training text, so
# it cannot have memorised anything yet: a gap here comes from the validation text (the last plays
# of the file) being different text, not from overfitting. With little data the validation curve
# turns back up while the training curve keeps falling — overfitting; section 5 provokes exactly
# that and stops the run at the right time.

# %% [markdown]
# ## 3. Model checkpointing and resumption
#
# Training can be cut short (a crash, a full disk, a closed laptop, a time limit on a shared
# machine). At each evaluation `train` writes two checkpoints: `model_scratch_best.pt`, the weights
# with the lowest validation loss so far, and `ckpt_last.pt`, everything needed to continue: the
# weights, the optimizer's state (AdamW keeps two running averages per weight), the random number
# generators that draw batches and dropout masks, and the `RunState` counters. Files are written to
# a temporary name and renamed, so a crash mid-write leaves the previous checkpoint intact.
#
# `train(..., resume=True)` continues from `ckpt_last.pt`. Because it restores every source of
# randomness, a resumed run is not just "about the same": its final weights are *equal* to those of
# a run that was never interrupted. We check: run 2N steps straight; run N steps, stop, then resume
# to 2N in another folder; compare every weight tensor. (Dropout is switched on so that its random
# masks must resume too, and the cosine schedule's length is fixed with `lr_decay_steps`: a schedule
# sized from the step budget would differ between a run told "N steps" and one told "2N".)

# %%
N = 10 if TINY else 100
RESUME_MODEL = dataclasses.replace(MODEL, dropout=0.1)


def resume_cfg(steps):
    return dataclasses.replace(TRAIN, max_steps=steps, lr_decay_steps=2 * N, eval_interval=N // 2)


t0 = time.perf_counter()
train(RESUME_MODEL, resume_cfg(2 * N), data, OUT / "straight", progress=False)
first = train(RESUME_MODEL, resume_cfg(N), data, OUT / "resumed", progress=False)
print(f"first session: stopped at step {first.steps}")
second = train(RESUME_MODEL, resume_cfg(2 * N), data, OUT / "resumed", resume=True, progress=False)
print(f"second session (resume=True): continued to step {second.steps}")
a = torch.load(OUT / "straight" / "ckpt_last.pt", weights_only=True)["model"]
b = torch.load(OUT / "resumed" / "ckpt_last.pt", weights_only=True)["model"]
same = all(torch.equal(a[k], b[k]) for k in a)
print(
    f"{len(a)} weight tensors compared with torch.equal; resumed run equals the straight run: "
    f"{same} ({time.perf_counter() - t0:.0f} s for the three runs)"
)

# %% [markdown]
# A checkpoint holds only tensors, numbers and JSON strings, so `torch.load(..., weights_only=True)`
# opens it; that mode refuses to unpickle any other object, so a checkpoint file someone hands you
# cannot run code when loaded. Anyone can read one without nanobard:

# %%
ckpt = torch.load(OUT / "resumed" / "ckpt_last.pt", weights_only=True)
for key, value in ckpt.items():
    print(f"{key:<13} {type(value).__name__}")
print("train_state:", {k: type(v).__name__ for k, v in ckpt["train_state"].items()})
print("model_config:", json.loads(ckpt["model_config"]))
print("counters:", json.loads(ckpt["train_state"]["counters"]))

# %% [markdown]
# On the command line the same works with `nanobard train --out DIR --resume`. Ctrl-C or `kill`
# (SIGTERM) during training finishes the current step, writes `ckpt_last.pt` and says how to resume.

# %% [markdown]
# ## 4. Hyperparameter tuning strategies
#
# Hyperparameters are the choices training does not learn: the learning rate, batch size, model
# shape, warmup, weight decay, dropout. A workable strategy on a small budget:
#
# 1. **Learning rate first.** It matters most, and its good range is narrow. Try values spaced by a
#    factor of about 3 (a log scale), each for the same short run.
# 2. **Change one thing at a time**, with the same seed and the same batches, so a difference comes
#    from the setting and not from luck.
# 3. **Fix the budget you care about.** If you have ten minutes, compare settings at ten minutes of
#    wall time, not at a number of steps: a bigger batch or model makes each step slower.
# 4. **Re-check the winner** on more validation batches and another seed before you believe a
#    difference of 0.01.
#
# `lessons.lr_sweep` does step 1: the same model for the same number of steps at each learning
# rate (the same seed and batches, early stopping off), keeping each run's validation curve.

# %%
LRS = (1e-3, 1e-2) if TINY else (1e-4, 1e-3, 3e-3, 1e-2, 1e-1)
sweep = lr_sweep(MODEL, TRAIN, data, LRS, steps=20 if TINY else 200, out_dir=OUT / "lr_sweep")
for r in sweep.runs:
    best = (
        "diverged before its first evaluation"
        if r.best_val_loss is None
        else f"{r.best_val_loss:.3f}"
    )
    print(f"lr {r.lr:<8g} best validation loss {best}{' (diverged)' if r.diverged else ''}")
print(f"best lr of the sweep: {sweep.best_lr}")
show(plot_lr_sweep(sweep, OUT / "lr_sweep.png"))

# %% [markdown]
# Too small a learning rate barely moves in the steps given; too large a one makes the loss jump
# around or blow up. The best value is usually just below the largest rate that still trains
# smoothly. A short sweep is biased toward larger rates (a long run has time to make up for a slow
# start), so after choosing, confirm with a full-length run.
#
# **How nanobard's presets were chosen.** The `quick`, `fast` and `cpu-10min` presets
# (`src/nanobard/config.py`) came from measurements on 2-core CPUs of both kinds (AVX-512 BF16, and
# AVX2 without native bfloat16; the 240-step `fast` on an Intel Xeon with AMX), recorded in
# `benchmarks/README.md`, not from guesses:
#
# - `quick` asks: what do 75 s buy the 0.8M-parameter model of the default study? Muon at lr 1e-2
#   reached validation loss 1.674 where AdamW at lr 2e-3 reached 2.026 (AVX-512 BF16; 1.722 against
#   2.164 on AVX2). A context of 64 characters in batches of 32 (the same characters per step as
#   128 × 16) then scored 0.01-0.03 bits/char lower than 128 × 16 (Intel Xeon with AMX).
# - `fast` asks: what reaches nanoGPT's baby-config validation loss (1.886 on tiny Shakespeare) in
#   the least wall time? Timed runs of batch sizes and learning rates with AdamW found batch 16,
#   lr 4e-3 best; switching the block matrices to the Muon optimizer, then re-tuning on both CPU
#   kinds, gave lr 1.4e-2, 30 warmup steps and a 380-step schedule (now the `lesson` preset the
#   other notebooks train). Two changes to the architecture, rotary positions and normalised
#   queries and keys, then learned enough more per step to reach the same loss in 240 steps with
#   10 warmup steps (times against nanoGPT in `benchmarks/README.md`). The queries and keys are
#   normalised by LayerNorm rather than RMSNorm: the same loss, and a CPU step ~10% shorter,
#   because torch has a fused LayerNorm backward on a CPU and no fused RMSNorm one.
# - `cpu-10min` asks: what is the lowest validation loss ten minutes buy? A wider model (4 layers ×
#   192, context 128), Muon and weight decay 0.3 (AdamW's best in ten minutes: 1.543).
#   `torch.compile` and the tanh approximation of GELU were measured and dropped. Dropout first
#   cost half the steps: on a CPU, dropout on the attention weights moves attention off its fused
#   kernel. Dropout 0.1 everywhere else (`attn_dropout=0`) costs about a fifth of the steps; it
#   stops a fast machine from overfitting (re-scored 1.469 and 1.460 on two seeds, 1.491 without
#   on the first; Intel Xeon with AMX, ~4,900 steps) but leaves a slow one undertrained (1.559
#   against 1.494 with AVX2 emulated, ~2,000 steps), so the preset leaves it off and
#   `--dropout 0.1 --attn-dropout 0` is the flag for fast machines. With it, `fast`'s rotary
#   positions and normalised queries and keys and a learning rate of 4e-3 did better again on
#   both seeds (1.463 and 1.476 against 1.478 and 1.479 the same day). A cosine over a fixed 2,500
#   steps left a slower CPU with its
#   learning rate still high when time ran out, so the schedule is now sized to the 570 s budget
#   from the speed of the first steps. Re-scored on 200
#   validation batches × 3 seeds, the best settings were within noise of each other — step 4 above.

# %%
default_model, default_train = asdict(ModelConfig()), asdict(TrainConfig())
for name in ("quick", "baby", "lesson", "fast", "cpu-10min"):
    p = PRESETS[name]
    print(f"{name}: {p.description}")
    print("   model:", {k: v for k, v in asdict(p.model).items() if v != default_model[k]})
    print("   train:", {k: v for k, v in asdict(p.train).items() if v != default_train[k]}, "\n")

# %% [markdown]
# ## 5. Early stopping
#
# When the training text is small, a model eventually memorises it: the training loss keeps falling
# while the validation loss turns back up. Training past that point makes the model worse on new
# text. **Early stopping** watches the validation loss and stops when it has not improved for
# `patience` evaluations in a row; because `model_scratch_best.pt` is written at every improvement,
# the best model is kept whatever happens afterwards.
#
# To provoke it we train the same model on only the first 20,000 characters of the training text
# (the validation text stays the same), with `patience=3` and a budget far longer than needed.

# %%
ES_CHARS = 5_000 if TINY else 20_000
small = dataclasses.replace(data, train=data.train[:ES_CHARS])  # same validation text
ES = dataclasses.replace(
    TRAIN,
    max_steps=200 if TINY else 2000,
    eval_interval=10 if TINY else 50,
    patience=2 if TINY else 3,
    warmup_steps=5 if TINY else 20,
)
es = train(MODEL, ES, small, OUT / "early_stopping", progress=False)
best = json.loads(
    torch.load(OUT / "early_stopping" / "model_scratch_best.pt", weights_only=True)["metrics"]
)
print(f"stopped: {es.stopped}, at step {es.steps} of at most {ES.max_steps} ({es.elapsed_s:.0f} s)")
print(
    f"best checkpoint: step {best['step']}, validation loss {best['val_loss']:.3f}; "
    f"last evaluation: validation {es.final_val_loss:.3f}, training {es.final_train_loss:.3f}"
)
print(f"{'step':>5} {'train':>7} {'validation':>10}")
for r in es.history:
    print(
        f"{r.step:>5} {r.train_loss:>7.3f} "
        f"{r.val_loss:>10.3f}{'   <- best' if r.step == best['step'] else ''}"
    )
show(
    training_progress(
        es.history,
        f"{ES_CHARS:,} training characters, patience {ES.patience}",
        OUT / "early_stopping.png",
    )
)

# %% [markdown]
# Patience trades time for safety: too small, and one noisy evaluation ends a run that was still
# improving; too large, and compute is wasted past the best point (which costs nothing in quality,
# since the best checkpoint is kept). `TrainConfig(target_loss=...)` is the other stopping rule:
# stop at the first evaluation at or below a loss you are happy with. The `cpu-10min` preset uses
# `patience=2`.

# %% [markdown]
# ## 6. Learning rate scheduling
#
# The learning rate need not be constant. nanobard's schedule (`schedule.lr_at`) has two parts:
#
# - **linear warmup**: over the first `warmup_steps` steps the rate climbs from nearly 0 to `lr`. At
#   the start the weights are random and AdamW's running averages of the gradient are still empty,
#   so full-size steps would be badly aimed;
# - **cosine decay**: from `lr` down to `min_lr` along half a cosine over the rest of the run. Large
#   steps early make fast progress; small steps late settle the weights into a minimum instead of
#   bouncing around it.
#
# The length of the decay is the step budget (or `lr_decay_steps`); with only a time budget, the
# step count is sized from the speed measured in the first steps, so the schedule still ends on
# time. We plot the schedule of this notebook's run — with the learning rate the loop logged at each
# evaluation on top — and of the `cpu-10min` preset, and compare our run with the same run at a
# constant learning rate:

# %%
# lr_at then returns lr at every step
constant_cfg = dataclasses.replace(TRAIN, min_lr=TRAIN.lr, warmup_steps=0)
constant = train(MODEL, constant_cfg, data, OUT / "constant_lr", progress=False)
print(
    f"warmup + cosine ({TRAIN.lr:g} -> {TRAIN.min_lr:g}): "
    f"best validation loss {res.best_val_loss:.3f}, last {res.final_val_loss:.3f}"
)
print(
    f"constant {TRAIN.lr:g}:{'':>17} best validation loss {constant.best_val_loss:.3f}, "
    f"last {constant.final_val_loss:.3f}"
)

# %%
ten = PRESETS["cpu-10min"].train
fig, axes = plt.subplots(1, 3, figsize=(16, 4))
steps = range(TRAIN.max_steps + 1)
axes[0].plot(
    steps,
    [lr_at(s, TRAIN, TRAIN.max_steps, 0.0) for s in steps],
    label="lr_at(step): warmup + cosine",
)
axes[0].plot(
    [r.step for r in res.history],
    [r.lr for r in res.history],
    "o",
    label="logged at each evaluation",
)
axes[0].axhline(TRAIN.lr, color="tab:red", ls=":", label="constant")
axes[0].set_title("this notebook's run")
# cpu-10min has no step count: the loop sizes the cosine to its time budget from the speed of the
# first steps. Two illustrative machines: one that manages 1,800 steps in the budget, one 3,000.
for horizon in (1800, 3000):
    axes[1].plot(
        range(horizon + 1),
        [lr_at(s, ten, horizon, 0.0) for s in range(horizon + 1)],
        label=f"a CPU that fits {horizon:,} steps in {ten.max_time:.0f} s",
    )
axes[1].set_title(f"cpu-10min: warmup {ten.warmup_steps}, cosine sized to the time budget")
axes[1].legend(fontsize=8)
for ax in axes[:2]:
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.grid(alpha=0.3)
axes[0].legend(fontsize=8)
for run, label in ((res, "warmup + cosine"), (constant, "constant")):
    axes[2].plot(
        [r.step for r in run.history], [r.val_loss for r in run.history], "o-", label=label
    )
axes[2].set_xlabel("step")
axes[2].set_ylabel("validation loss (nats per character)")
axes[2].set_title("the same run, two schedules")
axes[2].grid(alpha=0.3)
axes[2].legend()
fig.savefig(OUT / "lr_schedule.png", dpi=110, bbox_inches="tight")
plt.close(fig)
show(OUT / "lr_schedule.png")
for s in (0, TRAIN.warmup_steps // 2, TRAIN.warmup_steps, TRAIN.max_steps // 2, TRAIN.max_steps):
    print(f"step {s:>4}: lr {lr_at(s, TRAIN, TRAIN.max_steps, 0.0):.2e}")

# %% [markdown]
# ## Where to go next
#
# - `nanobard train --preset cpu-10min` trains the best model ten minutes of a CPU buy, with every
#   technique above; `nanobard train --help` lists one flag per `TrainConfig` field.
# - `benchmarks/README.md`: what made training fast here (Muon, bfloat16, the KV cache) and what did
#   not help.
# - `03_transfer_learning.ipynb`: when to train from scratch at all, and when to fine-tune a
#   pretrained model instead.
# - Loshchilov & Hutter, *SGDR* (2017) and *Decoupled Weight Decay Regularization* (2019) for cosine
#   schedules and AdamW; Jordan et al. (2024) on Muon; nanoGPT's `train.py`.
