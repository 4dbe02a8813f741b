"""The from-scratch GPT, read top to bottom in the order data flows through it:

    positional encoding -> causal self-attention -> MLP -> block -> GPT

The readable presets build GPT-2's architecture. Three options the record presets turn on
(``ModelConfig``; modded-nanogpt's speed runs measured them): rotary positions instead of an added
position embedding, normalised queries and keys (``qk_norm``, by RMSNorm or LayerNorm), ReLU² in
the MLP; and ``zero_init`` starts the residual projections at zero.

Shapes: B batch, T query positions, S key positions (T + cached positions), C = n_embd,
nh = n_head, hs = C // nh (head size), V = vocab size.

Parameter names follow the GPT-2 checkpoint (``wte``, ``wpe``, ``h``, ``ln_f``, ``c_attn``,
``c_proj``, ``c_fc``), so a Hugging Face GPT-2 maps onto this model by transposing its Conv1D
weights (see ``from_hf_gpt2``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
import torch.nn as nn
from torch.nn import functional as F

from nanobard.config import ModelConfig
from nanobard.hardware import attention_precision

if TYPE_CHECKING:
    from collections.abc import Iterable

    from transformers import GPT2LMHeadModel


def sinusoidal_encoding(block_size: int, n_embd: int) -> torch.Tensor:
    """Fixed encoding of Vaswani et al.: PE[p, 2i] = sin(p / 10000^(2i/C)),
    PE[p, 2i+1] = cos(...)."""
    pos = torch.arange(block_size, dtype=torch.float32)[:, None]  # (T, 1)
    freq = torch.exp(
        torch.arange(0, n_embd, 2, dtype=torch.float32) * (-math.log(10000.0) / n_embd)
    )
    pe = torch.zeros(block_size, n_embd)  # (T, C)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq[: n_embd // 2])
    return pe


def rotary_table(block_size: int, head_size: int, base: float = 10000.0) -> torch.Tensor:
    """cos and sin of position p times frequency base^(-2i/hs), i < hs/2: (2, T, hs/2)."""
    freq = base ** (-torch.arange(0, head_size, 2, dtype=torch.float32) / head_size)  # (hs/2,)
    angle = torch.arange(block_size, dtype=torch.float32)[:, None] * freq  # (T, hs/2)
    return torch.stack([angle.cos(), angle.sin()])


def rotate(x: torch.Tensor, table: torch.Tensor, start: int) -> torch.Tensor:
    """Rotary positions (RoPE): in x (B, T, ..., hs), queries or keys at absolute positions
    start + t, each pair (x1[i], x2[i]) turned by the angle (start + t) * freq[i]. The dot product
    of a rotated query and key then depends on their distance only."""
    T, hs = x.size(1), x.size(-1)
    cos, sin = table[:, start : start + T].to(x.dtype).view(2, T, *[1] * (x.dim() - 3), hs // 2)
    x1, x2 = x.chunk(2, dim=-1)  # (B, T, ..., hs/2) each
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class KVCache:
    """Keys and values of past positions for one layer, preallocated to the context length."""

    def __init__(
        self,
        batch: int,
        n_head: int,
        max_len: int,
        head_size: int,
        device: torch.device | str,
        dtype: torch.dtype,
    ):
        self.k = torch.zeros(batch, n_head, max_len, head_size, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.pos = 0  # number of positions stored

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, nh, T, hs); return all keys and values so far (B, nh, S, hs), in the
        cache's dtype (which may be wider than the model's, see ``GPT.new_cache``)."""
        t = k.size(2)
        assert self.pos + t <= self.k.size(2), (
            f"cache overflow: {self.pos} + {t} > {self.k.size(2)}"
        )
        self.k[:, :, self.pos : self.pos + t] = k
        self.v[:, :, self.pos : self.pos + t] = v
        self.pos += t
        return self.k[:, :, : self.pos], self.v[:, :, : self.pos]


Fn = Callable[[torch.Tensor], torch.Tensor]


class Dropout(nn.Module):
    """``nn.Dropout`` (zero each element with probability p while training, scale the rest by
    1 / (1 - p)), with its mask drawn by ``torch.rand`` on a CPU: torch's CPU dropout draws it by
    ``bernoulli_``, about twice as slow (forward + backward at the ``cpu-10min`` shape: 3.2 ms
    against 2.0; both draw on one thread, with 1 or 2 torch threads alike). Elsewhere it is
    ``F.dropout``, a fused kernel on a GPU."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if not x.is_cpu:
            return F.dropout(x, self.p, training=True)
        scale = torch.rand(x.shape).ge_(self.p).mul_(1 / (1 - self.p))
        return x * scale.to(x.dtype)  # 0 or 1 / (1 - p) per element

    def extra_repr(self) -> str:
        return f"p={self.p}"


def direct(linear: nn.Module) -> Fn:
    """``linear``'s forward without nn.Module's call machinery (hooks, the attribute lookups of
    each call), for ``decode_step``; a module may give its own (``Int8Linear.direct``). It holds
    the module's tensors as they are now: take it again after moving or converting the model."""
    own = getattr(linear, "direct", None)
    if own is not None:
        return own()
    w, b = cast(torch.Tensor, linear.weight), cast("torch.Tensor | None", linear.bias)
    return lambda x: F.linear(x, w, b)


