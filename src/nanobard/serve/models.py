"""The models ``nanobard serve`` serves, opened once at start-up and shared by every request.

A study's run folder gives three: the from-scratch best checkpoint, the pretrained model before
fine-tuning and after it, each with its heads' scores from the study (interpretability.json).
Any other argument is one model: a checkpoint, a training run folder, a Hugging Face folder or
``smollm2-135m``. Requests name a model by its id, never by a path.

Each model has one worker thread, and every forward pass of that model is a job on it: the lens
records a pass through hooks on the model's modules, so two passes at once would record into each
other. A generation is one job per token, so an analysis from another tab runs between two of its
tokens, and different models work in parallel. A fixed, small set of threads also bounds memory:
every thread that runs torch keeps its own scratch buffers (20 requests on 20 threads peaked
~450 MB higher than on 3; benchmarks/serve.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from nanobard.data.tokenizer import CharTokenizer
from nanobard.errors import NanobardError
from nanobard.hf.finetune import FinetunedModelInfo
from nanobard.hf.pretrained import Pretrained, hf_generator, is_scratch, open_model
from nanobard.interp.lens import make_lens
from nanobard.interp.probe import Probe, probe
from nanobard.model.checkpoint import resolve_checkpoint
from nanobard.model.gpt import GPT
from nanobard.model.sampling import (
    SamplingConfig,
    ScratchDecoder,
    TextGenerator,
    generate_ids,
    stream_text,
)
from nanobard.rundir import RunDir
from nanobard.study.records import AttentionStudy, InterpretStudy

if TYPE_CHECKING:
    from nanobard.interp.analysis import Analysis
    from nanobard.interp.lens import Lens

logger = logging.getLogger(__name__)

DEFAULT_TEXT = "ROMEO:\nBut soft, what light through yonder window breaks?\n"


class ServeError(NanobardError, ValueError):
    """The server cannot start as asked; the message says what to give instead."""


@dataclass
class ServedModel:
    id: str  # what a request names it by
    name: str
    kind: Literal["scratch", "pretrained"]
    source: str  # where it was opened from (shown, never taken from a request)
    lens: Lens
    generator: TextGenerator
    head_scores: dict[str, list[list[float | None]]] | None = None  # [layer][head], from the run
    text: str | None = None  # a text of the run's corpus (a study's attention text)
    worker: ThreadPoolExecutor = field(init=False)

    def __post_init__(self) -> None:
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-{self.id}")

    def info(self) -> dict[str, Any]:
        """What ``GET /api/models`` says of this model."""
        lens = self.lens
        tokens = "characters" if lens.kind == "scratch" else "BPE"
        return {
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "source": self.source,
            "parameters": sum(p.numel() for p in lens.model.parameters()),
            "tokenizer": f"{tokens} ({lens.vocab_size:,} tokens)",
            "vocab_size": lens.vocab_size,
            "context": lens.context,
            "layers": lens.n_layers,
            "heads": lens.n_heads,
            "head_scores": self.head_scores,
        }

    def analyze(self, text: str, **options: Any) -> Probe:
        """``interp.probe.probe`` on this model (run it on ``worker``)."""
        return probe(self.lens, text, **options)

    def stream(
        self,
        prompt_ids: list[int],
        max_new_tokens: int,
        cfg: SamplingConfig,
        on_token: Callable[[], None] = lambda: None,
    ) -> Iterator[str]:
        """The continuation of ``prompt_ids`` as text pieces, one forward pass per ``next()``
        (run each on ``worker``); ``on_token`` is called once per token."""
        gen = self.generator
        ids = generate_ids(gen.make_decoder(), prompt_ids, max_new_tokens, cfg, gen.stop_ids)
        return stream_text(gen.decode, _counted(ids, on_token))


def _counted(ids: Iterator[int], on_token: Callable[[], None]) -> Iterator[int]:
    for i in ids:
        on_token()
        yield i


@dataclass(frozen=True)
class _Plan:
    id: str
    name: str
    kind: Literal["scratch", "pretrained"]
    source: str
    analysis: Analysis | None = None
    text: str | None = None  # a text of its corpus, for the page to start with


def plan_models(sources: list[str]) -> list[_Plan]:
    """What to open for each argument (no model is loaded here). No argument: the newest run
    folder under ./runs that holds a model."""
    if not sources:
        sources = [str(_newest_run())]
    plans: list[_Plan] = []
    for src in sources:
        run = RunDir(Path(src))
        if (run / RunDir.BEST).is_file() and (run / RunDir.FINETUNED).is_dir():
            plans += _study_plans(run)
        elif is_scratch(src):
            path = resolve_checkpoint(src)
            if not path.is_file():
                raise ServeError(f"{src}: no from-scratch checkpoint there")
            plans.append(_Plan("scratch", "from scratch", "scratch", str(path)))
        else:
            name = Path(src).name if Path(src).exists() else src
            plans.append(_Plan("pretrained", name, "pretrained", src))
    seen: dict[str, int] = {}
    unique = []
    for p in plans:  # two models of one kind: scratch, scratch-2, ...
        seen[p.id] = seen.get(p.id, 0) + 1
        n = seen[p.id]
        unique.append(p if n == 1 else replace(p, id=f"{p.id}-{n}", name=f"{p.name} ({n})"))
    return unique


def _study_plans(run: RunDir) -> list[_Plan]:
    info = FinetunedModelInfo.load(run / RunDir.FINETUNED / RunDir.FINETUNED_INFO)
    study = (
        InterpretStudy.load(run / RunDir.INTERPRET) if (run / RunDir.INTERPRET).exists() else None
    )
    base = info.base_model
    attention = run / RunDir.ATTENTION_ANALYSIS  # the study's text, in its corpus's characters
    text = AttentionStudy.load(attention).text if attention.exists() else None
    return [
        _Plan("scratch", "from scratch", "scratch", str(run / RunDir.BEST),
              study.scratch if study else None, text),
        _Plan("pretrained", f"{base} before fine-tuning", "pretrained", base,
              study.pretrained_before if study else None),
        _Plan("finetuned", f"{base} fine-tuned", "pretrained", str(run / RunDir.FINETUNED),
              study.pretrained if study else None),
    ]  # fmt: skip


def _newest_run(root: Path = Path("runs")) -> Path:
    runs = [
        p for p in root.glob("*") if (p / RunDir.BEST).is_file() or (p / RunDir.FINETUNED).is_dir()
    ]
    if not runs:
        raise ServeError(
            "no models to serve: give a run folder (`make run` writes one under runs/), a "
            "checkpoint (.pt), a Hugging Face model folder or smollm2-135m"
        )
    return max(runs, key=lambda p: p.stat().st_mtime)


def open_models(sources: list[str], device: str | torch.device = "cpu") -> list[ServedModel]:
    """Open every model of ``sources`` (see plan_models), logging each as it loads."""
    plans = plan_models(sources)
    out = []
    for i, plan in enumerate(plans):
        t0 = time.perf_counter()
        logger.info("loading model %d/%d: %s (%s)", i + 1, len(plans), plan.name, plan.source)
        out.append(_open(plan, device))
        logger.info("  %s ready in %.1f s", plan.id, time.perf_counter() - t0)
    return out


def _open(plan: _Plan, device: str | torch.device) -> ServedModel:
    opened = open_model(plan.source, device)
    model, tok = opened.model, opened.tokenizer
    model.eval()
    if isinstance(model, GPT) and isinstance(tok, CharTokenizer):
        scratch = model
        gen = TextGenerator(plan.name, tok.encode, tok.decode, lambda: ScratchDecoder(scratch))
    else:
        hf = Pretrained(model, tok, plan.name, "")  # type: ignore[arg-type]  # open_model: "hf"
        gen = hf_generator(plan.source, loaded=hf)
    return ServedModel(
        id=plan.id,
        name=plan.name,
        kind=plan.kind,
        source=plan.source,
        lens=make_lens(model, tok, plan.name),
        generator=gen,
        head_scores=_scores(plan.analysis),
        text=plan.text,
    )


def _scores(a: Analysis | None) -> dict[str, list[list[float | None]]] | None:
    """The heads' previous-token and induction scores and ablation costs from the study."""
    if a is None:
        return None
    return {
        "previous_token": a.induction.previous_token,  # type: ignore[dict-item]
        "induction": a.induction.induction,  # type: ignore[dict-item]
        "ablation_bpc": a.ablation.delta_bpc,
    }


def default_text(models: list[ServedModel], text: str = DEFAULT_TEXT) -> str:
    """The page's first text: a served run's own corpus text when there is one (a code or
    German corpus should not open on Shakespeare), else ``text``; without the characters a
    character model cannot read."""
    text = next((m.text for m in models if m.text), text)
    for m in models:
        if m.lens.kind == "scratch":
            known = set(m.lens.tokenizer.chars)
            text = "".join(c for c in text if c in known) or m.lens.tokenizer.chars[0]
    return text
