"""Export a from-scratch checkpoint as a Hugging Face ``GPT2LMHeadModel`` folder (and, optionally,
GGUF).

The folder holds ``config.json``, ``model.safetensors``, ``generation_config.json``, a character
tokenizer (``tokenizer.json``) and a ``README.md`` model card, so that plain ``transformers`` loads
it without nanobard::

    pipe = transformers.pipeline("text-generation", model="exported/")
    pipe("ROMEO:\\n")  # greedy up to the context: the same text as `nanobard generate --greedy`

How our GPT maps onto GPT-2 (see ``model.py``): the same parameter names; GPT-2's Conv1D stores
(in, out) where our Linear stores (out, in), so those weights are transposed; GPT-2 has biases
everywhere, so a model trained with ``bias=False`` gets zero biases (which change nothing); fixed
sinusoidal positions are written into GPT-2's learned table ``wpe``; our MLP uses exact GELU, so the
config says ``activation_function="gelu"`` (GPT-2's own ``gelu_new`` is the tanh approximation).
Greedy text matches ours while prompt + generation fit in the context (``block_size``): beyond it
our decoder slides its window and GPT-2 has no positions left.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from nanobard import files
from nanobard.config import ModelConfig
from nanobard.data.tokenizer import CharTokenizer
from nanobard.errors import NanobardError
from nanobard.model.checkpoint import load_model, resolve_checkpoint
from nanobard.model.gpt import GPT
from nanobard.rundir import command_line

if TYPE_CHECKING:
    from transformers import (
        GenerationConfig,
        GPT2Config,
        GPT2LMHeadModel,
        PreTrainedTokenizerFast,
    )

logger = logging.getLogger(__name__)

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, which model.py uses
GGUF_NAME = "model.gguf"
# GGUF tensor names (llama.cpp's gpt2 architecture) for the per-layer HF names
GGUF_LAYER_NAMES = {
    "ln_1": "attn_norm",
    "attn.c_attn": "attn_qkv",
    "attn.c_proj": "attn_output",
    "ln_2": "ffn_norm",
    "mlp.c_fc": "ffn_up",
    "mlp.c_proj": "ffn_down",
}


class ExportError(NanobardError, ValueError):
    """The model cannot be exported as asked; the message says what to do."""


@dataclass
class ExportResult:
    """What ``export_hf`` wrote: the folder, its files (name -> bytes) and where they came from."""

    out_dir: Path
    checkpoint: Path
    num_params: int
    files: dict[str, int] = field(default_factory=dict)
    gguf_file: Path | None = None

    @property
    def size_bytes(self) -> int:
        return sum(self.files.values())

    def summary(self) -> str:
        """One line for the CLI, e.g. ``exported ... to out/ (6 files, 3.4 MB)``."""
        extra = f", GGUF {self.gguf_file.name}" if self.gguf_file else ""
        return (
            f"exported {self.checkpoint} ({self.num_params:,} parameters) as a Hugging Face "
            f"GPT-2 to {self.out_dir} ({len(self.files)} files, "
            f"{self.size_bytes / 1e6:.2f} MB{extra})"
        )


def check_gpt2_architecture(cfg: ModelConfig) -> None:
    """``ExportError`` when the model uses an option GPT-2's architecture has no place for."""
    beyond = [
        what
        for what, used in (
            ("rotary positions (--pos-encoding rotary)", cfg.pos_encoding == "rotary"),
            ("normalised queries and keys (--qk-norm)", cfg.qk_norm),
            ("the ReLU² activation (--activation relu2)", cfg.activation == "relu2"),
            ("attention without the causal mask (--no-causal)", not cfg.causal),
        )
        if used
    ]
    if beyond:
        raise ExportError(
            f"this model uses {' and '.join(beyond)}, which GPT-2's format cannot hold; "
            "export works for models trained without them (the readable presets: "
            "--pos-encoding learned --activation gelu --no-qk-norm --causal)"
        )