@dataclass(frozen=True)
class DecodeLayer:
    """One block's tensors and functions for ``decode_step``, looked up once (``decode_plan``):
    a small model generating on a CPU spends a large share of each token on Python lookups."""

    ln_1: tuple[torch.Tensor, torch.Tensor | None]
    heads: Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    c_proj: Fn
    ln_2: tuple[torch.Tensor, torch.Tensor | None]
    c_fc: Fn
    act: Fn
    mlp_proj: Fn


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention: softmax(Q Kᵀ / √d_k) V per head, heads concatenated."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        attn_drop = cfg.attention_dropout  # --attn-dropout, else --dropout
        self.n_head, self.n_embd, self.dropout, self.causal = (
            cfg.n_head,
            cfg.n_embd,
            attn_drop,
            cfg.causal,
        )
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)  # Q, K, V in one matmul
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)  # W^O
        self.attn_dropout = Dropout(attn_drop)
        self.resid_dropout = Dropout(cfg.dropout)
        hs = cfg.n_embd // cfg.n_head
        # qk_norm: per-channel gains of the normalised queries and keys, starting at 1
        self.q_gain = nn.Parameter(torch.ones(hs)) if cfg.qk_norm else None
        self.k_gain = nn.Parameter(torch.ones(hs)) if cfg.qk_norm else None
        self.qk_layer_norm = cfg.qk_norm_type == "layer"  # else RMSNorm
        self.rotary: torch.Tensor | None
        if cfg.pos_encoding == "rotary":
            self.register_buffer("rotary", rotary_table(cfg.block_size, hs), persistent=False)
        else:
            self.rotary = None

    def heads(self, x: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, C) at positions start.. -> queries, keys, values (B, nh, T, hs) each."""
        B, T, C = x.shape
        qkv = self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head)
        if self.q_gain is None and self.rotary is None:  # GPT-2's attention: nothing more
            q, k, v = qkv.unbind(2)  # (B, T, nh, hs) each
        else:
            qk, v = qkv[:, :, :2], qkv[:, :, 2]  # (B, T, 2, nh, hs), (B, T, nh, hs)
            # queries and keys normalised and rotated together: half the operator calls. The
            # gains come before the rotation, so a score still depends on the distance only
            if self.q_gain is not None and self.k_gain is not None:
                hs = qk.size(-1)
                if self.qk_layer_norm:  # one fused kernel each way (RMSNorm's backward is not)
                    qk = torch.stack(
                        [
                            F.layer_norm(qk[:, :, 0], (hs,), self.q_gain),
                            F.layer_norm(qk[:, :, 1], (hs,), self.k_gain),
                        ],
                        dim=2,
                    )
                else:
                    gains = torch.stack([self.q_gain, self.k_gain])[:, None]  # (2, 1, hs)
                    qk = F.rms_norm(qk, (hs,)) * gains
            if self.rotary is not None:
                qk = rotate(qk, self.rotary, start)
            q, k = qk.unbind(2)  # (B, T, nh, hs) each
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, nh, T, hs) each

    def direct_heads(
        self,
    ) -> Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``heads`` for one new token (x (1, 1, C)), as a plain function (see ``direct``)."""
        if self.q_gain is not None or self.rotary is not None:
            return self.heads  # rotary / QK-norm: the shared path
        qkv, nh, hs = direct(self.c_attn), self.n_head, self.n_embd // self.n_head

        def heads(x: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            q, k, v = qkv(x).view(1, 1, 3, nh, hs).transpose(1, 3).unbind(2)
            return q, k, v  # (1, nh, 1, hs) each

        return heads

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T, C = x.shape
        hs = C // self.n_head
        q, k, v = self.heads(x, cache.pos if cache is not None else 0)  # 3 x (B, nh, T, hs)
        if cache is not None:
            k, v = cache.append(k, v)  # (B, nh, S, hs)
            q = q.to(k.dtype)  # attention runs in the cache's dtype
        S = k.size(2)
        # query t (absolute position S - T + t) may see keys 0 .. S - T + t, never a later one
        # (without the causal mask, an encoder-style model, every query sees every key)
        mask = (
            None
            if T == 1 or not self.causal
            else torch.ones(T, S, dtype=torch.bool, device=x.device).tril(S - T)
        )

        weights = None
        if need_weights:  # the readable path: every step written out, weights returned
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))  # (B, nh, T, S)
            if mask is not None:
                att = att.masked_fill(~mask, float("-inf"))
            att = F.softmax(att, dim=-1)  # (B, nh, T, S), rows sum to 1
            weights = att
            y = self.attn_dropout(att) @ v  # (B, nh, T, hs)
        else:  # the fast path: same math, fused kernel (flash / memory-efficient where available)
            drop = self.dropout if self.training else 0.0
            if q.is_cpu:  # on a CPU, attention runs in float32 (faster there, see hardware.py)
                q, k, v = q.float(), k.float(), v.float()
            with attention_precision(q):
                if T == S:
                    y = F.scaled_dot_product_attention(
                        q, k, v, dropout_p=drop, is_causal=self.causal
                    )
                else:
                    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        # (B, T, C): the heads side by side again
        y = y.to(x.dtype).transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y)), weights


