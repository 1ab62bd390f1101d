"""Learning-rate schedules as pure functions of the optimizer step.

`multiplier(step)` is the paper's eta_t: the lr of every group is its base lr times eta_t, and with
`optimizer.decay_mode=paper` the weight decay follows the same eta_t (see runner/optim.py). The values equal
torch.optim.lr_scheduler's (OneCycleLR, CosineAnnealingLR, MultiStepLR, CosineAnnealingWarmRestarts), which the
tests check step by step; we do not drive those classes because they are stateful, set absolute lrs that a
warmup cannot multiply, and cannot be read at an arbitrary step.
Lengths in the config are fractions of the run or epochs; they become steps once, here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from runner.config import Family


def warmup_factor(kind: str, warmup_steps: float, step: int) -> float:
    """Ma & Yarats (arXiv:1910.04209): linear min(1, t/W), or exponential 1 - exp(-2t/W), t = step + 1.

    With W = 2 / (1 - beta2), the exponential form is their omega_t = 1 - exp(-(1 - beta2) t).
    """
    t = step + 1
    if kind == "linear":
        return min(1.0, t / warmup_steps)
    if kind == "exponential":
        return 1.0 - math.exp(-2.0 * t / warmup_steps)
    return 1.0


def anneal(start: float, end: float, pct: float, kind: str) -> float:
    if kind == "cos":
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1.0)
    return start + (end - start) * pct


def one_cycle_phases(s: DictConfig, total: int) -> list[tuple[float, float, float, float, float]]:
    """(end_step, start_lr, end_lr, start_momentum, end_momentum) per phase, lrs relative to the peak,
    exactly as torch.optim.lr_scheduler.OneCycleLR lays them out."""
    start, last = 1.0 / s.div_factor, 1.0 / (s.div_factor * s.final_div_factor)
    hi, lo = s.max_momentum, s.base_momentum
    if s.three_phase:
        return [
            (s.pct_start * total - 1, start, 1.0, hi, lo),
            (2 * s.pct_start * total - 2, 1.0, start, lo, hi),
            (total - 1, start, last, hi, hi),
        ]
    return [(s.pct_start * total - 1, start, 1.0, hi, lo), (total - 1, 1.0, last, lo, hi)]


def one_cycle(s: DictConfig, total: int, step: int) -> tuple[float, float]:
    """(lr multiplier, momentum) of the one-cycle policy at `step`."""
    phases = one_cycle_phases(s, total)
    begin = 0.0
    for i, (end, lr0, lr1, m0, m1) in enumerate(phases):
        if step <= end or i == len(phases) - 1:
            pct = (step - begin) / (end - begin)
            return anneal(lr0, lr1, pct, s.anneal), anneal(m0, m1, pct, s.anneal)
        begin = end
    raise AssertionError("unreachable: the last phase always answers")


def warm_restart_position(step: int, t0: int, t_mult: int) -> tuple[int, int]:
    """(steps into the current cycle, the cycle's length) for SGDR's restarts."""
    length = t0
    while step >= length:
        step -= length
        length *= t_mult
    return step, length


@dataclass
class Schedule:
    """eta_t (and the cycled momentum) for every step of a run of `total_steps` optimizer steps."""

    cfg: DictConfig  # the schedule node
    total_steps: int
    steps_per_epoch: int
    warmup_steps: float
    momentum_is_beta1: bool

    def multiplier(self, step: int) -> float:
        return warmup_factor(self.cfg.warmup, self.warmup_steps, step) * self.main(step)

    def main(self, step: int) -> float:
        s, total = self.cfg, self.total_steps
        if s.name == "constant":
            return 1.0
        if s.name == "step":
            return s.gamma ** sum(step >= round(m * total) for m in s.milestones)
        if s.name in ("cosine", "linear"):
            kind = "cos" if s.name == "cosine" else "linear"
            return anneal(1.0, s.final_frac, step / total, kind)
        if s.name == "one_cycle":
            return one_cycle(s, total, step)[0]
        if s.name == "warm_restarts":
            t0 = max(1, round(s.t0_epochs * self.steps_per_epoch))
            into, length = warm_restart_position(step, t0, s.t_mult)
            return anneal(1.0, s.final_frac, into / length, "cos")
        raise ValueError(f"unknown schedule {s.name!r}")

    def momentum(self, step: int) -> float | None:
        """beta1 (Adam) or SGD momentum at `step`, where the schedule cycles it; else None."""
        if self.cfg.name == "one_cycle" and self.cfg.cycle_momentum:
            return one_cycle(self.cfg, self.total_steps, step)[1]
        return None

    def apply(self, optimizer: torch.optim.Optimizer, step: int, scale: float = 1.0) -> float:
        """Set every group's lr (its base lr times eta_t times the batch's `scale`) and the cycled momentum for
        `step`; returns eta_t. Steps past the end (a recipe whose epochs vary in length) keep the last value."""
        step = min(step, self.total_steps - 1)
        eta, momentum = self.multiplier(step), self.momentum(step)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * eta * scale
            if momentum is not None and self.momentum_is_beta1:
                group["betas"] = (momentum, group["betas"][1])
            elif momentum is not None:
                group["momentum"] = momentum
        return eta


def build_schedule(
    optimizer: torch.optim.Optimizer, cfg: DictConfig, steps_per_epoch: int, epochs: int | None = None
) -> Schedule:
    """The schedule cfg.schedule describes, over `epochs` (default cfg.trainer.epochs: a phase of a run may be
    shorter); records each group's base lr."""
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    warmup_steps = cfg.schedule.warmup_steps
    if warmup_steps is None:  # compose() has checked that the Adam family is set (SGD has no beta2)
        warmup_steps = 2.0 / (1.0 - cfg.optimizer.betas[1])
    return Schedule(
        cfg=cfg.schedule,
        total_steps=(epochs or cfg.trainer.epochs) * steps_per_epoch,
        steps_per_epoch=steps_per_epoch,
        warmup_steps=warmup_steps,
        momentum_is_beta1=cfg.optimizer.family == Family.adam,
    )