def hf_config(cfg: ModelConfig) -> GPT2Config:
    """The ``GPT2Config`` that computes exactly what our GPT with ``cfg`` computes."""
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.block_size,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_inner=4 * cfg.n_embd,
        activation_function="gelu",  # exact, not tanh
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=LAYER_NORM_EPS,
        scale_attn_weights=True,
        scale_attn_by_inverse_layer_idx=False,
        reorder_and_upcast_attn=False,
        tie_word_embeddings=cfg.tie_weights,
        use_cache=True,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,  # a character vocabulary has none
        architectures=["GPT2LMHeadModel"],
    )


def hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Our weights under GPT-2's names and layouts: Conv1D weights (in, out), zero biases where we
    have none, the sinusoidal table as ``wpe``. Every GPT-2 parameter is present."""
    ours = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    c = model.config
    if c.pos_encoding == "sinusoidal":
        ours["transformer.wpe.weight"] = model.pe.detach().float().cpu()  # (block_size, C)
    sizes = {
        "ln_1": c.n_embd,
        "ln_2": c.n_embd,
        "attn.c_attn": 3 * c.n_embd,
        "attn.c_proj": c.n_embd,
        "mlp.c_fc": 4 * c.n_embd,
        "mlp.c_proj": c.n_embd,
    }
    out: dict[str, torch.Tensor] = {}
    for k, v in ours.items():
        out[k] = v.t().contiguous() if k.endswith(CONV1D) else v.clone()
    for i in range(c.n_layer):
        for part, n in sizes.items():
            out.setdefault(f"transformer.h.{i}.{part}.bias", torch.zeros(n))
    out.setdefault("transformer.ln_f.bias", torch.zeros(c.n_embd))
    if c.tie_weights:
        out.pop("lm_head.weight", None)  # tied: GPT-2 reads it from wte
    return out


def to_hf_gpt2(model: GPT) -> GPT2LMHeadModel:
    """A ``GPT2LMHeadModel`` (float32, eval mode) with our model's weights; logits equal ours."""
    from transformers import GPT2LMHeadModel

    check_gpt2_architecture(model.config)
    hf = GPT2LMHeadModel(hf_config(model.config))
    sd = hf_state_dict(model)
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not (model.config.tie_weights and k == "lm_head.weight")]
    assert not missing and not unexpected, f"weight mapping is incomplete: {missing=} {unexpected=}"
    hf.tie_weights()
    return hf.eval()


def hf_tokenizer(tok: CharTokenizer, block_size: int) -> PreTrainedTokenizerFast:
    """A ``PreTrainedTokenizerFast`` with exactly our ids: every character its own token, no special
    tokens, decoded by plain concatenation (spaces and newlines round-trip unchanged)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({ch: i for i, ch in enumerate(tok.chars)}, unk_token=None))
    # one piece per character
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()  # join pieces with nothing between them
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        model_max_length=block_size,
        clean_up_tokenization_spaces=False,  # " ," must stay " ,"
    )


def hf_generation_config(cfg: ModelConfig) -> GenerationConfig:
    """Greedy, up to the full context, with no end-of-text token to stop at.

    ``max_length`` matters: without it the text-generation pipeline asks for 256 new tokens and
    GPT-2 runs out of positions (an IndexError) after ``n_positions``. A caller's own
    ``max_new_tokens`` still wins (transformers then logs that both are set)."""
    from transformers import GenerationConfig

    return GenerationConfig(
        max_length=cfg.block_size,
        do_sample=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )


def model_card(
    ckpt_path: Path, model: GPT, tok: CharTokenizer, ckpt: dict[str, Any], gguf: bool = False
) -> str:
    """README.md of the exported folder: what the model is and how to load it."""
    c = model.config
    try:
        metrics = json.loads(ckpt.get("metrics") or "{}")
    except json.JSONDecodeError:
        metrics = {}
    val = (
        f"{metrics['val_loss']:.4f} nats per character "
        f"({metrics['val_loss'] / math.log(2):.4f} bits per character) at step "
        f"{metrics.get('step', '?')}"
        if "val_loss" in metrics
        else "not recorded"
    )
    chars = "".join(tok.chars).encode("unicode_escape").decode("ascii")
    prompt = (
        "ROMEO:\n"
        if set("ROMEO:\n") <= set(tok.chars)
        else next((ch for ch in tok.chars if ch.isalpha()), tok.chars[0])
    )
    n_new = max(1, c.block_size - len(prompt))
    positions = c.pos_encoding + (
        " (fixed table written into `wpe`)" if c.pos_encoding == "sinusoidal" else ""
    )
    gguf_note = (
        f"\n- `{GGUF_NAME}` holds the same float32 weights; load it with this folder's config: "
        f'`GPT2LMHeadModel.from_pretrained(folder, gguf_file="{GGUF_NAME}", '
        "config=AutoConfig.from_pretrained(folder))`."
        if gguf
        else ""
    )
    return f"""---
