"""Causal tools on any model the Lens opens: activation patching, direct logit attribution and
attribution patching, in TransformerLens's conventions (tests/interp/test_transformer_lens.py
checks each against it).

Activation patching runs a clean and a corrupted prompt of the same number of tokens, copies one
activation of the clean run into the corrupted run, and measures how much of the clean answer
comes back: ``(logit_patched - logit_corrupt) / (logit_clean - logit_corrupt)`` for the target
token at the last position (1: all of it, 0: none). The sites:

- ``resid_pre[l][p]``: the residual stream entering layer l, at position p;
- ``attn_out[l][p]``, ``mlp_out[l][p]``: layer l's attention output / MLP output at position p;
- ``heads[l][h]``: head h of layer l (its slice of the output projection's input), every position.

Direct logit attribution splits the target's logit at the last position into what each part of
the residual stream writes straight into it through the final norm, its scale fixed from the
clean run (as TransformerLens does): the embeddings, each head, each attention block's output
bias, each MLP, and a constant (the final norm's shift and the unembedding's bias). They add up to
the logit exactly.

Attribution patching estimates the resid_pre and head patching of every site at once from one
backward pass on the corrupted run: ``(clean - corrupt) . d metric / d activation``.

    lens = make_lens(model, tokenizer)
    r = activation_patching(lens, "ROMEO: ... ROM", "JULIET: ... ROM", "E")
    r.heads, r.dla.heads
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn

from nanobard.interp.circuits import InterpretError
from nanobard.interp.lens import Lens, Trace, eval_mode
from nanobard.records import Record

logger = logging.getLogger(__name__)

MIN_GAP = 1e-3  # logits, 1,000x float32 round-off: a smaller gap would be patching noise
MAX_ROWS = 32  # patched rows run at once: T rows of T tokens each grow as T squared
Tokens = str | Sequence[int]  # text (encoded with the model's tokenizer) or token ids


@dataclass
class LogitAttribution(Record):
    """Direct contributions to the target's logit at the last position (they sum to ``logit``)."""

    embed: float  # token (+ position) embeddings
    heads: list[list[float]]  # [layer][head]
    attn_bias: list[float]  # [layer]: each attention block's output bias
    mlp: list[float]  # [layer]
    rest: float  # the final norm's shift and the unembedding's bias: the same for every input
    logit: float  # the model's logit for the target


@dataclass
class PatchingResult(Record):
    model: str
    tokens_clean: list[str]
    tokens_corrupt: list[str]
    target: str
    target_id: int
    logit_clean: float
    logit_corrupt: float
    # None: a layer left out (``layers``)
    resid_pre: list[list[float | None]]  # [layer][position]
    attn_out: list[list[float | None]]  # [layer][position]
    mlp_out: list[list[float | None]]  # [layer][position]
    heads: list[list[float | None]]  # [layer][head], every position patched at once
    dla: LogitAttribution  # on the clean prompt
    attribution: Attribution | None = None  # the gradient estimate of resid_pre and heads
    seconds: dict[str, float] | None = None


@dataclass
class Attribution(Record):
    resid_pre: list[list[float]]  # [layer][position], the estimate of PatchingResult.resid_pre
    heads: list[list[float]]  # [layer][head]


class PatchingError(InterpretError):
    """Clean and corrupted prompts or the target do not fit; the message says what to change."""


# --------------------------------------------------------------------------------------------
# inputs


def _ids(lens: Lens, x: Tokens) -> list[int]:
    ids = lens.encode(x)[0] if isinstance(x, str) else [int(i) for i in x]
    if not ids:
        raise PatchingError("a prompt is empty; give at least one token")
    if len(ids) > lens.context:
        raise PatchingError(f"a prompt has {len(ids)} tokens; {lens.name} reads {lens.context}")
    return ids


def target_id(lens: Lens, target: str | int) -> int:
    """The target as one token id; a text that is not exactly one token is refused."""
    if isinstance(target, int):
        if not 0 <= target < lens.vocab_size:
            raise PatchingError(f"target id {target} is outside 0 .. {lens.vocab_size - 1}")
        return target
    ids = lens.encode(target)[0]
    if len(ids) != 1:
        pieces = lens.token_strings(ids)
        raise PatchingError(
            f"the target must be one token of {lens.name}; {target!r} is {len(ids)}: {pieces}"
        )
    return ids[0]


