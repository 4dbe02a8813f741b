"""Transfer-learning lessons for the learner notebooks, each a small experiment returning a Record
(figures in ``lessons/figures.py``):

- ``crossover``: from-scratch training vs fine-tuning a pretrained model, by amount of training
  text, under the same wall-time budget: when does transfer learning pay?
- ``forgetting``: what fine-tuning on one domain does to the model's general English (domain
  adaptation).
- ``general_english_text``: the held-out general-English text for it.

Scores are bits per character on the same text (evaluate.py).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nanobard.config import ConfigError, FinetuneConfig, resolve, resolve_preset
from nanobard.data.corpus import (
    CorpusError,
    CorpusSplit,
    cache_dir,
    download_verified,
    read_text_file,
    sha256_file,
)
from nanobard.data.tokens import TokenCorpus
from nanobard.hardware import pick_device, scoring_dtype
from nanobard.hf.finetune import finetune
from nanobard.hf.pretrained import Pretrained, load_pretrained
from nanobard.model.checkpoint import load_model
from nanobard.model.evaluate import Score, score_hf, score_scratch
from nanobard.records import Record
from nanobard.rundir import RunDir
from nanobard.train.loop import train

logger = logging.getLogger(__name__)

Data = CorpusSplit | TokenCorpus

# Alice's Adventures in Wonderland (Lewis Carroll, 1865; public domain): the Project Gutenberg
# "Millennium Fulcrum Edition" file of the Canterbury compression corpus, as shipped in the test
# data of the Brotli source package on PyPI. Wherever pip works, PyPI's file host does: the package
# is fetched once (7.4 MB), checked by SHA-256, and the text (152,089 bytes, checked too) kept in
# the cache.
GENERAL_ENGLISH_URL = (
    "https://files.pythonhosted.org/packages/cf/81/1546c983678a9b4e77cb4718eaedd1b2caf24a6cdbf1"
    "eb8775938d22aff7/brotli-1.2.1.tar.gz"
)
GENERAL_ENGLISH_ARCHIVE_SHA256 = "02b2f7b5a83485efe448a44ddf7983def05c3bb1dcf917d4f7154070260e13de"
GENERAL_ENGLISH_MEMBER = "brotli-1.2.1/tests/testdata/alice29.txt"
GENERAL_ENGLISH_SHA256 = "7467306ee0feed4971260f3c87421154a05be571d944e9cb021a5713700c38f0"
GENERAL_ENGLISH_ENV = "NANOBARD_GENERAL_ENGLISH"


def _fetch_general_english(dest: Path) -> None:
    """Download the package, check it, extract the text, check that too (never a partial file)."""
    archive = dest.with_suffix(".tar.gz")
    try:
        download_verified(GENERAL_ENGLISH_URL, archive, GENERAL_ENGLISH_ARCHIVE_SHA256)
        with tarfile.open(archive) as tar:
            member = tar.extractfile(GENERAL_ENGLISH_MEMBER)
            if member is None:
                raise CorpusError(f"{GENERAL_ENGLISH_MEMBER} in the package is not a regular file")
            data = member.read()
    except (CorpusError, OSError, KeyError, tarfile.TarError) as e:
        raise CorpusError(
            f"cannot get the general-English text ({e}); download {GENERAL_ENGLISH_URL}, take "
            f"{GENERAL_ENGLISH_MEMBER} from it and pass its path, or set {GENERAL_ENGLISH_ENV}=PATH"
        ) from None
    finally:
        archive.unlink(missing_ok=True)
    tmp = dest.with_suffix(".part")
    tmp.write_bytes(data)
    if sha256_file(tmp) != GENERAL_ENGLISH_SHA256:
        tmp.unlink()
        raise CorpusError(
            f"{GENERAL_ENGLISH_MEMBER} in {GENERAL_ENGLISH_URL} is not the expected text"
        )
    os.replace(tmp, dest)


def general_english_text(path: str | os.PathLike | None = None) -> str:
    """General English prose held out from the corpus (152,089 characters of *Alice's Adventures
    in Wonderland* unless told otherwise): the file at ``path``, else ``$NANOBARD_GENERAL_ENGLISH``,
    else a copy downloaded once into the user cache and verified by SHA-256. Line indentation
    (centred headings, paragraph indents) is removed; the words and line breaks are kept. A famous
    public-domain book is likely in every pretrained model's training data: compare a model's
    scores before and after fine-tuning on it, not its absolute score with another text's."""
    src = path or os.environ.get(GENERAL_ENGLISH_ENV)
    if src is None:
        src = cache_dir() / "alice29.txt"
        if not (src.is_file() and sha256_file(src) == GENERAL_ENGLISH_SHA256):
            src.parent.mkdir(parents=True, exist_ok=True)
            _fetch_general_english(src)
    text = read_text_file(src)
    return "\n".join(line.strip() for line in text.splitlines()).strip() + "\n"