def relu2(x: torch.Tensor) -> torch.Tensor:
    """ReLU squared (So et al., Primer): max(x, 0)²."""
    return F.relu(x).square()


class MLP(nn.Module):
    """Position-wise feed-forward: C -> 4C -> GELU (or ReLU²) -> C."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.act = F.gelu if cfg.activation == "gelu" else relu2
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))  # (B, T, C)


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        a, weights = self.attn(self.ln_1(x), cache, need_weights)
        x = x + a  # residual
        x = x + self.mlp(self.ln_2(x))  # residual
        return x, weights


@dataclass
class GPTOutput:
    logits: torch.Tensor  # (B, T, V), every position
    loss: torch.Tensor | None = None  # mean cross-entropy in nats per token, when targets given
    attentions: list[torch.Tensor] | None = None  # per layer (B, nh, T, S), when asked


class GPT(nn.Module):
    pe: torch.Tensor  # the sinusoidal table (T, C), a buffer; only with pos_encoding="sinusoidal"
    # (rotary positions live in each attention layer; "learned" adds transformer.wpe)

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.transformer = nn.ModuleDict(
            dict(
                wte=wte,
                drop=Dropout(cfg.dropout),
                h=nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)]),
                ln_f=nn.LayerNorm(cfg.n_embd, bias=cfg.bias),
            )
        )
        if cfg.pos_encoding == "learned":
            self.transformer["wpe"] = nn.Embedding(cfg.block_size, cfg.n_embd)
        elif cfg.pos_encoding == "sinusoidal":
            self.register_buffer(
                "pe", sinusoidal_encoding(cfg.block_size, cfg.n_embd), persistent=False
            )
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.lm_head.weight = wte.weight
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # scaled init of residual projections (GPT-2)
            if name.endswith("c_proj.weight"):
                if cfg.zero_init:
                    nn.init.zeros_(p)
                else:
                    nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        """Trainable parameters, a tied embedding counted once."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self) -> int:
        """Training FLOPs per token (forward + backward), as in the PaLM paper appendix B:
        6 N (matmuls with the weights) + 12 L C T (attention scores and weighted sum)."""
        c = self.config
        return 6 * self.num_params() + 12 * c.n_layer * c.n_embd * c.block_size

    def new_cache(
        self, batch: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> list[KVCache]:
        """One KVCache per layer, in the parameters' dtype unless told. A float32 cache for a
        bfloat16 model keeps attention in float32: CPUs have no fast bfloat16 kernels for those
        small batched matmuls, so it is the faster choice there."""
        c = self.config
        p = next(self.parameters())
        return [
            KVCache(
                batch,
                c.n_head,
                c.block_size,
                c.n_embd // c.n_head,
                device or p.device,
                dtype or p.dtype,
            )
            for _ in range(c.n_layer)
        ]

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        return_attention: bool = False,
        kv_cache: list[KVCache] | None = None,
    ) -> GPTOutput:
        """idx (B, T) token ids -> logits (B, T, V) for every position.

        ``return_attention`` takes the readable attention path and returns its weights;
        ``kv_cache`` (from ``new_cache``) feeds only new tokens, reusing cached keys and values.
        """
        B, T = idx.shape
        past = kv_cache[0].pos if kv_cache is not None else 0
        if past + T > self.config.block_size:
            raise ValueError(
                f"sequence of {past + T} tokens exceeds the context length {self.config.block_size}"
            )
        x = self.transformer["wte"](idx)  # (B, T, C)
        if self.config.pos_encoding == "learned":
            x = x + self.transformer["wpe"](torch.arange(past, past + T, device=idx.device))
        elif self.config.pos_encoding == "sinusoidal":
            x = x + self.pe[past : past + T]  # (T, C) broadcast over the batch
        x = self.transformer["drop"](x)  # (B, T, C)
        attentions: list[torch.Tensor] | None = [] if return_attention else None
        for i, block in enumerate(cast(nn.ModuleList, self.transformer["h"])):
            x, w = block(x, kv_cache[i] if kv_cache is not None else None, return_attention)
            if attentions is not None:
                attentions.append(w)
        x = self.transformer["ln_f"](x)  # (B, T, C)
        logits = self.lm_head(x)  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        return GPTOutput(logits=logits, loss=loss, attentions=attentions)

    @torch.inference_mode()
    def decode_plan(self) -> list[DecodeLayer]:
        """Each block's tensors and functions for ``decode_step``, looked up once. It holds the
        tensors as they are: take a new plan after moving, converting or quantizing the model
        (``ScratchDecoder`` takes one per cache it fills)."""
        plan = []
        for block in cast("Iterable[Block]", self.transformer["h"]):
            plan.append(
                DecodeLayer(
                    ln_1=(block.ln_1.weight, block.ln_1.bias),
                    heads=block.attn.direct_heads(),
                    c_proj=direct(block.attn.c_proj),
                    ln_2=(block.ln_2.weight, block.ln_2.bias),
                    c_fc=direct(block.mlp.c_fc),
                    act=block.mlp.act,
                    mlp_proj=direct(block.mlp.c_proj),
                )
            )
        return plan

    def decode_step(
        self, token: int, cache: list[KVCache], plan: list[DecodeLayer] | None = None
    ) -> torch.Tensor:
        """Logits (V,) for the next token after feeding one ``token`` at the cache's next position:
        the same math as ``forward`` with a KV cache (batch 1, eval mode), written with functional
        calls. Generating on a CPU, a small model spends most of each token on dispatching modules
        and dropout layers that do nothing at inference; this path skips them, and with ``plan``
        (``decode_plan``, taken once per generation) the lookups of each block's weights too."""
        c, t = self.config, self.transformer
        # a ModuleDict holds plain Modules to a type checker: name what __init__ put in it
        wte, ln_f = cast(nn.Embedding, t["wte"]), cast(nn.LayerNorm, t["ln_f"])
        C = c.n_embd
        pos = cache[0].pos
        if pos >= c.block_size:
            raise ValueError(
                f"sequence of {pos + 1} tokens exceeds the context length {c.block_size}"
            )
        x = wte.weight[token]  # (C,)
        if c.pos_encoding == "learned":
            x = x + cast(nn.Embedding, t["wpe"]).weight[pos]
        elif c.pos_encoding == "sinusoidal":
            x = x + self.pe[pos]
        x = x.view(1, 1, C)  # (1, 1, C)
        for layer, kv in zip(plan if plan is not None else self.decode_plan(), cache):
            h = F.layer_norm(x, (C,), *layer.ln_1)
            q, k, v = layer.heads(h, pos)  # 3 x (1, nh, 1, hs)
            keys, values = kv.append(k, v)  # (1, nh, S, hs)
            y = F.scaled_dot_product_attention(q.to(keys.dtype), keys, values)  # (1, nh, 1, hs)
            x = x + layer.c_proj(y.to(x.dtype).reshape(1, 1, C))
            h = F.layer_norm(x, (C,), *layer.ln_2)
            # the linear layers may be Int8Linear (quantize.py)
            x = x + layer.mlp_proj(layer.act(layer.c_fc(h)))
        x = F.layer_norm(x, (C,), ln_f.weight, ln_f.bias)
        return F.linear(x, self.lm_head.weight)[0, 0]  # (V,)

    @classmethod
    def from_hf_gpt2(cls, hf_model: GPT2LMHeadModel) -> GPT:
        """Build a GPT with the weights of a Hugging Face ``GPT2LMHeadModel``.

        GPT-2 stores its projections as Conv1D (in, out); ours are Linear (out, in): transpose.
        The HF config must use ``activation_function="gelu"`` for exact logits (GPT-2 itself uses
        the tanh approximation, ``gelu_new``, which differs in the fourth decimal).
        """
        hc = hf_model.config
        cfg = ModelConfig(
            vocab_size=hc.vocab_size,
            block_size=hc.n_positions,
            n_layer=hc.n_layer,
            n_head=hc.n_head,
            n_embd=hc.n_embd,
            dropout=0.0,
            bias=True,
            tie_weights=True,
        )
        model = cls(cfg)
        sd = model.state_dict()
        transposed = (
            "attn.c_attn.weight",
            "attn.c_proj.weight",
            "mlp.c_fc.weight",
            "mlp.c_proj.weight",
        )
        for k, v in hf_model.state_dict().items():
            if k.endswith(("attn.bias", "attn.masked_bias")) or k not in sd:
                continue
            with torch.no_grad():
                sd[k].copy_(v.t() if k.endswith(transposed) else v)
        return model
