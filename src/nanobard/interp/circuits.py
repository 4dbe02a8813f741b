"""What each head does: induction and previous-token scores, head ablation, the logit lens and
loss by context position, for the from-scratch GPT and a Hugging Face causal LM alike.

Each analysis takes a ``Lens`` (``make_lens(model, tokenizer)``, see ``lens.py``) and returns a
dataclass with ``to_dict``/``from_dict``; per-head numbers are nested lists ``# [layer, head]``.
Losses on text are in **bits per character** (total NLL in nats / characters / ln 2, as in
``evaluate.py``), so the character model and a BPE model share one axis.

    lens = make_lens(model, tokenizer)
    ind = induction_test(lens)                     # random tokens repeated twice
    abl = head_ablation(lens, text, layers=[0, 1]) # cost of removing each head, bits/char
    ll = logit_lens(lens, text)                    # bits/char read off each layer
    pos = loss_by_position(lens, val_text)         # in-context learning curve
    print("\\n".join(circuit_findings(induction=ind, ablation=abl, lens=ll, positions=pos)))
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
from torch.nn import functional as F

from nanobard.interp.lens import Lens, LensError, eval_mode, make_lens
from nanobard.records import EvalRow, Record

logger = logging.getLogger(__name__)
LN2 = math.log(2)


class InterpretError(LensError):
    """An analysis cannot run on the text or settings given; the message says what to change."""


_Result = Record  # every result here is a Record: to_dict() / from_dict() through JSON


@dataclass
class InductionResult(_Result):
    model: str
    seq_len: int  # n: random tokens, then the same n again
    batch: int
    token_range: list[int]  # [low, high): ids drawn from
    induction: list[list[float]]  # [layer, head]: mean attention from i to i - n + 1, second half
    previous_token: list[list[float]]  # [layer, head]: mean attention from i to i - 1
    loss_first_nats: float  # mean NLL per token, targets 1 .. n-1 (unpredictable)
    loss_second_nats: float  # mean NLL per token, targets n+1 .. 2n-1 (copyable)

    @property
    def loss_first_bits(self) -> float:
        return self.loss_first_nats / LN2

    @property
    def loss_second_bits(self) -> float:
        return self.loss_second_nats / LN2


@dataclass
class AblationResult(_Result):
    model: str
    method: str  # "mean" or "zero"
    layers: list[int]  # the layers whose heads were ablated
    # [layer, head]: ablated - clean bits/char; None: not ablated
    delta_bpc: list[list[float | None]]
    clean_bpc: float
    tokens: int  # tokens of the slice
    chars: int  # characters scored
    seconds: float


@dataclass
class LogitLensResult(_Result):
    model: str
    layers: list[int]  # which residual streams: 0 = after the embeddings, l = after block l
    bpc: list[float]  # [layers]: bits/char read off each (the last, L, is the model's output)
    top1_agreement: list[float]  # [layers]: share of positions whose top-1 is the final one
    model_bpc: float  # the model's own bits/char on the same tokens
    tokens: int
    chars: int


@dataclass
class PositionLoss(_Result):
    model: str
    bpc: list[float | None]  # [char offset in the window]: bits/char there; None: nothing scored
    chars: list[int]  # [char offset]: characters scored at that offset, over all windows
    overall_bpc: float  # of all the windows together
    windows: int
    window_tokens: int


def _windows(
    lens: Lens,
    text: str,
    window: int,
    max_tokens: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping windows of ``window`` tokens from the first ``max_tokens`` tokens of text:
    ids and characters per token, both (W, T). The tail that fills no window is left out."""
    ids, chars = lens.encode(text)
    ids, chars = ids[:max_tokens], chars[:max_tokens]
    if len(ids) < 2:
        raise InterpretError(
            f"the text gives {len(ids)} token(s); give at least two tokens of text"
        )
    T = min(window, len(ids))
    W = len(ids) // T
    return torch.tensor(ids[: W * T]).view(W, T), torch.tensor(chars[: W * T]).view(W, T)


def _nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(B, T, V) logits, (B, T) ids -> (B, T-1) NLL in nats; column j scores token j + 1."""
    B, T, V = logits.shape
    ids = ids.to(logits.device)
    # flattened to (B * (T-1), V): 3x faster on CPU than cross_entropy over (B, V, T-1)
    nll = F.cross_entropy(
        logits[:, :-1].float().reshape(-1, V), ids[:, 1:].reshape(-1), reduction="none"
    )
    return nll.view(B, T - 1)


def _bpc(nll_nats: float, chars: int) -> float:
    return nll_nats / chars / LN2


def induction_scores(att: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Induction and previous-token scores ``# [layer, head]`` from attention ``# [layer, head,
    query, key]`` on n random tokens repeated twice (T = 2n)."""
    assert att.shape[-1] == 2 * n, f"{att.shape[-1]} positions, expected 2 * {n}"
    i = torch.arange(n, 2 * n)  # second-half queries; their earlier copy is at i - n
    j = torch.arange(1, 2 * n)
    return att[..., i, i - n + 1].mean(-1), att[..., j, j - 1].mean(-1)


