"""Optimizers for the from-scratch GPT: AdamW, or Muon for the matrices inside the blocks.

``adamw``: AdamW with weight decay on the 2-D parameters (matmul weights, embeddings) only.

``muon``: Muon (Jordan et al., 2024) for every 2-D weight inside the transformer blocks (attention
QKV and output projections, the two feed-forward layers) and AdamW, as above, for the rest: the
token and position embeddings (which are also the tied output layer), LayerNorm gains and biases.
Muon orthogonalises each matrix's momentum with five Newton-Schulz iterations, so every direction
of the update moves at the same rate; per token it learns much faster than AdamW (on tiny
Shakespeare it reaches AdamW's validation loss in about half the steps). Its update is scaled to
AdamW's RMS size (Liu et al., 2025, "Muon is Scalable for LLM Training"), so one learning rate,
one weight decay and one schedule drive both.

Our ``Muon`` is ``torch.optim.Muon``'s algorithm with two changes: the Newton-Schulz iterations
run in a precision the caller chooses (``torch.optim.Muon`` always uses bfloat16, which a CPU
without AVX-512 BF16 emulates ~30x slower than float32: 89 ms against 2.6 ms for one 128x512
matrix), and matrices of the same shape (the same layer type in every block) are orthogonalised
together in one batched matmul, which saves per-call overhead on small matrices.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, overload

import torch

from nanobard.config import TrainConfig
from nanobard.hardware import resolve_precision

if TYPE_CHECKING:
    from torch.optim.optimizer import ParamsT

# Keller Jordan's quintic Newton-Schulz coefficients (as torch.optim.Muon).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalise(
    g: torch.Tensor, steps: int = 5, dtype: torch.dtype = torch.float32, eps: float = 1e-7
) -> torch.Tensor:
    """Approximately U Vᵀ of g = U S Vᵀ by quintic Newton-Schulz iterations, computed in ``dtype``.

    g: (m, n) or a batch (k, m, n) of matrices of one shape. Returns the same shape and dtype as g.
    (The singular values come out in roughly [0.5, 1.5] rather than exactly 1, which Muon's
    authors found does not hurt.)
    """
    a, b, c = NS_COEFFICIENTS
    x = g.to(dtype)
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT  # iterate on the wide side: (.., min, max)
    # spectral norm <= Frobenius norm <= 1
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    mm_add = torch.baddbmm if x.dim() == 3 else torch.addmm  # fused multiply-adds, as torch's Muon
    for _ in range(steps):
        gram = x @ x.mT  # (.., min, min)
        x = mm_add(x, mm_add(gram, gram, gram, beta=b, alpha=c), x, beta=a)  # a x + (b G + c G²) x
    if tall:
        x = x.mT
    return x.to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Muon with Nesterov momentum, decoupled weight decay and AdamW-matched update size
    (``torch.optim.Muon(..., adjust_lr_fn="match_rms_adamw")``), Newton-Schulz in ``ns_dtype``.

    State per parameter: ``momentum_buffer``, as in torch's Muon, so a resumed run is exact.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float,
        weight_decay: float = 0.0,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        ns_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(
            params,
            dict(
                lr=lr,
                weight_decay=weight_decay,
                momentum=momentum,
                nesterov=nesterov,
                ns_steps=ns_steps,
            ),
        )
        self.ns_dtype = ns_dtype  # not in the groups: a torch.dtype does not belong in a checkpoint

    # torch's Optimizer.step signature (a closure re-evaluates the loss and returns it)
    @overload
    def step(self, closure: None = None) -> None: ...
    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        assert closure is None, "Muon here takes no closure"
        for group in self.param_groups:
            lr, wd, mu = group["lr"], group["weight_decay"], group["momentum"]
            params = [p for p in group["params"] if p.grad is not None]
            updates = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - mu)
                updates.append(p.grad.lerp(buf, mu) if group["nesterov"] else buf)
            by_shape: dict[torch.Size, list[int]] = defaultdict(list)
            for i, u in enumerate(updates):
                by_shape[u.shape].append(i)
            for shape, idx in by_shape.items():
                ortho = orthogonalise(
                    torch.stack([updates[i] for i in idx]), group["ns_steps"], self.ns_dtype
                )
                scale = lr * 0.2 * math.sqrt(max(shape))  # RMS of AdamW's update (Liu et al., 2025)
                for j, i in enumerate(idx):
                    params[i].mul_(1 - lr * wd)
                    params[i].add_(ortho[j], alpha=-scale)
        return None


class CombinedOptimizer:
    """Several optimizers over disjoint parameters, stepped together. ``param_groups`` lists all
    their groups, so the training loop's learning-rate schedule reaches every one."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        # Read afresh each time: an optimizer's load_state_dict replaces its group dicts.
        return [g for opt in self.optimizers for g in opt.param_groups]

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "optimizers" not in state or len(state["optimizers"]) != len(self.optimizers):
            raise ValueError("the saved optimizer state is not of this combined optimizer")
        for opt, s in zip(self.optimizers, state["optimizers"]):
            opt.load_state_dict(s)


Optimizer = torch.optim.Optimizer | CombinedOptimizer


def _adamw(
    params: list[torch.nn.Parameter], cfg: TrainConfig, device: torch.device
) -> torch.optim.AdamW:
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda"
    )


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> Optimizer:
    """The optimizer ``cfg.optimizer`` names, over the model's trainable parameters
    (see module docstring)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        return _adamw([p for _, p in named], cfg, device)
    # muon (TrainConfig admits no other name)
    hidden = [p for n, p in named if p.dim() == 2 and ".h." in f".{n}"]  # transformer.h.<i>.*
    ids = {id(p) for p in hidden}
    rest = [p for _, p in named if id(p) not in ids]
    # Newton-Schulz in bfloat16 only where bfloat16 is native (and the run did not ask for float32)
    muon = Muon(
        hidden,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        momentum=0.95,
        nesterov=True,
        ns_dtype=resolve_precision(cfg.dtype, device, "Newton-Schulz"),
    )
    return CombinedOptimizer([muon, _adamw(rest, cfg, device)])
