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
# # 1. Transformers, piece by piece
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/nanobard/nanobard/blob/main/notebooks/01_transformers.ipynb)
#
# This notebook takes apart the model that nanobard trains from scratch: how text becomes vectors,
# how attention mixes them, why a GPT has several attention heads, and what the causal mask does
# (and what goes wrong without it). Every step calls the package — `src/nanobard/model/gpt.py` is
# the whole model, read top to bottom — and prints a number you can check.
#
# One section per learning outcome of the seed project:
#
# 1. Token and positional embeddings
# 2. Scaled dot-product attention
# 3. Multi-head attention mechanisms
# 4. Encoder-only vs decoder architectures
# 5. Causal masking for autoregressive models
#
# About 1-2 minutes on a 2-core CPU. With `NANOBARD_NOTEBOOK_TINY=1` every size shrinks and the
# whole notebook runs in about a minute (the test suite runs it that way). Everything it writes goes
# to `runs/notebooks/01_transformers/`, relative to the working directory.

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
import math

import matplotlib.pyplot as plt  # figures are saved as files (nanobard.plots selects Agg)
import torch
from torch.nn import functional as F

from nanobard.config import resolve_preset
from nanobard.data.prompts import attention_text
from nanobard.interp.attention import attention_maps, causality_check, head_statistics
from nanobard.interp.figures import attention_heads
from nanobard.interp.lens import make_lens
from nanobard.lessons.figures import plot_encoder_vs_decoder
from nanobard.lessons.notebook import start
from nanobard.lessons.scratch import encoder_vs_decoder
from nanobard.model.checkpoint import load_model
from nanobard.model.gpt import GPT, sinusoidal_encoding
from nanobard.train.loop import train

# its output folder, runs/notebooks/01_transformers/, and the tiny mode (toy sizes)
nb = start("01_transformers")
TINY, OUT, show = nb.tiny, nb.out, nb.show

data = nb.corpus()  # the 38 plays shipped with nanobard (a slice of them in tiny mode)
print(
    f"{data.name}: {len(data.train):,} training characters, "
    f"{len(data.val):,} validation characters, {data.tokenizer.vocab_size} distinct characters"
)
print(data.train_text(250))

# %% [markdown]
# ### A small trained model to look at
#
# Attention only shows something once a model has learned. So we first train a small one: the
# `lesson` preset, nanoGPT's CPU "baby" model (4 layers, 4 heads, 128-dimensional vectors, a context
# of 64 characters) for 380 steps, about 20 seconds. How that training works is the subject of
# `02_training.ipynb`; here we only use the result.

# %%
model_cfg, train_cfg = resolve_preset(
    "lesson", {"max_steps": 30, "warmup_steps": 5} if TINY else {}
)
if TINY:
    model_cfg = dataclasses.replace(model_cfg, n_layer=2, n_embd=64)
res = train(model_cfg, train_cfg, data, OUT / "model", progress=False)
print(
    f"{res.num_params:,} parameters, {res.steps} steps in {res.elapsed_s:.0f} s: "
    f"validation loss {res.first_val_loss:.2f} -> {res.best_val_loss:.2f} nats per character"
)

model, tok, _ = load_model(OUT / "model" / "model_scratch_best.pt")
model.eval()
TEXT = "ROMEO:\nBut soft, what light through yonder window breaks?"
if tok.unknown(TEXT):  # only with a corpus that lacks some of these characters
    TEXT = attention_text(data.val_text(50_000), tok.chars, 56)

# %% [markdown]
# ## 1. Token and positional embeddings
#
# A network computes with numbers, so text is first cut into **tokens**, and each token gets an
# integer id. nanobard's from-scratch model uses single characters as tokens: the vocabulary is just
# the distinct characters of the corpus, in sorted order.

# %%
print(f"vocabulary of {tok.vocab_size} characters: {''.join(tok.chars)!r}")
ids = tok.encode("ROMEO:")
print("encode('ROMEO:') ->", ids, "-> decode ->", repr(tok.decode(ids)))