library_name: transformers
pipeline_tag: text-generation
tags: [gpt2, character-level, nanobard]
---
# Character-level GPT exported from nanobard

A small GPT trained from scratch with nanobard and exported from `{ckpt_path.name}`
as a Hugging Face `GPT2LMHeadModel`. It reads and writes **one character per token**.

| | |
|---|---|
| parameters | {model.num_params():,} |
| layers / heads / width | {c.n_layer} / {c.n_head} / {c.n_embd} |
| context (`n_positions`) | {c.block_size} characters |
| vocabulary | {tok.vocab_size} characters: {code_span(chars)} |
| positions | {positions} |
| validation loss of this checkpoint | {val} |
{training_rows(ckpt_path)}

```python
from transformers import pipeline

pipe = pipeline("text-generation", model="PATH/TO/THIS/FOLDER")
print(pipe({prompt!r})[0]["generated_text"])\
  # greedy, until the {c.block_size}-character context is full
print(pipe({prompt!r}, max_new_tokens={min(n_new, 10)})[0]["generated_text"])\
  # or a number of new characters
```

Notes
- Greedy output equals `nanobard generate --greedy` while prompt + new characters fit in \
{c.block_size};
  the model has no positions beyond that (transformers then fails with `index out of range`), so
  keep prompt + `max_new_tokens` within the context. `generation_config.json` sets `max_length`
  to the context and `do_sample` to false; with `max_new_tokens` transformers notes that both
  are set and uses `max_new_tokens`.
- Exact GELU (`activation_function="gelu"`); biases are zero where the original model had none.
- No special tokens: there is no end-of-text token, so generation runs to `max_new_tokens`.
- A character outside the vocabulary makes the tokenizer fail with
  `WordLevel error: Missing [UNK] token`; remove such characters from the prompt.{gguf_note}
