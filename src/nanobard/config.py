"""Typed configs, validated on construction, and the named presets: the from-scratch model and its
training, fine-tuning, and the study.

Every field can be overridden from the command line with a kebab-case flag of the same name
(`n_embd` -> `--n-embd`); its help text is the field's ``metadata["help"]``. A run writes the full
config it used into its folder as `config.json`. Nothing here imports torch, so `--help` is fast.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_args

from nanobard.errors import ConfigError  # noqa: F401  (re-exported: config.ConfigError)

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

ConfigT = TypeVar("ConfigT", bound="DataclassInstance")  # any of the config dataclasses below

PosEncoding = Literal["learned", "sinusoidal", "rotary"]
Activation = Literal["gelu", "relu2"]
QKNormType = Literal["rms", "layer"]
DType = Literal["auto", "float32", "bfloat16"]
OptimizerName = Literal["adamw", "muon"]
LRSchedule = Literal["cosine", "wsd"]
REPORT_TO = ("none", "tensorboard", "trackio", "wandb")  # --report-to (train/tracking.py)


def opt(default: Any, help: str) -> Any:
    """A config field with its ``--help`` text (the CLI builds one flag per field from these)."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the from-scratch GPT."""

    vocab_size: int = opt(65, "set from the tokenizer when a run starts")
    block_size: int = opt(64, "context length in characters; reduce if you run out of memory")
    n_layer: int = opt(4, "transformer blocks")
    n_head: int = opt(4, "attention heads per block (must divide --n-embd)")
    n_embd: int = opt(128, "embedding width; reduce (e.g. 128 -> 64) if you run out of memory")
    dropout: float = opt(0.0, "dropout probability (0 for small data/short runs)")
    attn_dropout: float | None = opt(
        None,
        "dropout on the attention weights (unset: the same as --dropout); 0 keeps the fused "
        "attention kernel, which a CPU cannot use with attention dropout (step ~1.6x slower "
        "with it)",
    )
    bias: bool = opt(
        False,
        "biases in Linear layers and LayerNorms (GPT-2 has them; nanoGPT finds none a bit better)",
    )
    pos_encoding: PosEncoding = opt(
        "learned",
        "learned (GPT-2), sinusoidal (Vaswani et al.), or rotary (RoPE, Su et al.: queries and "
        "keys rotated by position, nothing added to the embeddings; not exportable to GPT-2)",
    )
    tie_weights: bool = opt(True, "share token embedding and output layer weights, as GPT-2")
    causal: bool = opt(
        True,
        "causal attention mask (--no-causal trains an encoder-style model that sees the "
        "future: for the notebook's lesson, not for generating text)",
    )
    # Speed-run options (modded-nanogpt measured them): off in the readable presets and in
    # cpu-10min, where they did not pay; fast turns on rotary and qk_norm. What each buys is in
    # benchmarks/README.md.
    activation: Activation = opt(
        "gelu", "MLP nonlinearity: gelu (GPT-2), or relu2 (ReLU squared; not exportable to GPT-2)"
    )
    qk_norm: bool = opt(
        False,
        "normalise each head's queries and keys (with a learned gain) before attention: "
        "allows a higher learning rate (not exportable to GPT-2)",
    )
    qk_norm_type: QKNormType = opt(
        "rms",
        "how --qk-norm normalises: rms (RMSNorm, as modded-nanogpt) or layer (LayerNorm "
        "without bias, as ViT-22B: it also removes each vector's mean; one fused kernel "
        "forward and backward, so a CPU runs it faster)",
    )
    zero_init: bool = opt(
        False,
        "start every block's output projections (attention and MLP c_proj) at zero, so each "
        "block begins as the identity",
    )

    @property
    def attention_dropout(self) -> float:
        """The dropout on the attention weights: ``attn_dropout``, or ``dropout`` when unset."""
        return self.dropout if self.attn_dropout is None else self.attn_dropout

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
        if self.attn_dropout is not None and not 0.0 <= self.attn_dropout < 1.0:
            raise ConfigError(f"attn_dropout must be in [0, 1), got {self.attn_dropout}")
        if self.pos_encoding not in get_args(PosEncoding):
            raise ConfigError(
                "pos_encoding must be 'learned', 'sinusoidal' or 'rotary', "
                f"got {self.pos_encoding!r}"
            )
        if self.qk_norm_type not in get_args(QKNormType):
            raise ConfigError(
                f"qk_norm_type must be one of {', '.join(get_args(QKNormType))}, "
                f"got {self.qk_norm_type!r}"
            )
        if self.activation not in get_args(Activation):
            raise ConfigError(f"activation must be 'gelu' or 'relu2', got {self.activation!r}")
        if self.pos_encoding == "rotary" and (self.n_embd // self.n_head) % 2:
            raise ConfigError(
                f"rotary positions need an even head size; n_embd / n_head = "
                f"{self.n_embd // self.n_head}"
            )


@dataclass(frozen=True)
class TrainConfig:
    """How the from-scratch model is trained. Budgets: the first of steps/epochs/time reached
    ends it."""

    batch_size: int = opt(
        12, "sequences per micro-batch; reduce (16 -> 8 -> 4) if you run out of memory"
    )
    grad_accum: int = opt(
        1, "micro-batches per optimizer step; global batch = batch_size * grad_accum"
    )
    max_steps: int | None = opt(2000, "optimizer steps to run")
    epochs: float | None = opt(None, "passes over the training text (converted to steps)")
    max_time: float | None = opt(
        None,
        "wall-time budget, e.g. 90s, 5m, 1h; alone, the step count is sized "
        "to fit it from the speed measured in the first steps",
    )
    lr: float = opt(1e-3, "peak learning rate after warmup")
    min_lr: float = opt(1e-4, "learning rate at the end of the decay")
    warmup_steps: int = opt(100, "steps of linear warmup")
    lr_decay_steps: int | None = opt(None, "length of the decay (default: the step budget)")
    lr_schedule: LRSchedule = opt(
        "cosine",
        "cosine: decay from --lr to --min-lr over the whole run after warmup; wsd "
        "(warmup-stable-decay): hold --lr, then decay linearly to --min-lr over the last "
        "--cooldown-frac of the steps after warmup",
    )
    cooldown_frac: float = opt(
        0.4, "with --lr-schedule wsd, the fraction of the steps after warmup that decays"
    )
    weight_decay: float = opt(0.1, "applied to 2-D parameters (matmul weights, embeddings) only")
    optimizer: OptimizerName = opt(
        "adamw",
        "adamw, or muon: Muon for the matrices inside the blocks, AdamW for "
        "embeddings and norms (learns about twice as fast per step; same --lr "
        "and schedule)",
    )
    beta1: float = opt(0.9, "AdamW beta1")
    beta2: float = opt(0.99, "AdamW beta2")
    grad_clip: float = opt(1.0, "clip the gradient norm to this (0 disables)")
    eval_interval: int = opt(250, "steps between evaluations (and checkpoints)")
    eval_iters: int = opt(20, "batches averaged per evaluation (the same batches every time)")
    patience: int | None = opt(
        None, "evaluations without val-loss improvement before stopping early"
    )
    target_loss: float | None = opt(None, "stop at the first evaluation with val loss <= this")
    seed: int = opt(1337, "random seed (weights, batches, dropout)")
    device: str = opt("auto", "auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps")
    dtype: DType = opt(
        "auto",
        "auto: bfloat16 autocast where it is native (CPUs with AVX-512 BF16 or AMX, "
        "recent GPUs), float32 elsewhere; or force float32 / bfloat16 (very slow on CPUs "
        "without native bfloat16)",
    )
    compile: bool = opt(False, "torch.compile the model (compile time counts in the wall time)")
    threads: int | None = opt(None, "CPU threads for torch (default: torch's choice)")

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {self.batch_size}")
        if self.grad_accum < 1:
            raise ConfigError(f"grad_accum must be a positive integer, got {self.grad_accum}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}; try --lr 1e-3")
        if self.min_lr < 0 or self.min_lr > self.lr:
            raise ConfigError(f"min_lr must be in [0, lr={self.lr}], got {self.min_lr}")
        _check_budget(self.max_steps, self.epochs, self.max_time)
        if self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be at least 1, got {self.threads}")
        if self.lr_decay_steps is not None and self.lr_decay_steps < 1:
            raise ConfigError(f"lr_decay_steps must be at least 1, got {self.lr_decay_steps}")
        if self.target_loss is not None and not self.target_loss > 0:
            raise ConfigError(f"target_loss must be positive, got {self.target_loss}")
        if self.eval_interval < 1 or self.eval_iters < 1:
            raise ConfigError("eval_interval and eval_iters must be at least 1")
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"patience must be at least 1, got {self.patience}")
        if self.grad_clip < 0 or self.weight_decay < 0:
            raise ConfigError("grad_clip and weight_decay must be >= 0")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ConfigError("beta1 and beta2 must be in [0, 1)")
        if self.optimizer not in get_args(OptimizerName):
            raise ConfigError(
                f"optimizer must be one of {', '.join(get_args(OptimizerName))}, "
                f"got {self.optimizer!r}"
            )
        if self.dtype not in get_args(DType):
            raise ConfigError(
                f"dtype must be one of {', '.join(get_args(DType))}, got {self.dtype!r}"
            )
        if self.lr_schedule not in get_args(LRSchedule):
            raise ConfigError(
                f"lr_schedule must be one of {', '.join(get_args(LRSchedule))}, "
                f"got {self.lr_schedule!r}"
            )
        if not 0 < self.cooldown_frac <= 1:
            raise ConfigError(f"cooldown_frac must be in (0, 1], got {self.cooldown_frac}")


