"""Typed configs for the from-scratch track, validated on construction, and the named presets.

Every field can be overridden from the command line with a kebab-case flag of the same name
(`n_embd` -> `--n-embd`). A run writes the full config it used into its folder as `config.json`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace
from typing import Any, Literal, get_args

PosEncoding = Literal["learned", "sinusoidal"]
DType = Literal["auto", "float32", "bfloat16"]
OptimizerName = Literal["adamw", "muon"]


class ConfigError(ValueError):
    """A configuration value a user chose is unusable; the message says what to change."""


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the from-scratch GPT."""

    vocab_size: int = 65  # set from the tokenizer when a run starts
    block_size: int = 64  # context length in tokens (characters)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = False  # biases in Linear layers and LayerNorms (GPT-2 has them; nanoGPT finds none a bit better)
    pos_encoding: PosEncoding = "learned"  # or "sinusoidal" (Vaswani et al. 2017)
    tie_weights: bool = True  # share the token embedding with the LM head, as GPT-2

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head != 0:
            raise ConfigError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}); "
                f"try --n-head {_nearest_divisor(self.n_embd, self.n_head)}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.pos_encoding not in ("learned", "sinusoidal"):
            raise ConfigError(f"pos_encoding must be 'learned' or 'sinusoidal', got {self.pos_encoding!r}")


@dataclass(frozen=True)
class TrainConfig:
    """How the from-scratch model is trained. Budgets: the first of steps/epochs/time reached ends it."""

    batch_size: int = 12
    grad_accum: int = 1  # micro-batches per optimizer step; global batch = batch_size * grad_accum
    max_steps: int | None = 2000
    epochs: float | None = None  # passes over the training text, converted to steps
    max_time: float | None = None  # seconds of wall time (CLI accepts 90s, 5m, 1h)
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    lr_decay_steps: int | None = None  # cosine horizon; defaults to the step budget
    weight_decay: float = 0.1  # applied to 2-D parameters (matmul weights, embeddings) only
    optimizer: OptimizerName = "adamw"  # muon: Muon for the matrices inside the blocks (see optim.py)
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # 0 disables clipping
    eval_interval: int = 250
    eval_iters: int = 20  # batches averaged per evaluation (same batches every time)
    patience: int | None = None  # evaluations without improvement before stopping early
    target_loss: float | None = None  # stop at the first evaluation with val loss <= this
    seed: int = 1337
    device: str = "auto"  # auto picks cuda, then mps, then cpu
    dtype: DType = "auto"  # auto: bfloat16 autocast where it is native (see hardware.py), else float32
    compile: bool = False  # torch.compile the model (compile time counts in wall time)
    threads: int | None = None  # torch intra-op threads on CPU; None keeps torch's default

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {self.batch_size}")
        if self.grad_accum < 1:
            raise ConfigError(f"grad_accum must be a positive integer, got {self.grad_accum}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}; try --lr 1e-3")
        if self.min_lr < 0 or self.min_lr > self.lr:
            raise ConfigError(f"min_lr must be in [0, lr={self.lr}], got {self.min_lr}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be at least 1, got {self.max_steps}")
        if self.epochs is not None and not self.epochs > 0:
            raise ConfigError(f"epochs must be positive, got {self.epochs}")
        if self.max_time is not None and not self.max_time > 0:
            raise ConfigError(f"max_time must be positive, got {self.max_time}")
        if self.max_steps is None and self.epochs is None and self.max_time is None:
            raise ConfigError("give a budget: --max-steps, --epochs or --max-time")
        if self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.eval_interval < 1 or self.eval_iters < 1:
            raise ConfigError("eval_interval and eval_iters must be at least 1")
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"patience must be at least 1, got {self.patience}")
        if self.grad_clip < 0 or self.weight_decay < 0:
            raise ConfigError("grad_clip and weight_decay must be >= 0")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ConfigError("beta1 and beta2 must be in [0, 1)")
        if self.optimizer not in get_args(OptimizerName):
            raise ConfigError(f"optimizer must be one of {', '.join(get_args(OptimizerName))}, got {self.optimizer!r}")
        if self.dtype not in get_args(DType):
            raise ConfigError(f"dtype must be one of {', '.join(get_args(DType))}, got {self.dtype!r}")


