"""Weight-only int8 for generating on a CPU: each matrix of the transformer blocks stored as int8
with one float scale per output row, multiplied by ``torch._weight_int8pack_mm`` (activations stay
bfloat16, attention and the KV cache float32).

Generating one token reads every weight once, and on a CPU that read is most of the time: int8
weights are a quarter of float32's bytes and half of bfloat16's. The rounding error of symmetric
per-row int8 (at most half a step of max|w| / 127 per weight) changes the bits per character by
a few thousandths; ``evaluate`` measures it on the same text as the other precisions.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import cast

import torch
import torch.nn as nn

from nanobard.errors import ConfigError
from nanobard.model.gpt import GPT


class Int8Linear(nn.Module):
    """y = x Wᵀ + b with W stored as int8 (out, in) and a scale per output row."""

    weight_int8: torch.Tensor  # (out, in) int8, a buffer
    scale: torch.Tensor  # (out,) bfloat16, a buffer
    bias: torch.Tensor | None  # (out,) bfloat16, a buffer

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach().float()  # (out, in)
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # (out,)
        self.register_buffer(
            "weight_int8", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
        )
        self.register_buffer("scale", scale.to(torch.bfloat16))
        self.register_buffer(
            "bias", None if linear.bias is None else linear.bias.detach().to(torch.bfloat16)
        )
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def direct(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """``forward`` as a plain function of this layer's tensors as they are now (for
        ``GPT.decode_step``, see ``gpt.direct``)."""
        w, scale, bias, n, out = (self.weight_int8, self.scale, self.bias, self.in_features,
                                  self.out_features)  # fmt: skip
        mm = torch._weight_int8pack_mm

        def linear(x: torch.Tensor) -> torch.Tensor:
            y = mm(x.reshape(-1, n).to(torch.bfloat16), w, scale)
            return (y if bias is None else y + bias).view(*x.shape[:-1], out)

        return linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[:-1]
        y = torch._weight_int8pack_mm(
            x.reshape(-1, self.in_features).to(torch.bfloat16), self.weight_int8, self.scale
        )
        if self.bias is not None:
            y = y + self.bias
        return y.view(*shape, self.out_features)


def quantize_int8(model: GPT) -> GPT:
    """A copy of a from-scratch GPT whose block matrices are Int8Linear and whose other weights
    (embeddings = tied output layer, LayerNorms) are bfloat16. CPU only."""
    if next(model.parameters()).device.type != "cpu":
        raise ConfigError("int8 generation is for CPUs; on a GPU use --dtype bfloat16")
    q = copy.deepcopy(model).to(torch.bfloat16).eval()
    for src, dst in zip(
        cast(nn.ModuleList, model.transformer["h"]), cast(nn.ModuleList, q.transformer["h"])
    ):  # quantized from the float32 weights
        for part, name in (
            ("attn", "c_attn"),
            ("attn", "c_proj"),
            ("mlp", "c_fc"),
            ("mlp", "c_proj"),
        ):
            setattr(getattr(dst, part), name, Int8Linear(getattr(getattr(src, part), name)))
    return q