def _pair(lens: Lens, clean: Tokens, corrupt: Tokens) -> tuple[list[int], list[int]]:
    a, b = _ids(lens, clean), _ids(lens, corrupt)
    if len(a) != len(b):
        unit = "characters" if lens.kind == "scratch" else "tokens"
        raise PatchingError(
            f"clean and corrupted prompts must have the same number of {unit}: "
            f"{len(a)} and {len(b)}"
        )
    return a, b


# --------------------------------------------------------------------------------------------
# exact patching


@contextmanager
def _replace_output(module: nn.Module, pos: torch.Tensor, values: torch.Tensor) -> Iterator[None]:
    """Row r of ``module``'s output gets ``values[r]`` (C,) at position ``pos[r]``."""

    def hook(mod: nn.Module, args: tuple, out):
        x = out[0] if isinstance(out, tuple) else out
        x = x.clone()
        x[torch.arange(x.shape[0]), pos.to(x.device)] = values.to(x.device, x.dtype)
        return (x, *out[1:]) if isinstance(out, tuple) else x

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def activation_patching(
    lens: Lens,
    clean: Tokens,
    corrupt: Tokens,
    target: str | int,
    *,
    attribution: bool = True,
    layers: Sequence[int] | None = None,
) -> PatchingResult:
    """Every patching site of the module's docstring, the direct logit attribution on the clean
    prompt and (``attribution``) the gradient estimate; one batch of T (or nh) rows per layer.
    ``layers`` restricts the exact patching to those layers (the others' sites are None): a
    135M model's every site costs minutes on a CPU."""
    t0 = time.perf_counter()
    a, b = _pair(lens, clean, corrupt)
    tid = target_id(lens, target)
    L, H, T = lens.n_layers, lens.n_heads, len(a)
    chosen = set(range(L) if layers is None else layers)
    if not chosen or not chosen <= set(range(L)):
        raise PatchingError(f"layers must be in 0 .. {L - 1}, got {sorted(chosen)}")
    secs: dict[str, float] = {}
    with eval_mode(lens.model):
        tc, tx = lens.trace(torch.tensor([a])), lens.trace(torch.tensor([b]))
        lc, lx = float(tc.logits[0, -1, tid]), float(tx.logits[0, -1, tid])
        if abs(lc - lx) < 1e-6:
            raise PatchingError(
                f"the target's logit is the same on both prompts ({lc:.4f}): there is nothing "
                "to recover; corrupt the part of the prompt the answer depends on"
            )

        def score(final: torch.Tensor) -> list[float | None]:  # (k, T, C) -> k fractions
            logits = lens.logits(final[:, -1:])[:, 0, tid]
            return ((logits - lx) / (lc - lx)).tolist()

        chunks = [torch.arange(c, min(T, c + MAX_ROWS)) for c in range(0, T, MAX_ROWS)]
        resid: list[list[float | None]] = []
        attn: list[list[float | None]] = []
        mlp: list[list[float | None]] = []
        heads: list[list[float | None]] = []
        for layer in range(L):
            if layer not in chosen:
                for store, n in ((resid, T), (attn, T), (mlp, T), (heads, H)):
                    store.append([None] * n)
                continue
            sites: dict[str, list[float | None]] = {"resid": [], "attn": [], "mlp": []}
            for pos in chunks:  # row r of a chunk: position pos[r] from the clean run
                n = len(pos)
                x = tx.resid[layer].repeat(n, 1, 1)
                x[torch.arange(n), pos] = tc.resid[layer][0, pos]
                sites["resid"] += score(lens.run_from(tx, layer, x))
                for key, modules, outs in (("attn", lens.attns, tc.attn_out),
                                           ("mlp", lens.mlps, tc.mlp_out)):  # fmt: skip
                    assert outs is not None
                    with _replace_output(modules[layer], pos, outs[layer][0, pos]):
                        x = tx.resid[layer].repeat(n, 1, 1)
                        sites[key] += score(lens.run_from(tx, layer, x))
            resid.append(sites["resid"])
            attn.append(sites["attn"])
            mlp.append(sites["mlp"])
            hd = tc.head_inputs[layer].shape[-1] // H
            clean_heads = tc.head_inputs[layer][0].reshape(T, H, hd)  # [T, head, hd]
            with lens.ablate(layer, torch.eye(H, dtype=torch.bool), clean_heads):  # row h: head h
                heads.append(score(lens.run_from(tx, layer, tx.resid[layer].repeat(H, 1, 1))))
        secs["patching"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        dla = attribution_at(lens, tc, tid)
        secs["dla"] = time.perf_counter() - t1
    result = PatchingResult(
        model=lens.name,
        tokens_clean=lens.token_strings(a),
        tokens_corrupt=lens.token_strings(b),
        target=lens.token_strings([tid])[0],
        target_id=tid,
        logit_clean=lc,
        logit_corrupt=lx,
        resid_pre=resid,
        attn_out=attn,
        mlp_out=mlp,
        heads=heads,
        dla=dla,
    )
    if attribution:
        t1 = time.perf_counter()
        result.attribution = attribution_patching(lens, a, b, tid)
        secs["attribution"] = time.perf_counter() - t1
    result.seconds = secs
    logger.info(
        "patched %d sites of %s on %d tokens in %.1f s", len(chosen) * (3 * T + H), lens.name, T,
        secs["patching"],
    )  # fmt: skip
    return result


# --------------------------------------------------------------------------------------------
# direct logit attribution


@torch.no_grad()
def direct_logit_attribution(lens: Lens, text: Tokens, target: str | int) -> LogitAttribution:
    """What each component writes straight into the target's logit at the last position."""
    ids, tid = _ids(lens, text), target_id(lens, target)
    with eval_mode(lens.model):
        return attribution_at(lens, lens.trace(torch.tensor([ids])), tid)


def attribution_at(lens: Lens, tr: Trace, tid: int, pos: int = -1) -> LogitAttribution:
    """Direct logit attribution of ``tid`` at position ``pos`` of a traced batch of one."""
    L, H = lens.n_layers, lens.n_heads
    assert tr.attn_out is not None and tr.mlp_out is not None
    normalize, rest = _frozen_norm(lens, tr.resid[L][0, pos])
    column = _unembedding_column(lens, tid, tr.resid[L][0, pos])

    def logit(x: torch.Tensor) -> torch.Tensor:  # (k, C) components -> (k,) direct logits
        return (normalize(x).float() @ column).float()

    heads, bias = [], []
    for layer in range(L):
        z = tr.head_inputs[layer][0, pos]  # (nh * hd,)
        hd = z.shape[-1] // H
        mask = torch.eye(H, dtype=z.dtype, device=z.device).repeat_interleave(hd, dim=1)
        proj = lens.out_projs[layer]
        b = proj(torch.zeros_like(z)[None])  # (1, C): the output bias (0 without one)
        heads.append(logit(proj(mask * z) - b).tolist())  # row h: head h alone
        bias.append(float(logit(b)[0]))
    mlp = logit(torch.stack([o[0, pos] for o in tr.mlp_out])).tolist()
    column_bias = _unembedding_bias(lens, tid)
    out = LogitAttribution(
        embed=float(logit(tr.resid[0][0, pos][None])[0]),
        heads=heads,
        attn_bias=bias,
        mlp=mlp,
        rest=float(rest() @ column) + column_bias,
        logit=float(tr.logits[0, pos, tid]),
    )
    total = out.embed + sum(map(sum, heads)) + sum(bias) + sum(mlp) + out.rest
    if abs(total - out.logit) > 1e-3 * max(1.0, abs(out.logit)):  # e.g. norms inside the blocks
        raise PatchingError(
            f"the direct contributions of {lens.name} add up to {total:.4f}, not its logit "
            f"{out.logit:.4f}: its residual stream is not the sum the attribution assumes"
        )
    return out


def _unembedding_column(lens: Lens, tid: int, like: torch.Tensor) -> torch.Tensor:
    """The unembedding's row for ``tid`` as a (C,) float32 vector: one dot product per component
    instead of a whole vocabulary's logits."""
    weight = getattr(lens.unembed, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return weight[tid].float()
    eye = torch.eye(like.shape[-1], dtype=like.dtype, device=like.device)
    return (lens.unembed(eye)[:, tid] - lens.unembed(torch.zeros_like(eye[:1]))[0, tid]).float()


def _unembedding_bias(lens: Lens, tid: int) -> float:
    bias = getattr(lens.unembed, "bias", None)
    return float(bias[tid]) if isinstance(bias, torch.Tensor) else 0.0


def _frozen_norm(
    lens: Lens, x: torch.Tensor
) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[], torch.Tensor]]:
    """The final norm as a linear map with the statistics of ``x`` (C,), the stream entering it:
    LayerNorm centres and divides by x's standard deviation, RMSNorm divides by x's root mean
    square; then the weight. Returns that map and the logit of the norm's own shift; refuses a
    norm it does not reproduce."""
    norm = lens.final_norm
    weight = getattr(norm, "weight", None)
    shift = getattr(norm, "bias", None)
    eps = getattr(norm, "eps", getattr(norm, "variance_epsilon", None))
    if not isinstance(eps, float):  # torch.nn.RMSNorm(eps=None): the dtype's own epsilon
        eps = torch.finfo(x.dtype).eps
    centre = "rms" not in type(norm).__name__.lower()
    xf = x.float()
    scale = torch.sqrt(((xf - xf.mean()) ** 2 if centre else xf**2).mean() + eps)

    def normalize(c: torch.Tensor) -> torch.Tensor:
        c = c.float()
        c = (c - c.mean(-1, keepdim=True) if centre else c) / scale
        return (c * weight.float() if weight is not None else c).to(x.dtype)

    expect = norm(x[None])[0].float()
    got = normalize(x[None])[0].float()
    if shift is not None:
        got = got + shift.float()
    tol = 1e-4 if x.dtype == torch.float32 else 2e-2
    if not torch.allclose(got, expect, atol=tol, rtol=tol):
        raise PatchingError(
            f"cannot attribute through {type(norm).__name__}: it is neither a LayerNorm nor an "
            "RMSNorm as the lens knows them"
        )

    def rest() -> torch.Tensor:  # the norm's shift, (C,) float32
        return shift.float() if shift is not None else torch.zeros_like(xf)

    return normalize, rest