def _first_train(data: Data, n: int) -> Data:
    """The same data with only the first ``n`` training characters (the validation text
    unchanged)."""
    # one branch per kind: the training part is token ids in one, text in the other
    if isinstance(data, TokenCorpus):  # part of the text: its SHA-256 is no longer known
        return dataclasses.replace(data, train=data.train[:n], sha256="")
    return dataclasses.replace(data, train=data.train[:n])


def _as_pretrained(model: Pretrained | str | os.PathLike) -> Pretrained:
    return model if isinstance(model, Pretrained) else load_pretrained(str(model), pick_device())


# --------------------------------------------------------------------------------------------
# 1. fine-tuning vs training from scratch, by amount of data


@dataclass
class CrossoverPoint(Record):
    """Both tracks trained on the first ``train_chars`` characters, each for the same wall time."""

    fraction: float
    train_chars: int
    scratch_bpc: float  # bits per character on the shared validation text
    finetuned_bpc: float
    scratch_steps: int
    finetune_steps: int


@dataclass
class CrossoverResult(Record):
    corpus: str
    pretrained: str
    budget_s: float  # wall time each track trained for, at every fraction
    score_chars: int  # validation characters scored
    zero_shot_bpc: float  # the pretrained model before any fine-tuning (fraction 0)
    points: list[CrossoverPoint] = field(default_factory=list)

    @property
    def crossover_fraction(self) -> float | None:
        """The smallest fraction at which training from scratch scores as well as fine-tuning
        (None: never)."""
        return next((p.fraction for p in self.points if p.scratch_bpc <= p.finetuned_bpc), None)