@torch.no_grad()
def induction_test(
    lens: Lens,
    *,
    seq_len: int | None = None,
    batch: int = 4,
    seed: int = 0,
    token_range: tuple[int, int] | None = None,
) -> InductionResult:
    """TransformerLens's induction test: ``batch`` sequences of ``seq_len`` random tokens (seeded,
    from ``token_range``, default ``lens.token_range()``), each repeated twice. An induction head at
    second-half position i attends to i - n + 1, the token after the earlier copy of token i; a
    model that uses such heads has a much lower loss on the second half than on the first."""
    n = seq_len or min(50, lens.context // 2)
    if n < 2 or 2 * n > lens.context:
        raise InterpretError(
            f"seq_len must be 2 .. {lens.context // 2} for a context of {lens.context}"
        )
    lo, hi = token_range or lens.token_range()
    g = torch.Generator().manual_seed(seed)
    half = torch.randint(lo, hi, (batch, n), generator=g)  # (B, n)
    ids = torch.cat([half, half], dim=1)  # (B, 2n)
    with eval_mode(lens.model):
        tr = lens.trace(ids, attention=True)
    att = torch.stack([a.float().mean(0) for a in tr.attentions or []]).cpu()  # [layer, head, T, T]
    ind, prev = induction_scores(att, n)
    nll = _nll(tr.logits, ids)  # (B, 2n - 1)
    return InductionResult(
        lens.name,
        n,
        batch,
        [lo, hi],
        ind.tolist(),
        prev.tolist(),
        nll[:, : n - 1].mean().item(),
        nll[:, n:].mean().item(),
    )


def head_scores(
    model: nn.Module,
    *,
    seq_len: int | None = None,
    batch: int = 4,
    seed: int = 0,
) -> InductionResult:
    """Previous-token and induction score of every head in one small forward pass, cheap enough
    for each evaluation of a training run; the model's train/eval state is left as it was."""
    return induction_test(make_lens(model), seq_len=seq_len, batch=batch, seed=seed)


def record_head_scores(model: nn.Module, row: EvalRow) -> EvalRow:
    """A ``train(on_eval=...)`` callback: the evaluation's row with every head's previous-token and
    induction score (``head_scores``, a few ms): kept at each evaluation, they show when each
    behaviour forms during training (the study's head-formation figure)."""
    r = head_scores(model)
    return dataclasses.replace(
        row, heads={"previous_token": r.previous_token, "induction": r.induction}
    )


@torch.no_grad()
def head_ablation(
    lens: Lens,
    text: str,
    *,
    layers: Iterable[int] | None = None,
    max_tokens: int = 256,
    method: Literal["mean", "zero"] = "mean",
    max_rows: int = 16,
) -> AblationResult:
    """Bits/char lost on ``text`` (its first ``max_tokens`` tokens) when one head is removed.

    Mean-ablation by default: the head's output (its slice of the output projection's input) is
    replaced by its mean over all positions of this text. Zeroing it would also remove the
    head's constant part, a bias the later layers rely on (e.g. heads parked on the first token),
    and feed them an input they never saw, so the cost would mix "this head's information is
    gone" with "the stream is off-distribution"; the mean removes only the information.

    Cheap: the clean pass records the residual stream entering each layer; an ablation reruns
    only that layer onward, with the layer's heads (up to ``max_rows`` rows) in one batch.
    ``layers`` restricts which layers' heads are ablated (all by default).
    """
    t0 = time.perf_counter()
    L, nh = lens.n_layers, lens.n_heads
    chosen = sorted(set(range(L) if layers is None else layers))
    if not chosen or not all(0 <= layer < L for layer in chosen):
        raise InterpretError(f"layers must be in 0 .. {L - 1}, got {chosen}")
    ids, chars = _windows(lens, text, lens.context, max_tokens)
    W, n_chars = ids.shape[0], int(chars[:, 1:].sum())
    with eval_mode(lens.model):
        tr = lens.trace(ids)
        clean = _bpc(_nll(tr.logits, ids).sum().item(), n_chars)
        delta: list[list[float | None]] = [[None] * nh for _ in range(L)]
        per = max(1, max_rows // W)  # heads per batch
        for layer in chosen:
            t_layer = time.perf_counter()
            hd = tr.head_inputs[layer].shape[-1] // nh
            means = tr.head_inputs[layer].reshape(-1, nh, hd).mean(0)  # [head, hd]
            values = means if method == "mean" else torch.zeros_like(means)
            for h0 in range(0, nh, per):
                hs = torch.arange(h0, min(nh, h0 + per))
                with lens.ablate(layer, hs.repeat_interleave(W), values):  # row k*W + w: head hs[k]
                    x = lens.run_from(tr, layer, tr.resid[layer].repeat(len(hs), 1, 1))
                nll = _resid_nll(lens, x, ids.repeat(len(hs), 1), max_rows).view(len(hs), -1).sum(1)
                for k, h in enumerate(hs.tolist()):
                    delta[layer][h] = _bpc(nll[k].item(), n_chars) - clean
            logger.debug(
                "ablated the heads of layer %d in %.1f s", layer, time.perf_counter() - t_layer
            )
    secs = time.perf_counter() - t0
    logger.info(
        "ablated %d heads of %s on %d tokens in %.1f s",
        len(chosen) * nh,
        lens.name,
        ids.numel(),
        secs,
    )
    return AblationResult(lens.name, method, chosen, delta, clean, ids.numel(), n_chars, secs)


def _resid_nll(lens: Lens, x: torch.Tensor, ids: torch.Tensor, rows: int) -> torch.Tensor:
    """NLL (B, T-1) in nats of the final residual stream x (B, T, C), ``rows`` rows of logits at
    a time (a 49k vocabulary makes the logits the largest tensor by far)."""
    chunks = range(0, len(x), rows)
    return torch.cat([_nll(lens.logits(x[r : r + rows]), ids[r : r + rows]) for r in chunks])


@torch.no_grad()
def logit_lens(
    lens: Lens,
    text: str,
    *,
    max_tokens: int = 256,
    layers: Iterable[int] | None = None,
) -> LogitLensResult:
    """Bits/char on ``text`` read off the residual stream after the embeddings (layer 0) and
    after each block (1 .. L), through the final norm and the unembedding, and the share of
    positions whose top-1 token is already the final layer's. Layer L is the model's output and
    is always included; ``layers`` picks a subset (each costs a (T, V) unembedding)."""
    L = lens.n_layers
    chosen = sorted(set(range(L + 1) if layers is None else layers) | {L})
    if not all(0 <= layer <= L for layer in chosen):
        raise InterpretError(f"logit-lens layers must be in 0 .. {L}, got {chosen}")
    ids, chars = _windows(lens, text, lens.context, max_tokens)
    n_chars = int(chars[:, 1:].sum())
    with eval_mode(lens.model):
        tr = lens.trace(ids)
    final_top = tr.logits[:, :-1].argmax(-1)  # (W, T-1)
    bpc, agree = [], []
    for layer in chosen:
        logits = lens.logits(tr.resid[layer])
        bpc.append(_bpc(_nll(logits, ids).sum().item(), n_chars))
        agree.append((logits[:, :-1].argmax(-1) == final_top).float().mean().item())
    model_bpc = _bpc(_nll(tr.logits, ids).sum().item(), n_chars)
    return LogitLensResult(lens.name, chosen, bpc, agree, model_bpc, ids.numel(), n_chars)


@torch.no_grad()
def loss_by_position(
    lens: Lens,
    text: str,
    *,
    max_window: int = 256,
    max_tokens: int | None = 4096,
    batch: int = 8,
) -> PositionLoss:
    """In-context learning curve: bits/char at each character offset within a context window.

    Non-overlapping windows of the model's context (at most ``max_window`` tokens) over the first
    ``max_tokens`` tokens of ``text``. Each token's NLL is spread evenly over the characters it
    covers (a char model: its loss / ln 2 at its own position); the window's first token has no
    context and is not scored. Weighted by ``chars``, the curve averages to ``overall_bpc``.
    """
    ids, chars = _windows(lens, text, min(lens.context, max_window), max_tokens)
    # (W, T - 1)
    nll = torch.cat([_window_nll(lens, ids[r : r + batch]) for r in range(0, len(ids), batch)])
    ends = chars.cumsum(1)  # (W, T): char offset where each token ends
    width = int(ends[:, -1].max())
    total = torch.zeros(width, dtype=torch.float64)  # nats at each offset
    count = torch.zeros(width, dtype=torch.float64)
    for w in range(ids.shape[0]):
        per_char = _spread(nll[w].double(), chars[w], int(ends[w, 0]))
        total[: len(per_char)] += per_char
        count[int(ends[w, 0]) : int(ends[w, -1])] += 1
    curve = [None if c == 0 else (t / c / LN2).item() for t, c in zip(total, count)]
    n_chars = int(chars[:, 1:].sum())
    return PositionLoss(
        lens.name,
        curve,
        count.long().tolist(),
        _bpc(nll.sum().item(), n_chars),
        ids.shape[0],
        ids.shape[1],
    )


def _window_nll(lens: Lens, ids: torch.Tensor) -> torch.Tensor:
    with eval_mode(lens.model):
        return _nll(lens.trace(ids).logits, ids).cpu()


def _spread(nll: torch.Tensor, chars: torch.Tensor, first: int) -> torch.Tensor:
    """NLL of tokens 1..T-1 (nats, (T-1,)) spread over their characters: nats at each character
    offset of the window (offsets before ``first``, token 0's, stay 0). A token that covers no
    characters (inside a split multi-byte character) puts its NLL on the character before it, or
    after it when that one is token 0's."""
    n = chars[1:]  # (T-1,) characters of each scored token
    ends = chars.cumsum(0)  # (T,)
    out = torch.zeros(int(ends[-1]), dtype=torch.float64)
    out[first:] = (nll / n.clamp(min=1)).repeat_interleave(n)
    empty = (n == 0).nonzero()[:, 0]
    if len(empty):
        a = ends[empty]  # where the empty token sits
        out.index_add_(0, torch.where(a - 1 >= first, a - 1, a).clamp(max=len(out) - 1), nll[empty])
    return out


def circuit_findings(
    *,
    induction: InductionResult | None = None,
    ablation: AblationResult | None = None,
    lens: LogitLensResult | None = None,
    positions: PositionLoss | None = None,
    within: float = 0.5,
) -> list[str]:
    """One plain-language sentence per analysis given, generated from its numbers."""
    out = []
    if induction is not None:
        out.append(_induction_sentence(induction))
    if ablation is not None:
        out.append(_ablation_sentence(ablation))
    if lens is not None:
        final = lens.bpc[-1]
        first = next(layer for layer, b in zip(lens.layers, lens.bpc) if b <= final + within)
        out.append(
            f"{lens.model}: the logit lens first gets within {within:g} bits/char of the final "
            f"layer ({final:.2f}) at layer {first} of {lens.layers[-1]} (layer {lens.layers[0]}: "
            f"{lens.bpc[0]:.2f} bits/char)"
        )
    if positions is not None:
        at = [(x, positions.bpc[x]) for x in (1, 8, 64, 256) if x < len(positions.bpc)]
        shown = ", ".join(f"{b:.2f} at character {x}" for x, b in at if b is not None)
        out.append(
            f"{positions.model}: loss by position in the context: {shown} (bits/char; "
            f"{positions.overall_bpc:.2f} overall)"
        )
    return out


def strongest_head(table: Sequence[Sequence[float | None]]) -> tuple[int, int, float]:
    """(layer, head, value) of the largest entry of a [layer, head] table."""
    v, i, h = max(
        (v, i, h) for i, row in enumerate(table) for h, v in enumerate(row) if v is not None
    )
    return i, h, v


def _induction_sentence(r: InductionResult) -> str:
    i, h, s = strongest_head(r.induction)
    copies = r.loss_second_nats < 0.5 * r.loss_first_nats
    return (
        f"{r.model}: the strongest induction head is L{i}H{h} (score {s:.2f}); on random tokens "
        f"repeated twice the loss goes from {r.loss_first_bits:.2f} to {r.loss_second_bits:.2f} "
        "bits/token, so the model "
        f"{'copies the earlier sequence' if copies else 'does not copy the earlier sequence'}"
    )


def _ablation_sentence(r: AblationResult) -> str:
    i, h, cost = strongest_head(r.delta_bpc)
    n = sum(v is not None for row in r.delta_bpc for v in row)
    big = sum(v is not None and v > 0.01 for row in r.delta_bpc for v in row)
    return (
        f"{r.model}: {r.method}-ablating L{i}H{h} costs {cost:+.2f} bits/char, the largest of the "
        f"{n} heads ablated (layers {_span(r.layers)}); {big} of them cost more than 0.01 bits/char"
    )


def _span(layers: list[int]) -> str:
    return (
        f"{layers[0]}-{layers[-1]}"
        if layers == list(range(layers[0], layers[-1] + 1))
        else str(layers)[1:-1]
    )
