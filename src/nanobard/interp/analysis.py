"""Every interpretability analysis for one model in one call, with settings sized to the model:
what the study's interpret stage runs for the from-scratch GPT and the pretrained model."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from nanobard.data.prompts import attention_text
from nanobard.interp.circuits import (
    AblationResult,
    InductionResult,
    LogitLensResult,
    PositionLoss,
    circuit_findings,
    head_ablation,
    induction_test,
    logit_lens,
    loss_by_position,
    strongest_head,
)
from nanobard.interp.lens import Lens
from nanobard.records import Record

logger = logging.getLogger(__name__)


@dataclass
class Analysis(Record):
    """All of the analyses above for one model, with the settings used and their run times."""

    model: str
    settings: dict[str, dict[str, Any]]  # per analysis, the keyword arguments it ran with
    seconds: dict[str, float]  # per analysis, wall time
    induction: InductionResult
    ablation: AblationResult
    lens: LogitLensResult
    positions: PositionLoss
    findings: list[str]


def analyse(
    lens: Lens,
    val_text: str,
    *,
    vocab_chars: Iterable[str] | None = None,
    big: bool | None = None,
    slice_chars: int = 2000,
) -> Analysis:
    """Every analysis, with settings that fit in well under a minute of a 2-core CPU for a ~135M
    model (``settings`` records them; ``big`` defaults to "over 20M parameters").

    The ablation and logit-lens slice is the first ``slice_chars`` characters of ``val_text``
    that start a line and use only ``vocab_chars`` (pass the character model's vocabulary for
    both models so they read the same text). A big model has its heads ablated on 128 tokens in
    every sixth layer and the layers of its strongest induction and previous-token heads (all
    heads of SmolLM2-135M would take minutes), the logit lens on 128 tokens and the position
    curve on 4 windows of 256 tokens; a small model gets all layers and more text.
    """
    if big is None:
        big = sum(p.numel() for p in lens.model.parameters()) > 20e6
    text = attention_text(val_text, vocab_chars, slice_chars)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    ind = induction_test(lens, batch=4 if big else 8)
    seconds["induction"] = time.perf_counter() - t0
    settings = _settings(lens, ind, big)
    # each analysis with the text it reads; they return different records, collected in res
    runs: dict[str, tuple[Callable[..., Any], str]] = {
        "ablation": (head_ablation, text),
        "lens": (logit_lens, text),
        "positions": (loss_by_position, val_text),
    }
    res: dict[str, Any] = {}
    for key, (fn, arg) in runs.items():
        t0 = time.perf_counter()
        res[key] = fn(lens, arg, **settings[key])
        seconds[key] = time.perf_counter() - t0
    logger.info(
        "analysed %s in %.1f s: %s",
        lens.name,
        sum(seconds.values()),
        ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()),
    )
    said = circuit_findings(
        induction=ind, ablation=res["ablation"], lens=res["lens"], positions=res["positions"]
    )
    return Analysis(
        lens.name, settings, seconds, ind, res["ablation"], res["lens"], res["positions"], said
    )


def _settings(lens: Lens, ind: InductionResult, big: bool) -> dict[str, dict[str, Any]]:
    """Keyword arguments of each analysis for ``analyse`` (see there)."""
    if not big:
        return {
            "induction": {"batch": 8},
            "ablation": {"max_tokens": 1024},
            "lens": {"max_tokens": 1024},
            "positions": {"max_tokens": 8192},
        }
    L = lens.n_layers
    layers = set(range(0, L, max(1, L // 5))) | {
        strongest_head(ind.induction)[0],
        strongest_head(ind.previous_token)[0],
    }
    return {
        "induction": {"batch": 4},
        "ablation": {"layers": sorted(layers), "max_tokens": 128},
        "lens": {"max_tokens": 128},
        "positions": {"max_tokens": 1024},
    }
