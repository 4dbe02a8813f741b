"""The pieces nanobard adds to the Hugging Face ``Trainer`` for fine-tuning:

- ``chunked_lm_loss``: the LM loss without materialising (B*T, V) float32 logits;
- a wall-time budget: the from-scratch track's ``TimeBudget`` (train/schedule.py) times the first
  steps, sizes the step count that fits the budget (evaluations and checkpoints included) and
  re-fits it at the end of every step; the cosine schedule runs over it, so fine-tuning ends on time
  with its learning rate decayed, whatever the machine;
- ``metrics_hf.jsonl``: one row per evaluation, the same schema as the from-scratch track (and
  the same rows, with the Trainer's own logs, to a ``--report-to`` tracker);
- ``cpu_bfloat16_training``: what bfloat16 autocast on a CPU does slowly, done once or in float32
  (the frozen weights cast to bfloat16 once, not at every forward pass; attention in float32);
- checkpoints that are complete or absent: one the disk refused half way is removed and reported in
  one line (the last complete one kept), each holds the corpus it was trained on
  (``corpus.json``), and ``complete_checkpoints`` skips one a crash cut short.

``transformers`` is imported inside the functions: importing nanobard stays cheap.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.nn import functional as F

from nanobard import files
from nanobard.data.corpus import CorpusId
from nanobard.files import WriteFailed
from nanobard.hardware import attention_precision
from nanobard.model.evaluate import HEAD_ON_HIDDEN_MODELS
from nanobard.model.export import no_shard_bar
from nanobard.records import EvalRow, TornRecord
from nanobard.rundir import RunDir
from nanobard.train.distributed import Dist, joined
from nanobard.train.schedule import TimeBudget, cosine
from nanobard.train.tracking import Tracker

if TYPE_CHECKING:
    from transformers import PreTrainedModel, Trainer

logger = logging.getLogger(__name__)

# ``chunked_lm_loss`` computes the same loss as the model itself for these (see the constant)
CHUNKED_LOSS_MODELS = HEAD_ON_HIDDEN_MODELS
# the Trainer's logs a tracker gets, as ``trainer/<name>`` (under the track's prefix)
TRAINER_SCALARS = ("loss", "grad_norm", "learning_rate")


def chunked_lm_loss(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    num_items: torch.Tensor | int | None = None,
    chunk: int = 256,
) -> torch.Tensor:
    """Next-token cross-entropy of a causal LM, equal to ``model(input_ids, labels=labels).loss``
    but computed ``chunk`` positions at a time through the LM head.

    The model's own loss materialises (B*T, V) logits, casts them to float32 and runs log-softmax
    over them: with SmolLM2's 49,152-token vocabulary that is several passes over 200 MB tensors,
    which on a CPU cost ~1.3 s of a 5 s step, bound by memory bandwidth. In chunks of 256 positions
    those passes stay in cache. ``num_items`` (the Trainer's token count over an accumulated batch)
    replaces the per-batch count, as it does in the model's loss.
    """
    # (B, T, C), final norm applied
    hidden = model.get_decoder()(input_ids=input_ids).last_hidden_state
    head = model.get_output_embeddings()
    h = hidden[:, :-1].reshape(-1, hidden.size(-1))  # (N, C): positions that predict a next token
    y = labels[:, 1:].reshape(-1).to(h.device)  # (N,)
    total = h.new_zeros((), dtype=torch.float32)
    for i in range(0, h.size(0), chunk):
        logits = head(h[i : i + chunk]).float()  # (chunk, V)
        total = total + F.cross_entropy(
            logits, y[i : i + chunk], ignore_index=-100, reduction="sum"
        )
    count = num_items if num_items is not None else (y != -100).sum().clamp(min=1)
    return total / count


# the attention cpu_bfloat16_training gives a model: transformers' SDPA, in float32 when training
CPU_TRAINING_ATTENTION = "nanobard_cpu_training_sdpa"


def _cpu_training_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, Any]:
    """transformers' SDPA attention, run in float32 where a CPU computes gradients: torch's CPU
    flash attention is slower in bfloat16 than in float32 backward (``hardware.attention_precision``
    says the same of the from-scratch model). Without gradients (scoring, the periodic
    evaluation, sampling), where the bfloat16 forward is the faster one, it is plain SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    # (under reentrant gradient checkpointing the first pass would take bfloat16 and the
    # recomputation float32; nanobard does not checkpoint activations)
    if not (query.is_cpu and torch.is_grad_enabled()):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if attention_mask is not None and attention_mask.is_floating_point():
        attention_mask = attention_mask.float()
    kwargs = {  # a float position bias, where a model passes one, follows q, k, v
        name: t.float() if isinstance(t, torch.Tensor) and t.is_floating_point() else t
        for name, t in kwargs.items()
    }
    with attention_precision(query):
        out, weights = sdpa_attention_forward(
            module, query.float(), key.float(), value.float(), attention_mask, **kwargs
        )
    return out.to(query.dtype), weights


@contextlib.contextmanager
def cpu_bfloat16_training(model: torch.nn.Module, enabled: bool = True) -> Iterator[None]:
    """Fine-tuning under bfloat16 autocast on a CPU, faster; the merge adds to the float32 weights.

    - The frozen weights (and biases) of the layers LoRA adapts are cast to bfloat16 once, for
      the whole of training, and their float32 originals put back on leaving: autocast casts a
      frozen weight at every forward pass (it caches only weights that require gradients), and
      the cast it makes is this one, so what those layers compute is the same to the bit. The
      LoRA merge after training then adds to the untouched float32 weights, as without this. A
      weight another module shares (a tied embedding, were LoRA to adapt it) keeps float32.
    - Attention runs in float32 where gradients flow (``_cpu_training_sdpa``), on models whose
      attention transformers lets us choose (an SDPA model; others keep theirs), in full
      fine-tuning too. This is the one change to the training numerics: float32 attention
      instead of bfloat16, so the adapters trained differ a little from autocast's.

    Measured on a 2-core Intel Xeon with AMX (SmolLM2-135M, LoRA r16 on every linear layer,
    4 x 256 tokens, bfloat16 autocast, medians of 6 steps in each of 3 alternating processes):
    2.70 / 2.74 / 2.70 s a step as transformers runs it, 2.41 / 2.53 / 2.49 s with both (-8 %).
    ``model`` is what the Trainer trains (a PeftModel with LoRA); ``enabled=False`` (float32
    training, a GPU) leaves it as it is."""
    if not enabled:
        yield
        return
    from peft.tuners.tuners_utils import BaseTunerLayer
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    base: Any = getattr(model, "get_base_model", lambda: model)()  # under a PeftModel
    swap = (
        getattr(getattr(base, "config", None), "_attn_implementation", None) == "sdpa"
        and getattr(base, "_can_set_attn_implementation", lambda: False)()  # private in 5.x
    )
    uses = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    originals: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
    try:
        for layer in model.modules():
            if not isinstance(layer, BaseTunerLayer):
                continue
            for weight in layer.get_base_layer().parameters(recurse=False):  # weight, bias
                frozen = not weight.requires_grad and uses[id(weight)] == 1  # and not shared
                if frozen and weight.dtype == torch.float32:
                    originals.append((weight, weight.data))
                    weight.data = weight.data.to(torch.bfloat16)
        if swap:  # registered for the process (a name no model asks for otherwise)
            AttentionInterface.register(CPU_TRAINING_ATTENTION, _cpu_training_sdpa)
            AttentionMaskInterface.register(CPU_TRAINING_ATTENTION, sdpa_mask)
            base.set_attn_implementation(CPU_TRAINING_ATTENTION)
        yield
    finally:
        for weight, data in originals:
            weight.data = data
        if swap:
            base.set_attn_implementation("sdpa")


def lr_factor(step: int, warmup: int, horizon: int) -> float:
    """The Trainer's "cosine" schedule over a horizon a time budget sized: linear warmup from 0,
    then the same cosine as the from-scratch track (train/schedule.py), to 0 at ``horizon``."""
    if step < warmup:
        return step / max(1, warmup)
    return cosine((step - warmup) / max(1, horizon - warmup))


UNSIZED = 1_000_000  # the horizon before the budget has timed its first steps: an upper bound
CORPUS = "corpus.json"  # in each checkpoint folder: the CorpusId it was trained on
TRAINER_STATE = "trainer_state.json"  # the Trainer writes it last: a checkpoint with it is whole


def complete_checkpoints(ckpt_dir: Path) -> list[Path]:
    """The Trainer's checkpoint folders that were written to the end, oldest first (one cut short
    by a crash has no readable trainer_state.json, and is skipped with a warning)."""
    found = sorted(ckpt_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    whole = []
    for p in found:
        try:
            json.loads((p / TRAINER_STATE).read_text())
            whole.append(p)
        except (OSError, ValueError):
            logger.warning("%s was not written to the end (a crash while saving?); skipped", p)
    return whole


def checkpoint_corpus(folder: Path) -> CorpusId | None:
    """The corpus a Trainer checkpoint was trained on (None when it predates corpus.json)."""
    try:
        return CorpusId.load(folder / CORPUS)
    except (OSError, ValueError, TypeError, TornRecord):
        return None


def trainer_class(
    budget: TimeBudget | None = None, corpus: CorpusId | None = None, lora_plus: float = 1.0
) -> type[Trainer]:
    """The Trainer with nanobard's loss and, given a ``budget``, its time-sized schedule; each
    checkpoint it saves is whole (or removed, with a one-line ``WriteFailed``) and records
    ``corpus``. With ``lora_plus`` above 1 a LoRA model's B matrices learn at that multiple of
    the learning rate (LoRA+, peft's ``create_loraplus_optimizer``; the Trainer's own AdamW)."""
    from transformers import Trainer

    class NanobardTrainer(Trainer):
        """Training losses from ``chunked_lm_loss`` where it is exact (a single process, a model
        type in CHUNKED_LOSS_MODELS); anything else takes the Trainer's own path."""

        def _save_checkpoint(self, model, trial):
            folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
            try:
                if corpus is not None and self.args.should_save:  # before the Trainer's own
                    # files: it removes the older checkpoints once they are written
                    folder.mkdir(parents=True, exist_ok=True)
                    corpus.save(folder / CORPUS)
                with no_shard_bar():  # one bar per checkpoint would only repeat the steps bar
                    super()._save_checkpoint(model, trial)
            except Exception as e:
                why = files.describe(e, folder.parent)
                if why is None:
                    raise
                shutil.rmtree(folder, ignore_errors=True)  # half a checkpoint resumes nothing
                kept = [p.name for p in complete_checkpoints(folder.parent)]
                raise WriteFailed(
                    folder,
                    why,
                    f"kept: {kept[-1]} (the last complete checkpoint); free some space, then run "
                    "the same command with --resume"
                    if kept
                    else "no complete checkpoint yet; free some space and run again",
                ) from e

        def create_optimizer(self, model=None):
            from peft import PeftModel

            target = self.model if model is None else model
            if lora_plus == 1.0 or not isinstance(target, PeftModel) or self.optimizer:
                return super().create_optimizer(model)
            from peft.optimizers import create_loraplus_optimizer

            cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(self.args, target)
            kwargs.pop("lr", None)
            self.optimizer = create_loraplus_optimizer(
                target,
                cls,
                lr=self.args.learning_rate,
                loraplus_lr_ratio=lora_plus,
                loraplus_weight_decay=self.args.weight_decay,
                **kwargs,
            )
            return self.optimizer

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            base = self.accelerator.unwrap_model(model)
            if (
                return_outputs
                or base is not model
                or base.config.model_type not in CHUNKED_LOSS_MODELS
            ):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            n = num_items_in_batch if self.model_accepts_loss_kwargs else None
            # what accelerate wraps model.forward in; we bypass forward
            with self.accelerator.autocast():
                return chunked_lm_loss(model, inputs["input_ids"], inputs["labels"], n)

        def create_scheduler(
            self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None
        ):
            if budget is None:
                return super().create_scheduler(num_training_steps, optimizer)
            if self.lr_scheduler is None:
                warmup = self.args.get_warmup_steps(num_training_steps)
                optimizer = optimizer or self.optimizer
                assert optimizer is not None, "the Trainer creates its optimizer first"
                self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
                    optimizer,
                    lambda step: lr_factor(step, warmup, budget.horizon or UNSIZED),
                )
            return self.lr_scheduler

    return NanobardTrainer


def metrics_callback(
    path: Path,
    tokens_per_step: int,
    t0: float,
    max_time: float | None,
    budget: TimeBudget | None = None,
    tracker: Tracker | None = None,
    ranks: Dist | None = None,
) -> Any:
    """Appends each evaluation to ``path`` and ends training on the time budget: at the step count
    ``budget`` sized, or when ``max_time`` seconds have passed, whichever comes first. Returns a
    ``TrainerCallback`` whose ``rows`` are the evaluations (Any: its class is made here, where
    transformers is imported, so no annotation can name it). ``tracker`` gets each evaluation's
    row and the Trainer's own logs (``TRAINER_SCALARS`` as ``trainer/<name>``).

    Under torchrun rank 0's clock decides for every rank (``ranks``: by default the process group
    the Trainer joined): each rank's budget fits its own horizon, and ranks that stopped at
    different steps would wait for each other forever (measured: two CPU ranks fitted 1,378 and
    1,402 steps to one budget; the first to stop left the other hanging), or, with different
    horizons, train at different learning rates."""
    from transformers import TrainerCallback

    if budget is not None:  # the budget counts from where the caller's clock does
        budget.t0 = t0

    class MetricsCallback(TrainerCallback):
        def __init__(self) -> None:
            self.last: dict[str, float] = {}
            self.rows: list[EvalRow] = []

        def on_log(self, args, state, control, logs=None, **kw):
            for k in ("loss", "learning_rate"):
                if logs and k in logs:
                    self.last[k] = logs[k]
            if tracker is not None and logs and state.is_world_process_zero:
                logged = {f"trainer/{k}": logs[k] for k in TRAINER_SCALARS if k in logs}
                tracker.log(logged, state.global_step)

        def on_evaluate(self, args, state, control, metrics=None, lr_scheduler=None, **kw):
            lr = (
                lr_scheduler.get_last_lr()[0]
                if lr_scheduler is not None
                else self.last.get("learning_rate")
            )
            row = EvalRow(
                step=state.global_step,
                tokens=state.global_step * tokens_per_step,
                val_loss=round(metrics["eval_loss"], 5),
                train_loss=self.last.get("loss"),
                lr=lr,
                elapsed_s=round(time.perf_counter() - t0, 3),
            )
            self.rows.append(row)
            if state.is_world_process_zero:  # under torchrun only rank 0 writes
                RunDir(path.parent).append_metrics(row, path.name)
                if tracker is not None:
                    tracker.log_row(row)

        def on_train_begin(self, args, state, control, **kw):
            self.mark = time.perf_counter()
            self.ranks = ranks or joined()
            if budget is not None:  # a resumed run: this session calibrates on its own steps
                budget.start_step = state.global_step

        def on_step_begin(self, args, state, control, **kw):
            # an evaluation (and its checkpoint) ran since the last step ended: the budget counts it
            if budget is not None and state.global_step % budget.eval_interval == 0:
                spent = time.perf_counter() - self.mark
                if budget.sized:
                    budget.refine(state.global_step, spent)
                else:
                    budget.eval_s = spent
                self.from_main(False)  # this step's learning rate comes from the horizon

        def on_step_end(self, args, state, control, **kw):
            self.mark = time.perf_counter()
            elapsed = self.mark - t0
            if budget is not None:  # sized after the first timed steps, then re-fitted each step
                if budget.observe(state.global_step) is None:
                    budget.follow(state.global_step)
            out_of_time = max_time is not None and elapsed > max_time
            horizon_reached = (
                budget is not None and budget.sized and state.global_step >= (budget.horizon or 0)
            )
            if self.from_main(out_of_time or horizon_reached):
                logger.info(
                    "fine-tuning time budget reached at step %d (%.0f s)",
                    state.global_step,
                    elapsed,
                )
                control.should_training_stop = True
                control.should_evaluate = True
                control.should_save = True

        def from_main(self, stop: bool) -> bool:
            """Rank 0's horizon (into ``budget``) and decision to stop, on every rank."""
            if not self.ranks.enabled:
                return stop
            mine = budget.horizon if budget is not None and budget.horizon is not None else -1
            horizon, stop_code = self.ranks.ints_from_main(mine, int(stop))
            if budget is not None:
                budget.horizon = None if horizon < 0 else horizon
            return bool(stop_code)

    return MetricsCallback()


def quiet_progress(trainer: Trainer, budget: TimeBudget | None, progress: bool) -> None:
    """The Trainer's console output, nanobard's way: no dict printed per log (``metrics_hf.jsonl``
    and the log hold those numbers; transformers prints one per log line, ``--no-progress`` or
    not), and with ``progress`` one bar whose length is the time budget's step count once it is
    sized (the Trainer's own bar counts to the step bound a time budget starts from, 1,000,000,
    and shows an ETA of hundreds of hours), the losses on the bar."""
    from tqdm.auto import tqdm
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if not progress:
        return

    class BudgetProgress(ProgressCallback):
        def on_train_begin(self, args, state, control, **kw):
            if state.is_world_process_zero:  # a time budget's length: unknown until it is sized
                self.training_bar = tqdm(
                    total=None if budget is not None else state.max_steps,
                    initial=state.global_step,  # a resumed run starts where it was
                    desc="fine-tune",
                    dynamic_ncols=True,
                )
            self.current_step = state.global_step

        def on_step_end(self, args, state, control, **kw):
            super().on_step_end(args, state, control, **kw)
            bar = self.training_bar
            if bar is not None and budget is not None and budget.sized and budget.horizon:
                # a horizon re-sized below the steps done (a slow evaluation) ends the run at the
                # next step: the bar ends full, not as a count without a total
                total = max(budget.horizon, state.global_step)
                if bar.total != total:
                    bar.total = total
                    bar.refresh()

        def on_log(self, args, state, control, logs=None, **kw):
            losses = {k: f"{v:.3f}" for k, v in (logs or {}).items()
                      if k in ("loss", "eval_loss") and isinstance(v, float)}  # fmt: skip
            if self.training_bar is not None and losses:
                self.training_bar.set_postfix(losses)

    trainer.add_callback(BudgetProgress())