# --------------------------------------------------------------------------------------------
# attribution patching


def attribution_patching(
    lens: Lens, clean: Tokens, corrupt: Tokens, target: str | int
) -> Attribution:
    """The first-order estimate of resid_pre and head patching: for each site,
    ``(clean - corrupt) . grad`` of the metric on the corrupted run, from one backward pass."""
    a, b = _pair(lens, clean, corrupt)
    tid = target_id(lens, target)
    L, H = lens.n_layers, lens.n_heads
    with eval_mode(lens.model):
        with torch.no_grad():
            tc = lens.trace(torch.tensor([a]))
        lc = float(tc.logits[0, -1, tid])
        with torch.enable_grad(), _leaf_embeddings(lens):
            tx, live = _trace_with_grad(lens, torch.tensor([b]))
            lx = tx.logits[0, -1, tid]
            grads = torch.autograd.grad(lx, live["resid"] + live["heads"])
    denom = lc - float(lx.detach())
    if abs(denom) < 1e-6:
        raise PatchingError("the target's logit is the same on both prompts: nothing to recover")
    g_resid, g_heads = grads[:L], grads[L:]
    resid = [
        (
            ((tc.resid[layer] - live["resid"][layer].detach()) * g_resid[layer]).sum(-1)[0] / denom
        ).tolist()
        for layer in range(L)
    ]
    heads = []
    for layer in range(L):
        d = (tc.head_inputs[layer] - live["heads"][layer].detach()) * g_heads[layer]  # (1, T, D)
        heads.append((d[0].reshape(d.shape[1], H, -1).sum((0, 2)) / denom).tolist())
    return Attribution(resid, heads)