# %% [markdown]
# The model's first layer, `wte` (word-token embedding), is a table with one learned vector per
# token id; "embedding" a token means reading its row. Attention, which comes next, compares every
# position with every other one but has no idea *where* they are: shuffle the characters and each
# one would receive the same mix. So every position also gets a vector, added to its token's
# vector. GPT-2 learns these too, in a second table `wpe` (word-position embedding); the original
# Transformer used a fixed pattern of sines and cosines instead
# (`ModelConfig(pos_encoding="sinusoidal")`).

# %%
wte, wpe = model.transformer.wte, model.transformer.wpe
C = model.config.n_embd
print(
    f"wte {tuple(wte.weight.shape)} = (vocabulary, n_embd): one vector of {C} numbers per character"
)
print(
    f"wpe {tuple(wpe.weight.shape)} = (block_size, n_embd): one vector per position of the context"
)

x = torch.tensor([tok.encode(TEXT)])  # (B, T) = (1, characters)
with torch.no_grad():
    tok_emb = wte(x)  # (1, T, C)
    pos_emb = wpe(torch.arange(x.size(1)))  # (T, C)
print(
    f"ids {tuple(x.shape)} -> token vectors {tuple(tok_emb.shape)} + position vectors "
    f"{tuple(pos_emb.shape)} -> the first block's input {tuple((tok_emb + pos_emb).shape)}"
)
print("an embedding is a row of the table:", torch.equal(tok_emb[0, 0], wte.weight[x[0, 0]]))

# %% [markdown]
# The vectors start random; training moves them, and characters that play similar roles tend to
# end up with similar vectors. Nearest neighbours in the trained table, by cosine similarity (1 =
# same direction):

# %%
E = F.normalize(wte.weight.detach(), dim=1)  # unit vectors: E @ E.T is cosine similarity
for ch in "aeT,!":
    if ch not in tok.stoi:
        continue
    sim = E @ E[tok.stoi[ch]]
    sim[tok.stoi[ch]] = -1.0  # leave out the character itself
    top = sim.topk(4)
    near = ", ".join(
        f"{tok.chars[i]!r} {s:.2f}" for s, i in zip(top.values.tolist(), top.indices.tolist())
    )
    print(f"{ch!r}: nearest {near}")

# %% [markdown]
# The sinusoidal encoding gives position p the values sin(p / 10000^(2i/C)) and cos(...) in
# dimensions 2i and 2i+1: fast waves in the first dimensions, slow ones in the last, so every
# position gets a distinct pattern and nearby positions get similar ones.
# `model.sinusoidal_encoding` computes the table:

# %%
pe = sinusoidal_encoding(128, 64)  # (positions, dimensions)
# cosine similarity of every pair of positions
pos_sim = F.normalize(pe, dim=1) @ F.normalize(pe, dim=1).T
fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
im = axes[0].imshow(pe.T, aspect="auto", cmap="RdBu", vmin=-1, vmax=1)
axes[0].set_xlabel("position")
axes[0].set_ylabel("dimension")
axes[0].set_title("sinusoidal position encoding (128 positions x 64 dimensions)")
fig.colorbar(im, ax=axes[0])
im = axes[1].imshow(pos_sim, cmap="viridis")
axes[1].set_xlabel("position")
axes[1].set_ylabel("position")
axes[1].set_title("cosine similarity between positions")
fig.colorbar(im, ax=axes[1])
fig.savefig(OUT / "sinusoidal_encoding.png", dpi=110, bbox_inches="tight")
plt.close(fig)
show(OUT / "sinusoidal_encoding.png")
for a, b in ((10, 11), (10, 20), (10, 60)):
    print(f"sinusoidal: cosine similarity of positions {a} and {b}: {pos_sim[a, b]:.3f}")
W = F.normalize(wpe.weight.detach(), dim=1)
print(
    f"learned wpe of our trained model: positions 10 and 11: {W[10] @ W[11]:.3f}, "
    f"10 and 60: {W[10] @ W[60]:.3f}"
)

