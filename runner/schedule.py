"""Learning-rate schedules as pure functions of the optimizer step.

`multiplier(step)` is the paper's eta_t: the lr of every group is its base lr times eta_t, and with
`optimizer.decay_mode=paper` the weight decay follows the same eta_t (see runner/optim.py). The values equal
torch.optim.lr_scheduler's (OneCycleLR, CosineAnnealingLR, MultiStepLR, CosineAnnealingWarmRestarts) and, for
`linear`, Hugging Face's get_linear_schedule_with_warmup, which the tests check step by step; we do not drive
those classes because they are stateful, set absolute lrs that a warmup cannot multiply, and cannot be read at
an arbitrary step. `decay_multiplier(step)` is the same kind of function for the weight decay coefficient
(normalized decay under warm restarts follows each cycle's length).
Lengths in the config are fractions of the run or epochs; they become steps once, here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from runner.config import Family, Warmup
from runner.optim import decay_key


def warmup_factor(kind: str, warmup_steps: float, t: int) -> float:
    """Ma & Yarats (arXiv:1910.04209): linear min(1, t/W), or exponential 1 - exp(-2t/W), at update count t.

    With W = 2 / (1 - beta2), the exponential form is their omega_t = 1 - exp(-(1 - beta2) t).
    """
    if kind == "linear":
        return min(1.0, t / warmup_steps)
    if kind == "exponential":
        return 1.0 - math.exp(-2.0 * t / warmup_steps)
    return 1.0


def anneal(start: float, end: float, pct: float, kind: str) -> float:
    if kind == "cos":
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1.0)
    return start + (end - start) * pct


def linear_decay(final_frac: float, decay_start: float, total: int, step: int) -> float:
    """1 until `decay_start`, then linearly to final_frac at `total`: with final_frac = 0 and decay_start = W this
    is Hugging Face's get_linear_schedule_with_warmup after its warmup, max(0, (T - s) / max(1, T - W))."""
    remaining = max(0.0, (total - step) / max(1, total - decay_start))
    return final_frac + (1.0 - final_frac) * min(1.0, remaining)


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
    """eta_t, the cycled momentum and the decay coefficient for every step of a run of `total_steps` steps."""

    cfg: DictConfig  # the schedule node
    total_steps: int
    steps_per_epoch: int
    warmup_steps: float
    momentum_is_beta1: bool
    normalized_wd: bool  # optimizer.normalized_wd: the decay coefficient follows the warm restarts' cycles

    def multiplier(self, step: int) -> float:
        # The warmup multiplies the schedule. Ma & Yarats count the first update as t = 1; `linear` is Hugging
        # Face's BERT schedule and counts as its LambdaLR does, t = step, so its first update has lr 0 exactly
        # as there (and its warmup factor reaches 1 at step W, where its decay starts).
        t = step if self.cfg.name == "linear" else step + 1
        return warmup_factor(self.cfg.warmup, self.warmup_steps, t) * self.main(step)

    def main(self, step: int) -> float:
        s, total = self.cfg, self.total_steps
        if s.name == "constant":
            return 1.0
        if s.name == "step":
            return s.gamma ** sum(step >= round(m * total) for m in s.milestones)
        if s.name == "cosine":  # over the whole run: a warmup multiplies it (its peak stays below 1)
            return anneal(1.0, s.final_frac, step / total, "cos")
        if s.name == "linear":  # Hugging Face's: the decay starts where the warmup ends
            decay_start = 0.0 if s.warmup == Warmup.none else self.warmup_steps
            return linear_decay(s.final_frac, decay_start, total, step)
        if s.name == "one_cycle":
            return one_cycle(s, total, step)[0]
        if s.name == "warm_restarts":
            into, length = warm_restart_position(step, self.first_cycle_steps(), s.t_mult)
            return anneal(1.0, s.final_frac, into / length, "cos")
        raise ValueError(f"unknown schedule {s.name!r}")

    def first_cycle_steps(self) -> int:
        return max(1, round(self.cfg.t0_epochs * self.steps_per_epoch))

    def decay_multiplier(self, step: int) -> float:
        """The weight decay coefficient at `step` relative to the one build_optimizer set. Normalized decay
        (lambda = lambda_norm sqrt(b / (B T))) under warm restarts uses the current cycle's T_i = T_0 t_mult^i
        (Loshchilov & Hutter, App. B; fastai 0.7's WeightDecaySchedule), and build_optimizer set it for T_0,
        so the factor is sqrt(T_0 / T_i); every other case keeps the coefficient."""
        if not (self.normalized_wd and self.cfg.name == "warm_restarts"):
            return 1.0
        t0 = self.first_cycle_steps()
        return math.sqrt(t0 / warm_restart_position(step, t0, self.cfg.t_mult)[1])

    def momentum(self, step: int) -> float | None:
        """beta1 (Adam) or SGD momentum at `step`, where the schedule cycles it; else None."""
        if self.cfg.name == "one_cycle" and self.cfg.cycle_momentum:
            return one_cycle(self.cfg, self.total_steps, step)[1]
        return None

    def apply(self, optimizer: torch.optim.Optimizer, step: int, scale: float = 1.0) -> float:
        """Set every group's lr (its base lr times eta_t times the batch's `scale`), its weight decay (its base
        coefficient times decay_multiplier) and the cycled momentum for `step`; returns eta_t. Steps past the end
        (a recipe whose epochs vary in length) keep the last value."""
        step = min(step, self.total_steps - 1)
        eta, momentum, decay = self.multiplier(step), self.momentum(step), self.decay_multiplier(step)
        key = decay_key(optimizer)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * eta * scale
            group[key] = group["initial_weight_decay"] * decay
            if momentum is not None and self.momentum_is_beta1:
                group["betas"] = (momentum, group["betas"][1])
            elif momentum is not None:
                group["momentum"] = momentum
        return eta


def build_schedule(
    optimizer: torch.optim.Optimizer, cfg: DictConfig, steps_per_epoch: int, epochs: int | None = None
) -> Schedule:
    """The schedule cfg.schedule describes, over `epochs` (default cfg.trainer.epochs: a phase of a run may be
    shorter); records each group's base lr and base weight decay."""
    key = decay_key(optimizer)
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
        group.setdefault("initial_weight_decay", group[key])
    warmup_steps = cfg.schedule.warmup_steps
    if warmup_steps is None:  # compose() has checked that the Adam family is set (SGD has no beta2)
        warmup_steps = 2.0 / (1.0 - cfg.optimizer.betas[1])
    return Schedule(
        cfg=cfg.schedule,
        total_steps=(epochs or cfg.trainer.epochs) * steps_per_epoch,
        steps_per_epoch=steps_per_epoch,
        warmup_steps=warmup_steps,
        momentum_is_beta1=cfg.optimizer.family == Family.adam,
        normalized_wd=cfg.optimizer.normalized_wd,
    )