@contextmanager
def _leaf_embeddings(lens: Lens) -> Iterator[None]:
    """The embedding's output as a leaf that needs a gradient, so the backward pass reaches
    every activation whatever the parameters' requires_grad."""
    handle = lens.embed.register_forward_hook(lambda m, a, out: out.detach().requires_grad_(True))
    try:
        yield
    finally:
        handle.remove()


def _trace_with_grad(lens: Lens, ids: torch.Tensor) -> tuple[Trace, dict[str, list[torch.Tensor]]]:
    """A trace whose resid_pre and head inputs stay in the autograd graph."""
    live: dict[str, list] = {"resid": [None] * lens.n_layers, "heads": [None] * lens.n_layers}

    def on_layer(i: int):
        def hook(module, args, kwargs):
            live["resid"][i] = args[0] if args else kwargs["hidden_states"]

        return hook

    def on_proj(i: int):
        return lambda module, args: live["heads"].__setitem__(i, args[0])

    handles = []
    for i in range(lens.n_layers):
        handles.append(lens.layers[i].register_forward_pre_hook(on_layer(i), with_kwargs=True))
        handles.append(lens.out_projs[i].register_forward_pre_hook(on_proj(i)))
    try:
        tr = lens.trace(ids)
    finally:
        for h in handles:
            h.remove()
    return tr, live  # tr.logits is float32 already: still in the graph