# %% [markdown]
# ## 2. Scaled dot-product attention
#
# Attention lets each position gather information from other positions. Each position's vector is
# projected three ways: a **query** q ("what am I looking for?"), a **key** k ("what do I hold?")
# and a **value** v ("what do I pass on?"). Position i's weight on position j is how well q_i
# matches k_j (their dot product), turned into a probability distribution by a softmax over j; the
# output at i is the weighted average of the values:
#
# Attention(Q, K, V) = softmax(Q Kᵀ / √d_k) V
#
# where d_k is the length of one head's query and key vectors. Below we compute this by hand for
# head 0 of the trained model's first layer, on the first 12 characters, and compare with the
# model's own code: its readable path (`model(..., return_attention=True)`, every step written out)
# and its fast path (one fused `scaled_dot_product_attention` kernel).

# %%
T = 12
x = torch.tensor([tok.encode(TEXT)[:T]])  # (1, T)
block = model.transformer.h[0]
attn = block.attn
nh, hs = model.config.n_head, C // model.config.n_head
head = 0
cols = slice(head * hs, (head + 1) * hs)  # head 0's slice of the C columns
with torch.no_grad():
    # (1, T, C): the block's input
    h = model.transformer.wte(x) + model.transformer.wpe(torch.arange(T))
    # each (1, T, C); pre-LayerNorm: normalise first
    q, k, v = attn.c_attn(block.ln_1(h)).split(C, dim=2)
    qh, kh, vh = q[0, :, cols], k[0, :, cols], v[0, :, cols]  # each (T, hs)
    scores = qh @ kh.T / math.sqrt(hs)  # (T, T): query i against key j
    # no looking ahead
    scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    weights = torch.softmax(scores, dim=-1)  # (T, T), every row sums to 1
    by_hand = weights @ vh  # (T, hs)

    captured = []  # the heads' outputs side by side, as they enter c_proj
    hook = attn.c_proj.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    out = model(x, return_attention=True)  # the readable path
    model(x)  # the fast path (fused kernel, no weights returned)
    hook.remove()

print(
    f"d_k = {hs}; head 0's weights for query 5 ({tok.decode(x[0, :6].tolist())!r}):",
    [round(w, 3) for w in weights[5].tolist()],
)
print(
    "max |by hand - model|, attention weights:        "
    f"{(weights - out.attentions[0][0, head]).abs().max():.2e}"
)
print(
    "max |by hand - model|, head output (readable):   "
    f"{(by_hand - captured[0][0, :, cols]).abs().max():.2e}"
)
print(
    "max |by hand - model|, head output (fused path): "
    f"{(by_hand - captured[1][0, :, cols]).abs().max():.2e}"
)

# %% [markdown]
# The differences are rounding (float32 keeps about 7 digits). Why divide by √d_k? For random query
# and key vectors with entries of variance 1, a dot product of d numbers has standard deviation √d.
# Without the scaling, wide heads produce huge scores and the softmax puts nearly all the weight on
# one key, where its gradient is almost zero; with it, the scores keep the same spread at any width:

# %%
g = torch.Generator().manual_seed(0)
print(
    f"{'d_k':>5} {'std of q.k':>11} {'top weight, unscaled':>21} {'top weight, scaled':>19}"
    "   (16 keys per query)"
)
for d in (8, 32, 128, 512):
    qs = torch.randn(2000, 1, d, generator=g)
    ks = torch.randn(2000, 16, d, generator=g)
    s = (qs * ks).sum(-1)  # (2000 queries, 16 keys)
    top_raw = torch.softmax(s, -1).max(-1).values.mean()
    top_scaled = torch.softmax(s / math.sqrt(d), -1).max(-1).values.mean()
    print(f"{d:>5} {s.std():>11.1f} {top_raw:>21.2f} {top_scaled:>19.2f}")

# %% [markdown]
# ## 3. Multi-head attention mechanisms
#
# One head computes one weighted average per position, so it can look for one kind of thing at a
# time. **Multi-head** attention runs `n_head` heads side by side, each on its own slice of the
# vector (head size = n_embd / n_head), so one head can follow the previous character while another
# looks back to the start of the word. `c_attn` computes the queries, keys and values of every head
# in one matrix multiplication; `c_proj` mixes the heads' concatenated outputs back into the
# residual stream.