def _check_budget(max_steps: int | None, epochs: float | None, max_time: float | None) -> None:
    if max_steps is not None and max_steps < 1:
        raise ConfigError(f"max_steps must be at least 1, got {max_steps}")
    if epochs is not None and not epochs > 0:
        raise ConfigError(f"epochs must be positive, got {epochs}")
    if max_time is not None and not max_time > 0:
        raise ConfigError(f"max_time must be positive, got {max_time}")
    if max_steps is None and epochs is None and max_time is None:
        raise ConfigError("give a budget: --max-steps, --epochs or --max-time")


SHAKESPEARE_PROMPTS = ("ROMEO:\n", "To be, or not to be", "KING HENRY:\nNow, my lords,")


@dataclass(frozen=True)
class FinetuneConfig:
    """How the pretrained model is fine-tuned (with the Hugging Face Trainer) and scored."""

    pretrained: str = opt(
        "auto",
        "auto (gpt2 if cached/reachable, else smollm2-135m), a hub id, a local folder, "
        "or smollm2-135m",
    )
    block_size: int = opt(128, "tokens per training example")
    batch_size: int = opt(8, "examples per step; reduce if you run out of memory")
    grad_accum: int = opt(1, "micro-batches per optimizer step")
    max_steps: int | None = opt(60, "optimizer steps")
    epochs: float | None = opt(None, "passes over the tokenized training text (the seed uses 3)")
    max_time: float | None = opt(
        None,
        "wall-time budget of the whole command (loading, scoring and samples before and after, "
        "training, saving), e.g. 2m; alone, the training steps are sized to fit what the rest "
        "leaves, from the speed of the first steps; with steps or epochs, a cap",
    )
    lr: float = opt(1e-4, "peak learning rate")
    warmup_steps: int = opt(6, "steps of linear warmup")
    weight_decay: float = opt(0.01, "AdamW weight decay")
    grad_clip: float = opt(1.0, "clip the gradient norm to this")
    eval_interval: int = opt(20, "steps between evaluations (and checkpoints)")
    eval_blocks: int = opt(16, "validation blocks averaged for the periodic val loss")
    patience: int | None = opt(3, "evaluations without improvement before stopping early")
    lora_r: int = opt(0, "LoRA rank (0 = full fine-tuning); merged into the weights before saving")
    lora_alpha: int = opt(32, "LoRA scaling")
    lora_plus: float = opt(
        1.0,
        "LoRA+: the adapters' B matrices learn at this multiple of lr, A at lr (1 = plain LoRA; "
        "the LoRA+ paper takes 16 with a lower lr)",
    )
    lora_layers: int | None = opt(
        None,
        "LoRA adapters in the top N transformer blocks only (unset: all): the backward pass "
        "stops below the lowest adapted block, so a step costs less",
    )
    precision: DType = opt(
        "auto", "auto (bfloat16 where the CPU/GPU has it natively), float32 or bfloat16"
    )
    seed: int = opt(1337, "random seed")
    train_chars: int | None = opt(None, "use only the first N characters of the training text")
    score_chars: int | None = opt(
        20_000, "score bits/char on the first N validation characters (0 = all)"
    )
    sample_tokens: int = opt(80, "tokens per before/after sample")
    device: str = opt("auto", "auto (cuda > mps > cpu), cpu, cuda, mps")
    prompts: tuple[str, ...] = opt(SHAKESPEARE_PROMPTS, "prompts of the before/after samples")

    def __post_init__(self) -> None:
        for name in ("block_size", "batch_size", "grad_accum", "eval_interval", "eval_blocks"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        _check_budget(self.max_steps, self.epochs, self.max_time)
        if self.precision not in get_args(DType):
            raise ConfigError(
                f"precision must be auto, float32 or bfloat16, got {self.precision!r}"
            )
        if self.lora_r < 0:
            raise ConfigError(f"lora_r must be >= 0, got {self.lora_r}")
        if self.sample_tokens < 0:
            raise ConfigError(f"sample_tokens must be >= 0 (0: none), got {self.sample_tokens}")
        if self.score_chars is not None and self.score_chars < 0:
            raise ConfigError(f"score_chars must be >= 0 (0: all), got {self.score_chars}")
        if not self.lora_plus >= 1:
            raise ConfigError(f"lora_plus must be at least 1, got {self.lora_plus}")
        if self.lora_plus != 1 and self.lora_r == 0:
            raise ConfigError("lora_plus needs LoRA adapters: set lora_r above 0")
        if self.lora_layers is not None and self.lora_layers < 1:
            raise ConfigError(f"lora_layers must be at least 1, got {self.lora_layers}")


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
        "about 3 minutes on 2 CPU cores: a 0.8M-parameter model (context 64) trained with Muon "
        "(lr 1e-2), good enough for recognisable text",
        ModelConfig(block_size=64, n_layer=4, n_head=4, n_embd=128),
        # min_lr 1e-3 -> 1e-4 (the cosine decays to 1 % of the peak, not 10 %): the study's 75 s
        # scratch stage, three alternating pairs on an AMD EPYC Zen 5, 2.2361 / 2.2279 / 2.2565
        # -> 2.2248 / 2.2076 / 2.2492 bits/char (benchmarks/README.md, stop 33)
        TrainConfig(
            batch_size=32,
            max_steps=1500,
            max_time=240.0,
            lr=1e-2,
            min_lr=1e-4,
            warmup_steps=30,
            eval_interval=250,
            eval_iters=20,
            optimizer="muon",
        ),
    ),
    "seed": Preset(
        "seed",
        "the seed notebook's scale: ~690K parameters, 4 heads, context 128, 10 epochs",
        ModelConfig(block_size=128, n_layer=6, n_head=4, n_embd=96, dropout=0.1),
        TrainConfig(
            batch_size=32,
            max_steps=None,
            epochs=10.0,
            lr=1e-3,
            min_lr=1e-4,
            warmup_steps=200,
            eval_interval=500,
            eval_iters=40,
            patience=5,
        ),
    ),
    "gpu": Preset(
        "gpu",
        "nanoGPT's shakespeare_char scale (10.7M parameters); meant for a CUDA GPU",
        ModelConfig(block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.2),
        TrainConfig(
            batch_size=64,
            max_steps=5000,
            lr=1e-3,
            min_lr=1e-4,
            warmup_steps=100,
            eval_interval=250,
            eval_iters=200,
            patience=8,
        ),
    ),
    "lesson": Preset(
        "lesson",
        "the notebooks' model: nanoGPT's CPU baby shape (4 layers, 4 heads, 128 wide, context "
        "64) on GPT-2's architecture, Muon at lr 1.4e-2, 380 steps (~20 s on 2 cores)",
        ModelConfig(block_size=64, n_layer=4, n_head=4, n_embd=128),
        TrainConfig(
            batch_size=16,
            max_steps=380,
            lr=1.4e-2,
            min_lr=1.4e-3,
            warmup_steps=30,
            eval_interval=190,
            eval_iters=20,
            optimizer="muon",
        ),
    ),
    "fast": Preset(
        "fast",
        "shortest wall time to nanoGPT's baby-config loss (1.886) on tiny Shakespeare on a CPU: "
        "the baby model with rotary positions and LayerNorm-normalised queries and keys, "
        "trained with Muon, batch 16, lr 1.4e-2, 10 warmup steps, a 240-step schedule (~13 s on "
        "2 cores)",
        ModelConfig(
            block_size=64,
            n_layer=4,
            n_head=4,
            n_embd=128,
            pos_encoding="rotary",
            qk_norm=True,
            qk_norm_type="layer",  # RMSNorm: unfused backward on a CPU (step 61.8 -> 55.8 ms)
        ),
        TrainConfig(
            batch_size=16,
            max_steps=240,
            lr=1.4e-2,
            min_lr=1.4e-3,
            warmup_steps=10,
            eval_interval=120,
            eval_iters=20,
            optimizer="muon",
        ),
    ),
    "cpu-10min": Preset(
        "cpu-10min",
        "best validation loss in 10 minutes of CPU wall time: a wider model "
        "(4 x 192, context 128), Muon, weight decay 0.3, bfloat16 autocast where it is native; "
        "the cosine schedule is sized to the 570 s budget from the speed measured in the first "
        "steps, so it decays fully on a slow machine and a fast one alike (on a machine that "
        "runs ~3,000 steps or more in it, --dropout 0.1 --attn-dropout 0 --pos-encoding rotary "
        "--qk-norm --qk-norm-type layer --zero-init --lr 4e-3 --min-lr 4e-4 does better: "
        "dropout stops it overfitting, QK-norm lets the higher learning rate pay)",
        # dropout 0.1 outside attention: 1.4909 -> 1.4692 re-scored on an AMX Xeon (4,920 steps),
        # 1.4943 -> 1.5590 with AVX2 emulated (2,008 steps): off, as it costs the slow kinds more.
        # With rotary + QK-norm + lr 4e-3 as well, the same day (AMX, ~4,000-4,400 steps): seed
        # 1337 1.4784 -> 1.4627, seed 2 1.4791 -> 1.4758; adding --zero-init (stop 32, AMX, the
        # same day): seed 1337 1.4766 -> 1.4665, seed 2 1.4685 -> 1.4668; the whole set on an AMD
        # EPYC Zen 4 (session 39, ~3,100 steps): seed 1337 1.4914 -> 1.4736 (benchmarks/README.md)
        ModelConfig(block_size=128, n_layer=4, n_head=6, n_embd=192),
        TrainConfig(
            batch_size=16,
            max_steps=None,
            max_time=570.0,
            lr=2e-3,
            min_lr=2e-4,
            warmup_steps=100,
            weight_decay=0.3,
            eval_interval=500,
            eval_iters=20,
            optimizer="muon",
        ),
    ),
    "baby": Preset(
        "baby",
        "nanoGPT's CPU 'baby' configuration: 4 layers, 4 heads, 128 dims, context 64, 2,000 steps",
        ModelConfig(block_size=64, n_layer=4, n_head=4, n_embd=128),
        TrainConfig(
            batch_size=12,
            max_steps=2000,
            lr=1e-3,
            min_lr=1e-4,
            warmup_steps=100,
            eval_interval=250,
            eval_iters=20,
            dtype="float32",
        ),  # as nanoGPT runs it on a CPU
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


def with_overrides(cfg: ConfigT, overrides: dict[str, Any]) -> ConfigT:
    """Return a copy of a config dataclass with the given fields replaced (None values ignored)."""
    names = {f.name for f in fields(cfg)}
    chosen = {k: v for k, v in overrides.items() if k in names and v is not None}
    return replace(cfg, **chosen)


_BUDGET = ("max_steps", "epochs", "max_time")


def resolve(cfg: ConfigT, overrides: dict[str, Any]) -> ConfigT:
    """A config with overrides (None values ignored), where a budget given alone replaces the
    config's budget: ``max_time`` alone makes time the budget (steps are sized from the measured
    speed), ``epochs`` alone replaces the step count, ``max_steps`` alone the epoch count; a time
    given with steps or epochs caps them. Used by every command and by the study."""
    names = {f.name for f in fields(cfg)}
    chosen = {k: v for k, v in overrides.items() if k in names and v is not None}
    given = {k for k in _BUDGET if k in chosen}
    if given == {"max_time"}:
        chosen.update(max_steps=None, epochs=None)
    elif "epochs" in given and "max_steps" not in given:
        chosen["max_steps"] = None
    elif "max_steps" in given and "epochs" not in given and "epochs" in names:
        chosen["epochs"] = None
    return replace(cfg, **chosen)


def resolve_preset(name: str, overrides: dict[str, Any]) -> tuple[ModelConfig, TrainConfig]:
    """A from-scratch preset's model and training configs with overrides (see ``resolve``)."""
    preset = get_preset(name)
    return resolve(preset.model, overrides), resolve(preset.train, overrides)


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]