def crossover(
    data: Data,
    *,
    fractions: Sequence[float] = (0.01, 0.1, 1.0),
    budget_s: float,
    scratch_preset: str = "quick",
    pretrained: str = "smollm2-135m",
    score_chars: int = 20_000,
    out_dir: str | os.PathLike,
    scratch_overrides: dict[str, Any] | None = None,
    finetune_overrides: dict[str, Any] | None = None,
    progress: bool = False,
    keep_models: bool = False,
) -> CrossoverResult:
    """When does transfer learning pay? For each fraction of the training text (its first
    ``fraction * len(train)`` characters), train the from-scratch preset and fine-tune
    ``pretrained``, each for ``budget_s`` seconds of wall time, and score both on the first
    ``score_chars`` validation characters. The pretrained model is scored once before any
    fine-tuning (the zero-shot line); that score is handed to every fine-tuning run as its "before"
    instead of scoring it again. Overrides change the configs (e.g. a smaller model); the budget
    stays time. Writes ``crossover.json`` (RunDir.CROSSOVER) and one folder per run into
    ``out_dir`` (the fine-tuned models themselves only with ``keep_models``: 540 MB each for
    SmolLM2)."""
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        raise ConfigError(f"fractions must be in (0, 1], got {list(fractions)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # 0 or None: all of it, as FinetuneConfig.score_chars
    text = data.val_text(score_chars or None)
    pre = load_pretrained(pretrained, pick_device())
    zero = score_hf(pre.model, pre.tokenizer, text, f"{pre.name} (zero-shot)", progress=progress,
                    precision=scoring_dtype(next(pre.model.parameters()).device))  # fmt: skip
    name = pre.name
    del pre  # each fine-tuning run loads its own copy
    logger.info("zero-shot: %.3f bits/char on %d characters", zero.bits_per_char, zero.chars)
    result = CrossoverResult(data.name, name, budget_s, len(text), zero.bits_per_char)
    for f in sorted(fractions):
        n = max(1, round(f * len(data.train)))
        part = _first_train(data, n)
        mcfg, tcfg = resolve_preset(
            scratch_preset, {**(scratch_overrides or {}), "max_time": budget_s}
        )
        run = train(mcfg, tcfg, part, out / f"scratch_{n}", progress=progress)
        model, tok, _ = load_model(Path(run.out_dir) / RunDir.BEST)
        scratch = score_scratch(model, tok, text, f"scratch on {n} characters")
        ft_dir = out / f"finetune_{n}"
        cfg = resolve(
            FinetuneConfig(pretrained=pretrained, score_chars=score_chars, prompts=()),
            {**(finetune_overrides or {}), "max_time": budget_s, "train_chars": n},
        )
        # the same budget as the scratch run's: training only (--max-time is a whole command's)
        ft = finetune(cfg, part, ft_dir, progress=progress, keep_checkpoints=False, before=zero,
                      budget_covers="training")  # fmt: skip
        if not keep_models:  # 540 MB each; only the score is needed
            shutil.rmtree(ft_dir / RunDir.FINETUNED, ignore_errors=True)
        result.points.append(
            CrossoverPoint(f, n, scratch.bits_per_char, ft.after.bits_per_char, run.steps, ft.steps)
        )
        logger.info(
            "fraction %g: scratch %.3f, fine-tuned %.3f bits/char",
            f,
            scratch.bits_per_char,
            ft.after.bits_per_char,
        )
    result.save(out / RunDir.CROSSOVER)
    return result


# --------------------------------------------------------------------------------------------
# 2. domain adaptation and forgetting


@dataclass
class ForgettingResult(Record):
    """The pretrained model before and after fine-tuning, on general English and on the domain."""

    base: str
    finetuned: str
    general_before: Score
    general_after: Score
    domain_before: Score
    domain_after: Score

    @property
    def general_change_bpc(self) -> float:
        """After minus before on general English, bits/char: above 0, fine-tuning cost general
        English."""
        return self.general_after.bits_per_char - self.general_before.bits_per_char

    @property
    def domain_change_bpc(self) -> float:
        """After minus before on the domain, bits/char: below 0, fine-tuning helped where it
        trained."""
        return self.domain_after.bits_per_char - self.domain_before.bits_per_char


def forgetting(
    base_model: Pretrained | str | os.PathLike,
    finetuned_model: Pretrained | str | os.PathLike,
    general_text: str,
    domain_text: str,
    *,
    score_chars: int = 20_000,
) -> ForgettingResult:
    """Bits per character of the pretrained model before (``base_model``) and after fine-tuning
    (``finetuned_model``, e.g. a run's ``model_hf_finetuned`` folder) on the first ``score_chars``
    characters of a general English text and of the domain's validation text. Models are given
    loaded or by name/folder; pass a freshly loaded base (fine-tuning changes a model in place)."""
    texts = {"general": general_text[:score_chars], "domain": domain_text[:score_chars]}
    scores: dict[str, Score] = {}
    names = []
    for when, given in (("before", base_model), ("after", finetuned_model)):
        pre = _as_pretrained(given)
        names.append(pre.name)
        for what, text in texts.items():
            scores[f"{what}_{when}"] = score_hf(
                pre.model, pre.tokenizer, text, f"{pre.name} on {what} text"
            )
            logger.info("%s %s: %.3f bits/char", what, when, scores[f"{what}_{when}"].bits_per_char)
    return ForgettingResult(names[0], names[1], **scores)