# %%
print(f"{nh} heads of size {hs} (n_embd {C} = {nh} x {hs})")
print(
    f"c_attn.weight {tuple(attn.c_attn.weight.shape)}: "
    f"Q, K and V of all heads from the {C}-dim input"
)
print(
    f"c_proj.weight {tuple(attn.c_proj.weight.shape)}: the heads' outputs, side by side, mixed back"
)
with torch.no_grad():
    out = model(torch.tensor([tok.encode(TEXT)]), return_attention=True)
print(
    f"{len(out.attentions)} layers of attention weights, each {tuple(out.attentions[0].shape)} = "
    "(batch, head, query, key)"
)

# %% [markdown]
# `attention.attention_maps` (through a `Lens`, the view of a model's insides that every analysis
# uses) returns the same weights as one `[layer, head, query, key]` tensor,
# and `attention.head_statistics` summarises each head: how much weight it puts on the previous
# character and on the character itself, how far back it looks on average, and the entropy of its
# weights (0 bits = all on one character; higher = spread out). The heads of one layer do different
# things:

# %%
maps = attention_maps(make_lens(model, tok), TEXT)
stats = head_statistics(maps.weights)
print(f"layer 0 on {TEXT!r}:")
for s in stats:
    if s.layer == 0:
        print(
            f"  head {s.head}: {s.previous_token:4.0%} on the previous character, "
            f"{s.self_attention:4.0%} on itself, "
            f"mean distance back {s.mean_distance:4.1f}, entropy {s.entropy_bits:.2f} bits"
        )
show(
    attention_heads(
        maps.weights,
        maps.tokens,
        0,
        "every head of layer 0 (rows: the attending character)",
        OUT / "attention_layer0.png",
    )
)

# %% [markdown]
# ## 4. Encoder-only vs decoder architectures
#
# The original Transformer had two halves. An **encoder** lets every position attend to every other
# position, left and right: it builds a representation of a whole text at once. BERT is
# encoder-only; such models are used to *classify* a text (topic, sentiment, spam), to label each
# word, to compare two texts, or to *fill in a blank* ("The [MASK] sat on the mat") — which is also
# how BERT is trained: some input tokens are replaced by a [MASK] token and the model predicts what
# was there. A **decoder** may only attend to the left: it predicts the next token, so it can
# generate text one token at a time. GPT is decoder-only, and so is everything in nanobard.
#
# In code the difference is one line, the causal mask (`ModelConfig(causal=False)` removes it). What
# happens if you train a next-character predictor *without* it? `lessons.encoder_vs_decoder` trains
# the same small model twice, with and without the mask, and measures
#
# - the training and validation loss as training computes them;
# - the loss **left to right**: each character predicted from the characters before it only, which
#   is all that generation ever has;
# - a greedy sample, and a *cloze* test: one hidden character in each of many validation windows.

# %%
lesson = encoder_vs_decoder(
    data, steps=40 if TINY else 400, blanks=32 if TINY else 256, sample_chars=80
)
print(
    f"{'':<12} {'train':>7} {'validation':>10} {'left to right':>13}   "
    f"(nats per character, {lesson.steps} steps each)"
)
for run in (lesson.causal, lesson.no_mask):
    name = "causal mask" if run.causal else "no mask"
    print(
        f"{name:<12} {run.train_loss:>7.3f} {run.val_loss:>10.3f} {run.left_to_right_loss:>13.3f}"
    )
print(f"\ngreedy continuations of {lesson.prompt!r}:")
print(f"  causal mask: {lesson.causal.sample!r}")
print(f"  no mask:     {lesson.no_mask.sample!r}")