# --------------------------------------------------------------------------------------------
# the study (`nanobard run`)


@dataclass(frozen=True)
class StudyPreset:
    name: str
    description: str
    scratch: str  # a from-scratch preset name
    finetune: FinetuneConfig
    sample_tokens: int = 200  # from-scratch sample length (characters)
    scratch_time: float | None = (
        None  # a wall-time budget (s) that replaces the scratch preset's step budget
    )


# Fine-tuning a 135M model on a CPU, by wall time; scores on the first 20,000 validation characters.
# LoRA rather than full fine-tuning: in the same 75 s it takes ~1.5x the steps and ends lower on
# both CPU kinds (benchmarks/finetune_budget.py: 1.544 vs 1.561 bits/char with AVX-512 BF16, 1.542
# vs 1.590 without; full fine-tuning in bfloat16 at 150 s on an AMX Xeon: 1.524 at lr 1e-4, 1.536
# at 2e-4). Rank 16 at lr 2e-3 on 4 blocks of 256 tokens (the scoring windows' length) ended at
# 1.513 where rank 8 at lr 3e-3 on 8 x 128 ended at 1.520 (lr 6e-3: 1.562); benchmarks/README.md.
# Samples: 3 prompts x 3 strategies x 40 tokens, before and after, each prompt's three decoded in
# one batch. The 150 s budget is the whole stage's (load, score and samples before, training, save,
# score and samples after): on an AMX Xeon ~28 s of it go around training (bfloat16 scoring).
_CPU_FINETUNE = FinetuneConfig(
    max_steps=None,
    max_time=150.0,
    eval_interval=20,
    score_chars=20_000,
    sample_tokens=40,
    block_size=256,
    batch_size=4,
    eval_blocks=8,
    lora_r=16,
    lr=2e-3,
    warmup_steps=2,
)

