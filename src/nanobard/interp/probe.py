"""One text through one model, everything the live explorer (``nanobard serve``) shows of it:
the tokens and the characters each covers, each token's surprise in bits, the next-token
distribution before and after the sampling settings reshape it, one head's attention (and a
thumbnail of every head's), the logit lens at one position, and all of that again with chosen
heads switched off (mean-ablation, as ``head_ablation``).

Positions are characters of the text, so a character model and a BPE model line up: the
prediction "after character ``at``" is read at the token covering character ``at - 1``. A text
longer than the model's context (or MAX_TOKENS) is cut from the front (``Probe.start`` says
where it starts).

    p = probe(make_lens(model, tokenizer), "ROMEO:\\nBut soft", head=(1, 2), logit_lens=True)
    p.next.candidates[0].token, p.bits_per_char, p.attention.weights[-1]
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch.nn import functional as F

from nanobard.interp.circuits import InterpretError
from nanobard.interp.lens import eager_attention, eval_mode
from nanobard.interp.patching import LogitAttribution, PatchingError, attribution_at
from nanobard.model.sampling import SamplingConfig, sampling_probs
from nanobard.records import Record

if TYPE_CHECKING:
    from collections.abc import Sequence

    from nanobard.interp.lens import Lens, Trace

logger = logging.getLogger(__name__)
LN2 = math.log(2)
MAX_CHARS = 4096  # the longest text a probe reads
MAX_TOP = 50  # the most candidates a next-token table lists
# The most tokens a probe reads (or the model's context, when shorter). Attention for every layer
# and head is kept for the thumbnails: SmolLM2-135M's 30 x 9 heads at 512 tokens hold 283 MB.
MAX_TOKENS = 512
THUMBNAIL = 16  # a head's thumbnail: its attention map averaged down to at most 16 x 16


@dataclass
class Candidate(Record):
    token: str  # its text (a BPE token's leading space included)
    id: int
    prob: float  # the model's probability (temperature 1, nothing filtered)
    sampled: float  # its probability under the sampling settings; 0 outside the sampled set


@dataclass
class NextToken(Record):
    position: int  # index of the token the prediction follows
    after: int  # characters of the text before the predicted token
    candidates: list[Candidate]  # the most likely first
    kept: int  # tokens of the whole vocabulary left in the sampled set
    entropy_bits: float  # of the model's distribution


@dataclass
class LensLayer(Record):
    layer: int  # 0: the embeddings; n_layers: the model's output
    tokens: list[str]  # the top predictions read off the residual stream there
    probs: list[float]


@dataclass
class HeadView(Record):
    layer: int
    head: int
    weights: list[list[float]]  # row i: token i's attention over tokens 0 .. i


@dataclass
class Ablated(Record):
    heads: list[list[int]]  # [layer, head] pairs, mean-ablated together
    bits_per_char: float | None
    surprise_bits: list[float | None]
    next: NextToken
    clean_candidates: list[float]  # the probability of each of Probe.next's candidates, now
    lens: list[LensLayer] | None = None


@dataclass
class Probe(Record):
    model: str
    start: int  # first character of the text the model read (a long text is cut from the front)
    tokens: list[str]
    spans: list[list[int]]  # each token's characters: [start, end) in the text
    surprise_bits: list[float | None]  # -log2 p(token | the tokens before); None for the first
    bits_per_char: float | None  # total surprise / the characters of tokens 1 .. T-1
    chars_scored: int
    next: NextToken
    attention: HeadView | None = None
    thumbnails: list[list[list[list[float]]]] | None = None  # [layer][head] pooled maps
    lens: list[LensLayer] | None = None
    ablated: Ablated | None = None
    dla: LogitAttribution | None = None  # of the top candidate, at the same position
    seconds: float = 0.0


class ProbeError(InterpretError):
    """A probe cannot read the text or the settings given; the message says what to change."""


@torch.no_grad()
def probe(
    lens: Lens,
    text: str,
    *,
    at: int | None = None,
    sampling: SamplingConfig | None = None,
    top: int = 10,
    head: tuple[int, int] | None = None,
    thumbnails: bool = False,
    logit_lens: bool = False,
    lens_top: int = 3,
    ablate: Sequence[Sequence[int]] = (),
    dla: bool = False,
) -> Probe:
    """Read ``text`` with the model behind ``lens`` (see the module's docstring). ``at``: the
    prediction after that many characters (default: after the whole text); ``top``: candidates
    listed; ``head``: (layer, head) whose full attention map is returned; ``ablate``: (layer,
    head) pairs switched off together, each replaced by its mean over this text's positions;
    ``dla``: the direct logit attribution of the top candidate (interp.patching)."""
    t0 = time.perf_counter()
    sampling = sampling or SamplingConfig()
    _check(lens, text, top, head, ablate)
    ids, counts = lens.encode(text)  # a character model names the characters it cannot read
    if not ids:
        raise ProbeError("the text gives no tokens; type at least one character")
    ends = torch.tensor(counts).cumsum(0).tolist()
    starts = [e - c for e, c in zip(ends, counts)]
    cut = max(0, len(ids) - min(lens.context, MAX_TOKENS))  # keep the last ones
    ids, starts, ends = ids[cut:], starts[cut:], ends[cut:]
    pos = _position(at, starts, ends, len(text))
    need_attention = head is not None or thumbnails
    hf_eager = need_attention and lens.kind != "scratch"
    with eval_mode(lens.model), eager_attention(lens.model) if hf_eager else nullcontext():
        tr = lens.trace(torch.tensor([ids]), attention=need_attention)
        logits = tr.logits[0]  # (T, V)
        surprise, bpc, scored = _surprise(logits, ids, starts, ends)
        result = Probe(
            model=lens.name,
            start=starts[0],
            tokens=lens.token_strings(ids),
            spans=[[s, e] for s, e in zip(starts, ends)],
            surprise_bits=surprise,
            bits_per_char=bpc,
            chars_scored=scored,
            next=_next(lens, logits[pos], pos, ends[pos], sampling, top),
            lens=_lens_layers(lens, tr.resid, pos, lens_top) if logit_lens else None,
        )
        if need_attention:
            att = [a[0] for a in tr.attentions or []]  # L of [H, T, T]
            if head is not None:
                rows = att[head[0]][head[1]].float().cpu()
                weights = [[round(v, 4) for v in r[: i + 1]] for i, r in enumerate(rows.tolist())]
                result.attention = HeadView(head[0], head[1], weights)
            if thumbnails:
                result.thumbnails = [_thumbnails(a) for a in att]
        if dla:
            try:
                result.dla = attribution_at(lens, tr, result.next.candidates[0].id, pos)
            except PatchingError as e:  # a model whose stream the attribution cannot split
                logger.warning("no direct logit attribution: %s", e)
        if ablate:
            clean_ids = [c.id for c in result.next.candidates]
            result.ablated = _ablated(lens, tr, ids, starts, ends, pos, sampling, top, ablate,
                                      lens_top if logit_lens else 0, clean_ids)  # fmt: skip
    result.seconds = time.perf_counter() - t0
    return result


def _check(
    lens: Lens,
    text: str,
    top: int,
    head: tuple[int, int] | None,
    ablate: Sequence[Sequence[int]],
) -> None:
    if not text:
        raise ProbeError("the text is empty; type at least one character")
    if len(text) > MAX_CHARS:
        raise ProbeError(f"the text has {len(text):,} characters; the limit is {MAX_CHARS:,}")
    if not 1 <= top <= MAX_TOP:
        raise ProbeError(f"top must be in 1 .. {MAX_TOP}, got {top}")
    L, H = lens.n_layers, lens.n_heads
    for pair in ([head] if head is not None else []) + [tuple(p) for p in ablate]:
        if len(pair) != 2 or not (0 <= pair[0] < L and 0 <= pair[1] < H):
            raise ProbeError(
                f"a head is [layer, head] with layer in 0 .. {L - 1} and head in 0 .. {H - 1}; "
                f"got {list(pair)}"
            )


def _position(at: int | None, starts: list[int], ends: list[int], n_chars: int) -> int:
    """The token whose prediction comes after character ``at`` (the one covering ``at - 1``)."""
    if at is None:
        return len(ends) - 1
    if not 1 <= at <= n_chars:
        raise ProbeError(f"at must be in 1 .. {n_chars} (characters of the text), got {at}")
    if at <= starts[0]:
        raise ProbeError(
            f"character {at} is before the {len(ends)} tokens the model's context holds "
            f"(they start at character {starts[0]})"
        )
    i = next((i for i, e in enumerate(ends) if e >= at), len(ends) - 1)
    while i + 1 < len(ends) and ends[i + 1] == ends[i]:  # the rest of a split multi-byte character
        i += 1
    return i


def _surprise(
    logits: torch.Tensor, ids: list[int], starts: list[int], ends: list[int]
) -> tuple[list[float | None], float | None, int]:
    """Each token's surprise in bits (None for the first), bits/char and the characters scored."""
    if len(ids) < 2:
        return [None], None, 0
    nll = F.cross_entropy(logits[:-1].float(), torch.tensor(ids[1:], device=logits.device),
                          reduction="none") / LN2  # fmt: skip
    bits = [round(b, 4) for b in nll.tolist()]
    chars = ends[-1] - ends[0]
    return [None, *bits], (sum(bits) / chars if chars else None), chars


def _next(
    lens: Lens, logits: torch.Tensor, pos: int, after: int, cfg: SamplingConfig, top: int
) -> NextToken:
    """The candidates for the token after position ``pos``, before and after sampling."""
    logits = logits.float().cpu()
    probs = F.softmax(logits, dim=-1)
    sampled = sampling_probs(logits, cfg)
    best = torch.topk(probs, min(top, probs.numel()))
    ids = best.indices.tolist()
    entropy = float(-(probs * torch.log2(probs.clamp_min(1e-30))).sum())
    return NextToken(
        position=pos,
        after=after,
        candidates=[
            Candidate(t, i, round(float(probs[i]), 5), round(float(sampled[i]), 5))
            for t, i in zip(lens.token_strings(ids), ids)
        ],
        kept=int((sampled > 0).sum()),
        entropy_bits=round(entropy, 4),
    )


def _lens_layers(lens: Lens, resid: list[torch.Tensor], pos: int, k: int) -> list[LensLayer]:
    """The top-k tokens read off the residual stream entering each layer and after the last."""
    out = []
    for layer, x in enumerate(resid):
        p = F.softmax(lens.logits(x[:, pos : pos + 1])[0, 0], dim=-1).cpu()
        best = torch.topk(p, min(k, p.numel()))
        ids = best.indices.tolist()
        probs = [round(v, 4) for v in best.values.tolist()]
        out.append(LensLayer(layer, lens.token_strings(ids), probs))
    return out


def _thumbnails(att: torch.Tensor) -> list[list[list[float]]]:
    """One layer's maps [H, T, T], each averaged down to at most THUMBNAIL x THUMBNAIL."""
    pooled = F.adaptive_avg_pool2d(att.float()[:, None], min(att.shape[-1], THUMBNAIL))[:, 0]
    return [[[round(v, 4) for v in row] for row in m] for m in pooled.cpu().tolist()]


def _ablated(
    lens: Lens,
    tr: Trace,
    ids: list[int],
    starts: list[int],
    ends: list[int],
    pos: int,
    cfg: SamplingConfig,
    top: int,
    heads: Sequence[Sequence[int]],
    lens_top: int,
    clean_ids: list[int],
) -> Ablated:
    """The same text with ``heads`` mean-ablated together: from the first such layer onward."""
    nh = lens.n_heads
    by_layer: dict[int, list[int]] = {}
    for layer, h in heads:
        by_layer.setdefault(int(layer), []).append(int(h))
    first = min(by_layer)
    resid: list[torch.Tensor] = list(tr.resid[: first + 1])
    with ExitStack() as stack:
        for layer, hs in by_layer.items():
            out = tr.head_inputs[layer]  # (1, T, nh * hd)
            means = out.reshape(-1, nh, out.shape[-1] // nh).mean(0)  # [head, hd]
            mask = torch.zeros(1, nh, dtype=torch.bool)
            mask[0, hs] = True
            stack.enter_context(lens.ablate(layer, mask, means))
        x = tr.resid[first]
        for layer in range(first, lens.n_layers):  # one layer at a time: the lens reads each
            x = lens.run_from(tr, layer, x, stop=layer + 1)
            resid.append(x)
    logits = lens.logits(x)[0]
    surprise, bpc, _ = _surprise(logits, ids, starts, ends)
    probs = F.softmax(logits[pos].float(), dim=-1).cpu()
    return Ablated(
        heads=sorted([layer, h] for layer, hs in by_layer.items() for h in set(hs)),
        bits_per_char=bpc,
        surprise_bits=surprise,
        next=_next(lens, logits[pos], pos, ends[pos], cfg, top),
        clean_candidates=[round(float(probs[i]), 5) for i in clean_ids],
        lens=_lens_layers(lens, resid, pos, lens_top) if lens_top else None,
    )
