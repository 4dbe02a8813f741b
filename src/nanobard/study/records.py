"""The study's records: what each stage of ``nanobard run`` produced (``StudyState``, saved as
stages.json) and its headline numbers (``Headline``, saved as metrics.json). The pipeline writes
them; the figures and the report read them."""

from __future__ import annotations

from dataclasses import dataclass, field

from nanobard.config import FinetuneConfig, ModelConfig, TrainConfig
from nanobard.data.corpus import CorpusId
from nanobard.hf.finetune import FinetuneResult, Sample
from nanobard.interp.analysis import Analysis
from nanobard.interp.attention import AttentionAnalysis
from nanobard.interp.patching import PatchingResult
from nanobard.model.evaluate import Score
from nanobard.records import EvalRow, Record
from nanobard.train.loop import TrainResult


@dataclass
class ScratchConfig(Record):
    model: ModelConfig
    train: TrainConfig


@dataclass
class StudyConfig(Record):
    """The full configuration of a study (its config.json)."""

    preset: str
    corpus: str  # a built-in corpus's name, or the path of the user's text
    scratch: ScratchConfig
    finetune: FinetuneConfig
    prompts: list[str]
    attention_text: str
    command: str | None = None  # the nanobard command that ran it (None: from Python)


@dataclass
class CorpusInfo(Record):
    name: str
    train_chars: int
    val_chars: int
    score_chars: int
    distinct_chars: int
    prompts: list[str]
    attention_text: str
    sha256: str | None = None  # of the whole text: a re-run on another text is refused

    @property
    def identity(self) -> CorpusId | None:
        if self.sha256 is None:  # a study from before nanobard recorded it
            return None
        return CorpusId(self.name, self.sha256, self.train_chars, self.val_chars)


@dataclass
class Scores(Record):
    """Every model on the same validation characters."""

    scratch: Score
    pretrained_before: Score
    pretrained_after: Score
    score_chars: int


@dataclass
class AttentionStudy(Record):
    """Both models' attention on the same text (saved as attention_analysis.json)."""

    text: str
    scratch: AttentionAnalysis
    pretrained: AttentionAnalysis


@dataclass
class InterpretStudy(Record):
    """What each head does (saved as interpretability.json): the from-scratch model and the
    pretrained one before and after fine-tuning."""

    scratch: Analysis
    pretrained: Analysis
    pretrained_before: Analysis | None = None
    # activation patching of an induction pair built from the validation text, per model
    patching_scratch: PatchingResult | None = None
    patching_pretrained: PatchingResult | None = None


@dataclass
class StudyState(Record):
    """The study's stages so far: each field is a stage's result, None until it has run."""

    corpus: CorpusInfo | None = None
    scratch: TrainResult | None = None
    finetune: FinetuneResult | None = None
    evaluate: Scores | None = None
    attention: AttentionStudy | None = None
    interpret: InterpretStudy | None = None
    samples: list[Sample] | None = None
    figures: list[str] | None = None
    report: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # per stage, wall time


@dataclass
class TrackSummary(Record):
    name: str
    num_params: int
    train_seconds: float
    tokens_per_s: float
    steps: int
    # first to last validation loss during training (the seed's metric)
    loss_reduction_pct: float
    bits_per_char: float  # after training
    bits_per_char_before: float | None = None  # the pretrained model before fine-tuning
    reason: str = ""


@dataclass
class Headline(Record):
    """The study in a few numbers (saved as metrics.json)."""

    corpus: str
    score_chars: int
    scratch: TrackSummary
    pretrained: TrackSummary

    @property
    def bpc(self) -> dict[str, float | None]:
        p = self.pretrained
        return {
            "from scratch": self.scratch.bits_per_char,
            f"{p.name} before": p.bits_per_char_before,
            f"{p.name} after": p.bits_per_char,
        }


def headline(state: StudyState) -> Headline:
    s, f, e = state.scratch, state.finetune, state.evaluate
    assert state.corpus and s and f and e, "the headline needs the corpus, both trainings, scores"

    def reduction(h: list[EvalRow]) -> float:
        return 100.0 * (h[0].val_loss - h[-1].val_loss) / h[0].val_loss

    return Headline(
        corpus=state.corpus.name,
        score_chars=e.score_chars,
        scratch=TrackSummary(
            "from scratch",
            s.num_params,
            s.elapsed_s,
            s.tokens_per_s,
            s.steps,
            reduction(s.history),
            e.scratch.bits_per_char,
        ),
        pretrained=TrackSummary(
            f.model_name,
            f.num_params,
            f.train_seconds,
            f.tokens_per_s,
            f.steps,
            reduction(f.history),
            e.pretrained_after.bits_per_char,
            e.pretrained_before.bits_per_char,
            f.reason,
        ),
    )