@dataclass(frozen=True)
class Preset:
    """A named starting point: model shape + training settings."""

    name: str
    description: str
    model: ModelConfig
    train: TrainConfig


PRESETS: dict[str, Preset] = {
    "quick": Preset(
        "quick",
        "about 3 minutes on 2 CPU cores: a 0.8M-parameter model, good enough for recognisable text",
        ModelConfig(block_size=128, n_layer=4, n_head=4, n_embd=128),
        TrainConfig(batch_size=16, max_steps=1500, max_time=240.0, lr=2e-3, min_lr=2e-4,
                    warmup_steps=100, eval_interval=250, eval_iters=20),
    ),
    "seed": Preset(
        "seed",
        "the seed notebook's scale: ~690K parameters, 4 heads, context 128, 10 epochs",
        ModelConfig(block_size=128, n_layer=6, n_head=4, n_embd=96, dropout=0.1),
        TrainConfig(batch_size=32, max_steps=None, epochs=10.0, lr=1e-3, min_lr=1e-4,
                    warmup_steps=200, eval_interval=500, eval_iters=40, patience=5),
    ),
    "gpu": Preset(
        "gpu",
        "nanoGPT's shakespeare_char scale (10.7M parameters); meant for a CUDA GPU",
        ModelConfig(block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.2),
        TrainConfig(batch_size=64, max_steps=5000, lr=1e-3, min_lr=1e-4, warmup_steps=100,
                    eval_interval=250, eval_iters=200, patience=8),
    ),
    "fast": Preset(
        "fast",
        "shortest wall time to nanoGPT's baby-config loss (1.886) on tiny Shakespeare on a CPU: the baby "
        "model trained with Muon, batch 16, lr 1e-2, a 450-step schedule, 2 evaluations (~27 s on 2 cores)",
        ModelConfig(block_size=64, n_layer=4, n_head=4, n_embd=128),
        TrainConfig(batch_size=16, max_steps=450, lr=1e-2, min_lr=1e-3, warmup_steps=50,
                    eval_interval=225, eval_iters=20, optimizer="muon"),
    ),
    "cpu-10min": Preset(
        "cpu-10min",
        "best validation loss in 10 minutes of CPU wall time: a wider model, Muon, weight decay 0.3, bfloat16 "
        "autocast, cosine decay over 2,500 steps (~5 epochs of tiny Shakespeare, after which validation loss rises), "
        "stops when it has not improved for 2 evaluations or at 570 s",
        ModelConfig(block_size=128, n_layer=4, n_head=6, n_embd=192),
        TrainConfig(batch_size=16, max_steps=None, max_time=570.0, lr=2e-3, min_lr=2e-4, warmup_steps=100,
                    lr_decay_steps=2500, weight_decay=0.3, eval_interval=500, eval_iters=20, patience=2,
                    dtype="bfloat16", optimizer="muon"),
    ),
    "baby": Preset(
        "baby",
        "nanoGPT's CPU 'baby' configuration: 4 layers, 4 heads, 128 dims, context 64, 2,000 steps",
        ModelConfig(block_size=64, n_layer=4, n_head=4, n_embd=128),
        TrainConfig(batch_size=12, max_steps=2000, lr=1e-3, min_lr=1e-4, warmup_steps=100,
                    eval_interval=250, eval_iters=20),
    ),
}


def _nearest_divisor(n: int, target: int) -> int:
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    return min(divisors, key=lambda d: (abs(d - target), d))


def parse_duration(text: str | float | int) -> float:
    """'90' / '90s' / '5m' / '1.5h' -> seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smh]?)\s*", text)
    if not m:
        raise ConfigError(f"cannot read duration {text!r}; use e.g. 90s, 5m or 1h")
    value, unit = float(m.group(1)), m.group(2) or "s"
    return value * {"s": 1, "m": 60, "h": 3600}[unit]


def with_overrides(cfg: Any, overrides: dict[str, Any]) -> Any:
    """Return a copy of a config dataclass with the given fields replaced (None values ignored)."""
    names = {f.name for f in fields(cfg)}
    chosen = {k: v for k, v in overrides.items() if k in names and v is not None}
    return replace(cfg, **chosen)


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]