"""


@contextmanager
def no_shard_bar() -> Iterator[None]:
    """transformers' "Writing model shards" bar off while a folder is saved (one shard: a bar that
    only doubles the line the caller prints); as it was afterwards."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def code_span(text: str) -> str:
    """Markdown inline code for ``text``, which may hold backticks (a corpus of code) and pipes
    (inside a table row)."""
    text = text.replace("|", "\\|")
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def training_rows(ckpt_path: Path) -> str:
    """Model-card table rows about how the checkpoint was made and exported, from its run
    folder's records where they are beside it (a checkpoint copied elsewhere has fewer)."""
    run = ckpt_path.parent
    rows = []
    config: dict[str, Any] = {}
    for name in ("config_scratch.json", "config.json"):  # a study's own, or a train run's
        try:
            data = json.loads((run / name).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and "train" in data and "model" in data:
            config = data
            break
    try:
        result = json.loads((run / "train_result.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        result = {}
    if config.get("corpus"):
        rows.append(f"| corpus | {config['corpus']} ({config.get('n_train_chars', 0):,} training "
                    f"characters) |")  # fmt: skip
    if result:
        rows.append(f"| training | {result['steps']:,} steps, {result['tokens']:,} characters, "
                    f"{result['elapsed_s']:.0f} s on {config.get('device', '?')} (stopped by "
                    f"{result['stopped']}) |")  # fmt: skip
    if config.get("command"):
        rows.append(f"| trained with | `{config['command']}` |")
    exported = command_line()
    rows.append(f"| exported with | `{exported}` |" if exported else "| exported with | "
                "`nanobard.model.export.export_hf` (Python) |")  # fmt: skip
    return "\n".join(rows)


def _check_out_dir(out: Path, ckpt_path: Path) -> None:
    """Refuse to write into a file, into the run folder, or over an unrelated non-empty folder."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} is a file; give --out a new or empty folder")
    if out.resolve() == ckpt_path.parent.resolve():
        raise ExportError(
            f"{out} holds the checkpoint itself (its config.json would be overwritten); "
            f"give --out a new folder, e.g. {out}/hf"
        )
    if out.is_dir() and any(out.iterdir()):
        try:
            previous = json.loads((out / "config.json").read_text(encoding="utf-8")).get(
                "model_type"
            )
        except (OSError, json.JSONDecodeError, AttributeError):
            previous = None
        if previous != "gpt2":  # re-exporting over an earlier export is fine
            raise ExportError(
                f"{out} is not empty and is not an earlier export; give --out a new or empty folder"
            )


def export_hf(
    checkpoint_or_run: str | os.PathLike, out_dir: str | os.PathLike, *, gguf: bool = False
) -> ExportResult:
    """Export a from-scratch checkpoint (or a run folder holding ``model_scratch_best.pt``) to
    ``out_dir`` as a Hugging Face GPT-2 folder; with ``gguf`` also ``model.gguf`` (float32).

    Raises ``CheckpointError`` for a missing or unreadable checkpoint and ``ExportError`` for an
    unusable ``out_dir`` or a vocabulary GGUF cannot hold; both are ``ValueError`` subclasses.
    """
    ckpt_path = resolve_checkpoint(checkpoint_or_run)
    out = Path(out_dir)
    model, tok, ckpt = load_model(ckpt_path)  # CheckpointError says what is wrong with the file
    check_gpt2_architecture(model.config)
    _check_out_dir(out, ckpt_path)
    if gguf:
        _check_gguf_vocab(tok)
    model = model.float().eval()
    hf = to_hf_gpt2(model)
    hf.generation_config = hf_generation_config(model.config)
    # written whole into a temporary folder that then takes out's place: a full disk leaves an
    # earlier export as it was, and never an earlier export's weights beside these
    with files.atomic_folder(out) as tmp, no_shard_bar():
        hf.save_pretrained(tmp, safe_serialization=True)
        hf_tokenizer(tok, model.config.block_size).save_pretrained(tmp)
        _mark_tokenizer_class(tmp / "tokenizer_config.json")
        card = model_card(ckpt_path, model, tok, ckpt, gguf)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        if gguf:
            write_gguf(model, tok, tmp / GGUF_NAME)
    sizes = {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()}
    result = ExportResult(
        out_dir=out,
        checkpoint=ckpt_path,
        num_params=model.num_params(),
        files=sizes,
        gguf_file=out / GGUF_NAME if gguf else None,
    )
    return result  # the caller says what was written (the CLI prints result.summary() once)


class PushFailed(NanobardError):
    """The Hub refused or could not be reached; the exported folder is kept."""

    exit_code = 1


def hub_token(repo_id: str) -> str:
    """The user's Hugging Face token; ``PushFailed`` (one line: how to log in) without one."""
    import huggingface_hub

    token = huggingface_hub.get_token()
    if not token:
        raise PushFailed(
            f"--push-to-hub {repo_id} needs a Hugging Face login: run `hf auth login` or set "
            "HF_TOKEN"
        )
    return token


def push_to_hub(folder: str | os.PathLike, repo_id: str, *, private: bool = False) -> str:
    """Upload an exported (or fine-tuned) model folder to the Hugging Face Hub as ``repo_id``
    (created when missing) with ``huggingface_hub``; returns the repository's URL. Needs a login
    (``hf auth login`` or ``HF_TOKEN``): without one, or when the Hub refuses or cannot be
    reached, raises ``PushFailed`` in one line and leaves the folder as it is."""
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError

    api = huggingface_hub.HfApi(token=hub_token(repo_id))
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(repo_id=repo_id, folder_path=Path(folder), repo_type="model",
                          commit_message=f"Upload {Path(folder).name} from nanobard")  # fmt: skip
    except HFValidationError as e:
        raise PushFailed(f"--push-to-hub {repo_id}: {str(e).splitlines()[0]}") from None
    except Exception as e:
        if not isinstance(e, HfHubHTTPError | OSError) and not _network_error(e):
            raise  # a bug: keep its traceback
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise PushFailed(
            f"pushing {folder} to the Hub as {repo_id} failed: {first}; the folder is kept, "
            "try again with the same command"
        ) from None
    return str(url)


def _network_error(e: BaseException) -> bool:
    """An error of the HTTP stack under huggingface_hub (httpx, httpcore, requests, urllib3:
    which one depends on its version): no connection, a timeout, a refused TLS handshake."""
    return any(
        c.__module__.split(".")[0].rstrip("0123456789")
        in ("httpx", "httpcore", "requests", "urllib3")
        for c in type(e).__mro__
    )


def _mark_tokenizer_class(path: Path) -> None:
    """Name the tokenizer class by the name transformers 4.x also knows (5.x reads it as its
    ``TokenizersBackend``), so the folder loads with either."""
    obj = json.loads(path.read_text(encoding="utf-8"))
    obj["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------
# GGUF (llama.cpp's gpt2 architecture, float32)


def _check_gguf_vocab(tok: CharTokenizer) -> None:
    """GGUF's gpt2 tokenizer is byte-level BPE: a character of one UTF-8 byte is one token, but a
    longer one would need byte tokens and merges that our vocabulary does not have."""
    wide = [ch for ch in tok.chars if len(ch.encode("utf-8")) > 1]
    if wide:
        shown = ", ".join(repr(ch) for ch in wide[:10])
        raise ExportError(
            f"GGUF export needs an ASCII vocabulary; this one has {len(wide)} other "
            f"character(s) ({shown}). Export without --gguf, or train on ASCII text"
        )


def byte_level_spelling() -> dict[int, str]:
    """GPT-2's byte-level alphabet: byte b is written as the character ``spelling[b]``; printable
    bytes as themselves, the rest (space, newline, control bytes) shifted to chr(256 + k)."""
    keep = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("\xa1"), ord("\xac") + 1),
        *range(ord("\xae"), 256),
    ]
    shifted = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + k) for k, b in enumerate(shifted)}}