# %% [markdown]
# Without the mask, position t can read character t+1 — the very character it is asked to predict —
# so the cheapest solution is to copy it. Once the model finds that shortcut its training loss falls
# toward 0, and its validation loss, computed the same way, is just as low: it peeks there too. A
# low loss therefore proves nothing about a model that can see the answer. Asked to predict from the
# past only (left to right), as generation must, it has learned little, and its greedy sample shows
# it. For the causal model the two ways of measuring agree.
#
# The cloze test shows what an encoder is for. The decoder can guess a hidden character from the
# left side only, or — scoring every candidate character with the text *after* the blank too — from
# both sides, which is what an encoder does naturally. The no-mask model, trained without a [MASK]
# token, cannot fill a blank at all: we write a wrong character in the blank and it copies it.

# %%
c = lesson.cloze
print(f"one of the {c.blanks} windows, the hidden character shown as [_]:\n{c.text!r}")
print(
    f"answer {c.answer!r}: decoder from the left {c.left_guess!r}, "
    f"decoder scoring both sides {c.both_sides_guess!r}, no-mask model {c.no_mask_guess!r}"
)
print(
    f"accuracy over {c.blanks} blanks: left side only {c.left_accuracy:.0%}, "
    f"both sides {c.both_sides_accuracy:.0%}, "
    f"no-mask model {c.no_mask_accuracy:.0%} (it returned the wrong character written in the blank "
    f"{c.no_mask_copy_rate:.0%} of the time)"
)
show(plot_encoder_vs_decoder(lesson, OUT / "encoder_vs_decoder.png"))

# %% [markdown]
# ## 5. Causal masking for autoregressive models
#
# An autoregressive model writes one token at a time, each from the tokens before it. Training must
# match that: while the model learns to predict character t+1 at position t, the characters at t+1,
# t+2, … must be invisible to it, or it learns to copy (section 4). The **causal mask** does this:
# before the softmax, every score of a later key is set to −∞, so its weight is exactly 0. The mask
# is a lower-triangular matrix of the allowed (query, key) pairs:

# %%
# row = query position, column = key position; 1 = allowed
print(torch.ones(6, 6, dtype=torch.int).tril())

# %% [markdown]
# `attention.causality_check` tests a model two independent ways: every attention weight above the
# diagonal must be exactly 0, and the gradient of the prediction at position t with respect to the
# input at any later position must be exactly 0. Our trained model passes; the same architecture
# built with `causal=False` fails:

# %%
ids = tok.encode(TEXT)[:24]
torch.manual_seed(0)
no_mask = GPT(dataclasses.replace(model.config, causal=False)).eval()
for name, m in (("causal (trained)", model), ("causal=False", no_mask)):
    check = causality_check(make_lens(m, tok), ids)
    print(
        f"{name:<17} attention_check {check.attention_check} (largest weight above the diagonal "
        f"{check.attention_above_diagonal_max:.3g}), gradient_check {check.gradient_check} "
        f"(largest gradient from a later input {check.future_gradient_max:.3g})"
    )

# %% [markdown]
# The same property, seen from outside: change only the last character of the input. A causal
# model's predictions at every earlier position stay exactly the same; without the mask they move.

# %%
x1 = torch.tensor([ids])
x2 = x1.clone()
x2[0, -1] = (x2[0, -1] + 1) % tok.vocab_size  # a different last character
with torch.no_grad():
    for name, m in (("causal (trained)", model), ("causal=False", no_mask)):
        moved = (m(x1).logits - m(x2).logits)[0, :-1].abs().max().item()
        print(
            f"{name:<17} changing the last character moves the earlier positions' logits "
            f"by at most {moved:.3g}"
        )

# %% [markdown]
# ## Where to go next
#
# - `02_training.ipynb`: how the model above was trained — the loop, validation, checkpoints and
#   resuming, tuning, early stopping, the learning-rate schedule.
# - `04_attention_analysis.ipynb`: reading the attention of a trained model and of a pretrained one,
#   and debugging a model (including a wrong mask that the causality check catches).
# - `src/nanobard/model/gpt.py`: this notebook's model in about 250 lines, in the order data flows.
# - Vaswani et al. (2017), *Attention Is All You Need*; Devlin et al. (2019), *BERT*; Radford et al.
#   (2019), *Language Models are Unsupervised Multitask Learners* (GPT-2); Karpathy's nanoGPT and
#   his lecture "Let's build GPT: from scratch, in code, spelled out".