STUDY_PRESETS: dict[str, StudyPreset] = {
    "quick": StudyPreset(
        "quick",
        "the whole study in about 5 minutes on 2 CPU cores: 75 s of from-scratch training and "
        "150 s for the whole LoRA fine-tuning stage (scoring and samples included), whatever the "
        "machine",
        "quick",
        _CPU_FINETUNE,
        scratch_time=75.0,
    ),
    "cpu-10min": StudyPreset(
        "cpu-10min",
        "the quick study with the best from-scratch model that 10 minutes of CPU buy "
        "(the cpu-10min preset): about 15 minutes on 2 CPU cores",
        "cpu-10min",
        _CPU_FINETUNE,
    ),
    "seed": StudyPreset(
        "seed",
        "the seed notebook's scale: scratch ~690K parameters for 10 epochs, fine-tuning 3 epochs "
        "(hours on a CPU)",
        "seed",
        FinetuneConfig(
            max_steps=None,
            epochs=3.0,
            eval_interval=200,
            eval_blocks=64,
            patience=3,
            score_chars=None,
            sample_tokens=100,
        ),
    ),
    "gpu": StudyPreset(
        "gpu",
        "larger, for a CUDA machine: the 10.7M scratch model, 1 epoch of fine-tuning, "
        "whole-text scores",
        "gpu",
        FinetuneConfig(
            max_steps=None,
            epochs=1.0,
            batch_size=16,
            block_size=256,
            eval_interval=200,
            eval_blocks=64,
            score_chars=None,
            sample_tokens=100,
        ),
    ),
}


def get_study_preset(name: str) -> StudyPreset:
    if name not in STUDY_PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(STUDY_PRESETS)}")
    return STUDY_PRESETS[name]