def gguf_tensors(model: GPT) -> dict[str, torch.Tensor]:
    """Our weights under llama.cpp's gpt2 tensor names, matrices (out, in) as llama.cpp stores
    them."""
    out: dict[str, torch.Tensor] = {}
    for k, v in hf_state_dict(model).items():
        if k.endswith(CONV1D):
            v = v.t().contiguous()  # back to (out, in)
        parts = k.split(".")
        if k.startswith("transformer.h."):
            i, part, kind = parts[2], ".".join(parts[3:-1]), parts[-1]
            name = f"blk.{i}.{GGUF_LAYER_NAMES[part]}.{kind}"
        else:
            name = {
                "transformer.wte.weight": "token_embd.weight",
                "transformer.wpe.weight": "position_embd.weight",
                "transformer.ln_f.weight": "output_norm.weight",
                "transformer.ln_f.bias": "output_norm.bias",
                "lm_head.weight": "output.weight",
            }[k]
        out[name] = v
    return out


def write_gguf(model: GPT, tok: CharTokenizer, path: Path) -> Path:
    """Write ``path`` as a float32 GGUF file (llama.cpp's gpt2 architecture, byte-level tokens).

    GGUF has no field for the activation, and transformers maps ``context_length`` to no GPT-2
    field, so load it with the folder's config: ``GPT2LMHeadModel.from_pretrained(folder,
    gguf_file="model.gguf", config=AutoConfig.from_pretrained(folder))``. Without it transformers
    assumes GPT-2's tanh GELU and 1024 positions, and the weights do not fit."""
    import gguf

    check_gpt2_architecture(model.config)
    _check_gguf_vocab(tok)
    c = model.config
    spelling = byte_level_spelling()
    w = gguf.GGUFWriter(str(path), "gpt2")
    w.add_name("nanobard-char-gpt")
    w.add_context_length(c.block_size)
    w.add_embedding_length(c.n_embd)
    w.add_feed_forward_length(4 * c.n_embd)
    w.add_block_count(c.n_layer)
    w.add_head_count(c.n_head)
    w.add_layer_norm_eps(LAYER_NORM_EPS)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([spelling[ord(ch)] for ch in tok.chars])
    w.add_token_types([gguf.TokenType.NORMAL] * tok.vocab_size)
    w.add_token_merges([])
    for name, t in gguf_tensors(model).items():
        w.add_tensor(name, t.numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
