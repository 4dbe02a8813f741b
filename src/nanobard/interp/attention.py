"""Attention weights of both tracks, per-head statistics, and the future-token dependency check.

Attention patterns are returned as one tensor ``# [layer, head, query_pos, key_pos]`` with the
token strings that label its axes, read through the ``Lens`` (lens.py), the one place that knows
how each model kind gives them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from nanobard.config import ConfigError
from nanobard.interp.lens import Lens, eval_mode
from nanobard.records import Record

HF_MAP_TOKENS = 48  # a BPE model's attention map: a heatmap a person can still read


@dataclass
class AttentionMaps:
    tokens: list[str]  # token strings, one per position
    ids: list[int]  # the token ids those strings come from
    weights: torch.Tensor  # [layer, head, query_pos, key_pos], rows sum to 1


@dataclass
class HeadStats(Record):
    layer: int
    head: int
    self_attention: float  # mean weight on the diagonal (a token attending to itself)
    previous_token: float  # mean weight on the token just before
    mean_distance: float  # mean of sum_j a_ij (i - j), in tokens
    entropy_bits: float  # mean row entropy, bits
    first_token: float  # mean weight on position 0 (an "attention sink")


def attention_maps(lens: Lens, text: str, max_tokens: int | None = None) -> AttentionMaps:
    """Attention of any model the Lens opens on ``text``, cut to ``max_tokens`` tokens (default:
    the model's context). A Hugging Face model runs on its explicit attention path for this pass
    (the fused ones return no weights)."""
    ids, _ = lens.encode(text)
    ids = ids[: min(max_tokens or lens.context, lens.context)]
    if len(ids) < 2:  # row 0 can only attend to itself: no pattern to see
        raise ConfigError(f"the text is {len(ids)} token{'s' * (len(ids) != 1)} long; attention "
                          "needs at least two (give a longer --text)")  # fmt: skip
    with torch.no_grad(), eval_mode(lens.model):
        tr = lens.trace(torch.tensor([ids]), attention=True)
    weights = torch.stack([a[0] for a in tr.attentions or []]).float().cpu()  # [layer, head, T, T]
    return AttentionMaps(lens.token_strings(ids), ids, weights)


def head_statistics(weights: torch.Tensor) -> list[HeadStats]:
    """Per-head statistics of weights ``[layer, head, T, T]``; averages over query rows 1..T-1
    (row 0 can only attend to itself)."""
    L, H, T, _ = weights.shape
    if T < 2:
        raise ValueError("need at least two tokens for attention statistics")
    pos = torch.arange(T, dtype=torch.float32)
    dist = (pos[:, None] - pos[None, :]).clamp(min=0)  # [T, T]: i - j for j <= i
    rows = weights[:, :, 1:, :]  # [L, H, T-1, T]
    self_att = torch.diagonal(weights, dim1=-2, dim2=-1)[:, :, 1:].mean(-1)
    prev = torch.diagonal(weights, offset=-1, dim1=-2, dim2=-1).mean(-1)
    mean_dist = (rows * dist[1:]).sum(-1).mean(-1)
    entropy = -(rows * torch.log2(rows.clamp_min(1e-12))).sum(-1).mean(-1)
    first = rows[..., 0].mean(-1)
    return [
        HeadStats(
            i,
            h,
            float(self_att[i, h]),
            float(prev[i, h]),
            float(mean_dist[i, h]),
            float(entropy[i, h]),
            float(first[i, h]),
        )
        for i in range(L)
        for h in range(H)
    ]


def attention_findings(stats: list[HeadStats], model_name: str) -> list[str]:
    """Plain-language observations: previous-token heads, self heads, far-looking heads."""
    out = []
    prev = sorted(stats, key=lambda s: -s.previous_token)
    strong = [s for s in prev if s.previous_token > 0.4]
    if strong:
        names = ", ".join(f"L{s.layer}H{s.head} ({s.previous_token:.0%})" for s in strong[:4])
        out.append(
            f"{model_name}: previous-token heads (share of attention on the token just before): "
            f"{names}"
        )
    else:
        s = prev[0]
        out.append(
            f"{model_name}: no head is a clean previous-token head; the strongest is "
            f"L{s.layer}H{s.head}, with {s.previous_token:.0%} of its attention on the token just "
            "before"
        )
    selfh = sorted((s for s in stats if s.self_attention > 0.4), key=lambda s: -s.self_attention)
    if selfh:
        names = ", ".join(f"L{s.layer}H{s.head} ({s.self_attention:.0%})" for s in selfh[:4])
        out.append(f"{model_name}: heads that mostly attend to the token itself: {names}")
    far = sorted(stats, key=lambda s: -s.mean_distance)[:3]
    out.append(
        f"{model_name}: heads that look furthest back (mean distance in tokens): "
        + ", ".join(f"L{s.layer}H{s.head} ({s.mean_distance:.1f})" for s in far)
    )
    sinks = [s for s in stats if s.first_token > 0.5]
    if sinks:
        out.append(
            f"{model_name}: {len(sinks)} of {len(stats)} heads put most weight on the first token "
            "(an 'attention sink', common in pretrained models)"
        )
    return out


def most_interesting_layer(stats: list[HeadStats]) -> int:
    """The layer of the strongest previous-token head: the pattern most worth showing a learner."""
    return max(stats, key=lambda s: s.previous_token).layer


@dataclass
class Causality(Record):
    """Can any position depend on a later one? Both maxima must be exactly zero."""

    tokens: int
    attention_above_diagonal_max: float
    attention_check: str  # "pass" or "fail"
    future_gradient_max: float
    gradient_check: str

    @property
    def passed(self) -> bool:
        return self.attention_check == "pass" and self.gradient_check == "pass"


@dataclass
class AttentionAnalysis(Record):
    """One model's attention on one text: per-head statistics, findings, the causality check."""

    model: str
    layers: int
    heads: int
    tokens: list[str]
    heads_stats: list[HeadStats]
    findings: list[str]
    causality: Causality
    mean_entropy_bits: float
    uniform_entropy_bits: float

    @property
    def strongest_previous_token_layer(self) -> int:
        return most_interesting_layer(self.heads_stats)


def causality_check(lens: Lens, ids: list[int]) -> Causality:
    """Two independent checks that no position depends on a later one.

    1. Every attention weight above the diagonal is exactly zero.
    2. The gradient of the logits at position t w.r.t. the input embedding at any position > t is
       exactly zero, for every t (the token embedding's output is swapped for a leaf tensor).
    """
    x = torch.tensor([ids])
    T = len(ids)
    emb = lens.embed(x.to(lens.device)).detach().requires_grad_(True)  # (1, T, C)
    handle = lens.embed.register_forward_hook(lambda module, args, out: emb)
    try:
        with eval_mode(lens.model):
            tr = lens.trace(x, attention=True)
    finally:
        handle.remove()
    att = tr.attentions or []
    above = max(torch.triu(a[0].detach().float(), diagonal=1).abs().max().item() for a in att)
    max_grad = 0.0
    for t in range(T - 1):
        (g,) = torch.autograd.grad(tr.logits[0, t].sum(), emb, retain_graph=t < T - 2)
        max_grad = max(max_grad, g[0, t + 1 :].abs().max().item())
    return Causality(T, above, _verdict(above), max_grad, _verdict(max_grad))


def _verdict(largest: float) -> str:
    return "pass" if largest == 0.0 else "fail"


def analyse_attention(lens: Lens, maps: AttentionMaps) -> AttentionAnalysis:
    """Statistics, findings and the causality check of one model's attention maps."""
    L, H, T, _ = maps.weights.shape
    stats = head_statistics(maps.weights)
    return AttentionAnalysis(
        model=lens.name,
        layers=L,
        heads=H,
        tokens=maps.tokens,
        heads_stats=stats,
        findings=attention_findings(stats, lens.name),
        causality=causality_check(lens, maps.ids),
        mean_entropy_bits=sum(s.entropy_bits for s in stats) / len(stats),
        uniform_entropy_bits=sum(math.log2(i + 1) for i in range(1, T)) / (T - 1),
    )
