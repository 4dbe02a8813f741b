"""One view of a causal LM's insides, so that each analysis in ``interpret`` is written once for
the from-scratch GPT, a Llama-style Hugging Face model (SmolLM2) and GPT-2.

Terms. ``resid[l]`` is the residual stream entering layer l: ``resid[0]`` = token (+ position)
embeddings, ``resid[L]`` = the last block's output, the input of the final norm. A head's output
is its slice of the input of its layer's output projection, where the heads sit side by side in
the last dimension: ours ``attn.c_proj``, Llama ``self_attn.o_proj``, GPT-2 ``attn.c_proj``.

Shapes: B batch, T positions, C model width, L layers, nh heads, hd head size, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

import torch
import torch.nn as nn
from torch.nn import functional as F

from nanobard.errors import NanobardError
from nanobard.model.gpt import GPT

if TYPE_CHECKING:
    from collections.abc import Iterable

    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from nanobard.data.tokenizer import CharTokenizer
    from nanobard.model.gpt import Block

Kind = Literal["scratch", "llama", "gpt2"]


class LensError(NanobardError, ValueError):
    """The model is not one the lens can open, or an analysis was asked for something it lacks."""


@dataclass
class Trace:
    """One clean forward pass, recorded so that later passes can start from any layer."""

    ids: torch.Tensor  # (B, T)
    logits: torch.Tensor  # (B, T, V) float32: the model's own output
    resid: list[torch.Tensor]  # L + 1 of (B, T, C)
    head_inputs: list[torch.Tensor]  # L of (B, T, nh * hd): input of each output projection
    calls: list[tuple[tuple, dict]]  # the positional and keyword arguments each layer got
    attentions: list[torch.Tensor] | None = None  # L of (B, nh, T, T), when asked
    attn_out: list[torch.Tensor] | None = None  # L of (B, T, C): each attention block's output
    mlp_out: list[torch.Tensor] | None = None  # L of (B, T, C): each MLP's output


@dataclass
class Lens:
    model: nn.Module
    # a CharTokenizer (kind "scratch") or a Hugging Face tokenizer, or None; Any, as the methods
    # called on it depend on ``kind``
    tokenizer: Any
    kind: Kind
    embed: nn.Module  # token embedding: ids (B, T) -> (B, T, C)
    layers: nn.ModuleList
    final_norm: nn.Module
    unembed: nn.Module
    out_projs: list[nn.Module]  # per layer, the module whose input holds the heads side by side
    attns: list[nn.Module]  # per layer, the attention block (its output is added to the stream)
    mlps: list[nn.Module]  # per layer, the MLP (likewise)
    n_heads: int
    context: int  # longest input in tokens
    vocab_size: int
    name: str

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, text: str) -> tuple[list[int], list[int]]:
        """Token ids of ``text`` with the model's own tokenizer (no special tokens), and the
        number of characters each token covers (they sum to the characters of the text)."""
        tok = self.tokenizer
        if tok is None:
            raise LensError(f"{self.name} was opened without a tokenizer; pass one to make_lens")
        if self.kind == "scratch":
            ids = tok.encode(text)
            return ids, [1] * len(ids)
        if getattr(tok, "is_fast", False):
            enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
            ends = [e for _, e in enc["offset_mapping"]]
            # counting from the ends gives every character to one token, spaces the tokenizer's
            # offsets trim included; a token inside a split multi-byte character covers 0
            return enc["input_ids"], [max(0, e - p) for p, e in zip([0] + ends[:-1], ends)]
        ids = tok(text, add_special_tokens=False)["input_ids"]
        return ids, [len(tok.decode([i])) for i in ids]

    def token_strings(self, ids: list[int]) -> list[str]:
        """The text of each token, as a label (a BPE token's leading space included)."""
        tok = self.tokenizer
        if self.kind == "scratch":
            return [tok.decode([i]) for i in ids]
        return [tok.convert_tokens_to_string([t]) for t in tok.convert_ids_to_tokens(ids)]

    def token_range(self) -> tuple[int, int]:
        """Ids to draw random tokens from: the whole character vocabulary; for a BPE model
        ids 100 .. 20,000 (as TransformerLens), clear of the special tokens at the start."""
        if self.kind == "scratch":
            return 0, self.vocab_size
        return min(100, self.vocab_size // 3), min(20_000, self.vocab_size)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Residual stream (B, T, C) -> logits (B, T, V) float32, via the final norm and the
        unembedding."""
        return self.unembed(self.final_norm(x)).float()

    def _forward(self, ids: torch.Tensor, attention: bool) -> tuple[torch.Tensor, list | None]:
        if self.kind == "scratch":
            out = self.model(ids, return_attention=attention)
            return out.logits, out.attentions
        with eager_attention(self.model) if attention else _nothing():
            out = self.model(input_ids=ids, use_cache=False, output_attentions=attention)
        att = list(out.attentions) if attention else None
        if attention and (not att or att[0] is None):
            raise LensError(
                f"{self.name} returned no attention weights; "
                "load it with attn_implementation='eager'"
            )
        return out.logits, att

    def trace(self, ids: torch.Tensor, attention: bool = False) -> Trace:
        """Run ids (B, T) once, recording the residual stream, the heads' outputs, each layer's
        arguments and, with ``attention``, the attention weights."""
        L = self.n_layers
        resid: list[Any] = [None] * (L + 1)
        heads: list[Any] = [None] * L
        calls: list[Any] = [None] * L
        attn_out: list[Any] = [None] * L
        mlp_out: list[Any] = [None] * L

        def on_layer(i: int):
            def hook(module, args, kwargs):
                calls[i] = (args, kwargs)
                resid[i] = args[0] if args else kwargs["hidden_states"]

            return hook

        def on_proj(i: int):
            return lambda module, args: heads.__setitem__(i, args[0].detach())

        def on_output(store: list, i: int):
            return lambda module, args, out: store.__setitem__(i, _first(out))

        handles = [
            self.final_norm.register_forward_pre_hook(lambda m, a: resid.__setitem__(L, a[0]))
        ]
        for i in range(L):
            handles.append(self.layers[i].register_forward_pre_hook(on_layer(i), with_kwargs=True))
            handles.append(self.out_projs[i].register_forward_pre_hook(on_proj(i)))
            handles.append(self.attns[i].register_forward_hook(on_output(attn_out, i)))
            handles.append(self.mlps[i].register_forward_hook(on_output(mlp_out, i)))
        try:
            logits, att = self._forward(ids.to(self.device), attention)
        finally:
            for h in handles:
                h.remove()
        return Trace(ids, logits.float(), resid, heads, calls, att, attn_out, mlp_out)

    def run_from(
        self, trace: Trace, layer: int, x: torch.Tensor, stop: int | None = None
    ) -> torch.Tensor:
        """Run layers ``layer`` .. L-1 (or .. ``stop`` - 1) on x (k * B, T, C), a residual stream
        for ``k`` copies of the traced batch (row r is traced row r % B); returns the stream
        entering layer ``stop`` (by default the final norm)."""
        B = trace.ids.shape[0]
        k = x.shape[0] // B
        assert k * B == x.shape[0], f"{x.shape[0]} rows are not copies of a traced batch of {B}"
        for i in range(layer, self.n_layers if stop is None else stop):
            if self.kind == "scratch":
                out = self.layers[i](x)  # no cache, fast attention path
            else:
                args, kwargs = _tile(trace.calls[i], k, B)
                if args:
                    out = self.layers[i](x, *args[1:], **kwargs)
                else:
                    out = self.layers[i](**{**kwargs, "hidden_states": x})
            x = out[0] if isinstance(out, tuple) else out
        return x

    @contextmanager
    def ablate(self, layer: int, heads: torch.Tensor, values: torch.Tensor) -> Iterator[None]:
        """Inside the block, row r of any batch has head ``heads[r]`` of ``layer`` replaced by
        ``values[heads[r]]`` (values [head, hd]); ``heads[r] = -1`` leaves row r intact. ``heads``
        may also be a (B, nh) boolean mask: row r has every head marked in ``heads[r]`` replaced.
        ``values`` may also be [T, head, hd]: a value per position (activation patching)."""
        nh = self.n_heads
        if heads.dim() == 2:
            mask = heads.to(self.device, torch.long)  # (B, nh)
        else:
            keep = (heads >= 0).to(self.device)
            mask = F.one_hot(heads.clamp(min=0).to(self.device), nh) * keep[:, None]  # (B, nh)

        def hook(module, args):
            h = args[0]  # (B, T, nh * hd)
            B, T, D = h.shape
            m = mask.to(h.dtype)[:, None, :, None]  # (B, 1, nh, 1)
            v = values.to(h.device, h.dtype)  # [head, hd], or [T, head, hd] per position
            v = v[None, None] if v.dim() == 2 else v[None]  # (1, 1 or T, nh, hd)
            h = h.reshape(B, T, nh, D // nh) * (1 - m) + v * m
            return (h.reshape(B, T, D), *args[1:])

        handle = self.out_projs[layer].register_forward_pre_hook(hook)
        try:
            yield
        finally:
            handle.remove()


def make_lens(
    model: nn.Module,
    tokenizer: CharTokenizer | PreTrainedTokenizerBase | None = None,
    name: str | None = None,
) -> Lens:
    """Open our GPT (also inside torch.compile / DDP), a Llama-style or a GPT-2 HF causal LM."""
    model = getattr(model, "_orig_mod", model)  # torch.compile
    model = getattr(model, "module", model)  # DistributedDataParallel
    if isinstance(model, GPT):
        c, t = model.config, model.transformer
        # a ModuleDict holds plain Modules to a type checker: name what GPT.__init__ put in it
        blocks = cast(nn.ModuleList, t["h"])
        return Lens(
            model=model, tokenizer=tokenizer, kind="scratch", embed=t["wte"], layers=blocks,
            final_norm=t["ln_f"], unembed=model.lm_head,
            out_projs=[b.attn.c_proj for b in cast("Iterable[Block]", blocks)],
            attns=[b.attn for b in cast("Iterable[Block]", blocks)],
            mlps=[b.mlp for b in cast("Iterable[Block]", blocks)],
            n_heads=c.n_head, context=c.block_size, vocab_size=c.vocab_size,
            name=name or "scratch",
        )  # fmt: skip
    hc = getattr(model, "config", None)
    inner, head = getattr(model, "model", None), getattr(model, "lm_head", None)
    if hc is None or head is None:  # not a causal LM with a config and an LM head
        raise _cannot_open(model)
    if inner is not None and hasattr(inner, "layers") and hasattr(inner.layers[0], "self_attn"):
        return Lens(
            model=model, tokenizer=tokenizer, kind="llama", embed=inner.embed_tokens,
            layers=inner.layers, final_norm=inner.norm, unembed=head,
            out_projs=[b.self_attn.o_proj for b in inner.layers],
            attns=[b.self_attn for b in inner.layers], mlps=[b.mlp for b in inner.layers],
            n_heads=hc.num_attention_heads, context=hc.max_position_embeddings,
            vocab_size=hc.vocab_size, name=name or hc.model_type,
        )  # fmt: skip
    tr = getattr(model, "transformer", None)
    if tr is not None and hasattr(tr, "h") and hasattr(tr.h[0], "attn"):
        return Lens(
            model=model, tokenizer=tokenizer, kind="gpt2", embed=tr.wte, layers=tr.h,
            final_norm=tr.ln_f, unembed=head, out_projs=[b.attn.c_proj for b in tr.h],
            attns=[b.attn for b in tr.h], mlps=[b.mlp for b in tr.h],
            n_heads=hc.n_head, context=hc.n_positions, vocab_size=hc.vocab_size,
            name=name or hc.model_type,
        )  # fmt: skip
    raise _cannot_open(model)


def _cannot_open(model: nn.Module) -> LensError:
    return LensError(
        f"cannot open a {type(model).__name__}: the lens knows nanobard's GPT, Llama-style "
        "(model.layers[i].self_attn.o_proj) and GPT-2 (transformer.h[i].attn.c_proj) models"
    )


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """model.eval() inside the block; the previous train/eval state is restored after it."""
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


@contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """A Hugging Face model on its explicit attention path (the fused ones return no weights)."""
    hf = cast("PreTrainedModel", model)  # a Lens of kind "llama" or "gpt2" holds one
    before = getattr(hf.config, "_attn_implementation", "eager")
    switch = before != "eager" and hasattr(hf, "set_attn_implementation")
    if switch:
        hf.set_attn_implementation("eager")
    try:
        yield
    finally:
        if switch:
            hf.set_attn_implementation(before)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _first(out: Any) -> torch.Tensor:
    """A module's main output: the tensor itself, or the first of a tuple (HF attention)."""
    return out[0] if isinstance(out, tuple) else out


def _tile(obj: Any, k: int, batch: int) -> Any:
    """Repeat every tensor with ``batch`` rows k times along dim 0 (masks and the like captured
    for a traced batch, reused for k copies of it); tensors with one row broadcast as they are."""
    if k == 1 or batch == 1:
        return obj
    if isinstance(obj, torch.Tensor):
        return obj.repeat(k, *[1] * (obj.dim() - 1)) if obj.dim() and obj.shape[0] == batch else obj
    if isinstance(obj, (tuple, list)):
        return type(obj)(_tile(o, k, batch) for o in obj)
    if isinstance(obj, dict):
        return {key: _tile(v, k, batch) for key, v in obj.items()}
    return obj