# --------------------------------------------------------------------------------------------
# a pair from any text, and what it shows


def induction_pair(
    lens: Lens, text: str, *, span: int, filler: int, tries: int = 8
) -> tuple[list[int], list[int], int]:
    """A clean / corrupted pair from ``text`` in the model's own tokens, an induction test: a
    segment ``a`` of ``span`` tokens, ``filler`` tokens of other text, then the start of ``a``
    again; the target is the token that follows that start in ``a``. The corrupted prompt has
    another segment in ``a``'s place, so only a model that looks back at the first copy can tell
    the target. Of ``tries`` segments and every length of the start, the pair whose clean prompt
    favours the target most over the corrupted one is kept (a target the last few tokens already
    give away would show nothing). A pair longer than the model's context is shrunk to fit it.
    Returns (clean ids, corrupted ids, target id)."""
    ids = lens.encode(text)[0]
    if 2 * span + filler - 1 > lens.context:  # a small context: a pair that fits in it
        span = max(2, lens.context // 4)
        filler = max(0, lens.context - 2 * span)
    need = 2 * span + filler
    if len(ids) < need * (tries + 1) or span < 2:
        raise PatchingError(
            f"the text gives {len(ids)} tokens; an induction pair of span {span} needs "
            f"{need * (tries + 1)}"
        )
    best: tuple[float, list[int], list[int], int] | None = None
    step = (len(ids) - need) // tries
    with torch.no_grad(), eval_mode(lens.model):
        for t in range(tries):
            at = t * step
            a = ids[at : at + span]
            f = ids[at + span : at + span + filler]
            other = ids[at + span + filler : at + 2 * span + filler]
            for k in range(1, span):
                if other[k] == a[k]:
                    continue
                clean, corrupt = a + f + a[:k], other + f + a[:k]
                logits = lens.trace(torch.tensor([clean, corrupt])).logits[:, -1, a[k]]
                gap = float(logits[0] - logits[1])
                if best is None or gap > best[0]:
                    best = (gap, clean, corrupt, a[k])
    if best is None or best[0] < MIN_GAP:
        raise PatchingError(
            f"no segment of the text gives a pair whose clean prompt favours its target by "
            f"{MIN_GAP} logits or more (best: {best[0] if best else 0:.3f}): nothing to recover"
        )
    return best[1], best[2], best[3]


def patching_findings(r: PatchingResult) -> list[str]:
    """Plain sentences of what a patching result shows."""
    heads = [(v, layer, h) for layer, row in enumerate(r.heads) for h, v in enumerate(row)
             if v is not None]  # fmt: skip
    v, hl, hh = max(heads)
    last = len(r.tokens_clean) - 1
    where = []
    for layer, row in enumerate(r.resid_pre):
        if row[0] is not None:
            p = max(range(len(row)), key=lambda i: row[i] or 0.0)
            where.append((layer, p))
    i_moved = next((i for i, (_, p) in enumerate(where) if p == last), None)
    moved = None if i_moved is None else where[i_moved][0]
    before = where[i_moved - 1][0] if i_moved else None  # the patched layer before it
    dla = max((val, i, j) for i, row in enumerate(r.dla.heads) for j, val in enumerate(row))
    out = [
        f"{r.model}: the clean prompt gives the target {r.target!r} a logit of "
        f"{r.logit_clean:.2f}, the corrupted one {r.logit_corrupt:.2f}. Patching head "
        f"{hl}.{hh} alone from the clean run restores {v:.0%} of that difference, the most of "
        "any head."
    ]
    if moved is None:
        out.append("The clue stays at the corrupted positions in every layer patched: the last "
                   "position never carries it alone.")  # fmt: skip
    elif before is None:
        out.append("Patching the residual stream at the last position restores the most from "
                   f"layer {moved} on.")  # fmt: skip
    else:
        out.append(
            f"The residual stream carries the clue at the corrupted positions up to layer "
            f"{before} and at the last position from layer {moved} on: attention moved it "
            "there in between."
        )
    out.append(
        f"Directly, head {dla[1]}.{dla[2]} writes the most toward the target ({dla[0]:+.2f} "
        f"of its logit {r.dla.logit:.2f}); the MLPs together {sum(r.dla.mlp):+.2f}."
    )
    return out
