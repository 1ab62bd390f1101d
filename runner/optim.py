"""Optimizers faithful to Loshchilov & Hutter (arXiv:1711.05101), built on torch.optim's own steps.

Adam-L2 and AdamW are one class, torch.optim.Adam, differing in exactly one switch (`decoupled_weight_decay`),
with identical parameter groups; SGD and SGDW likewise (`decoupled` picks the class below).

Weight-decay conventions (PAPERS.md): torch shrinks theta by lr * wd per step, the paper by eta_t * lambda,
where eta_t is the schedule multiplier and lr = alpha * eta_t. With `decay_mode=paper` we hand torch
wd = lambda / alpha, so torch's lr * wd equals the paper's eta_t * lambda and the best lambda stays put when
alpha is tuned. For L2 (decay in the gradient) both conventions add wd * theta to the gradient: they coincide.
"""

from __future__ import annotations

import math

import torch
from omegaconf import DictConfig

from runner.config import DecayMode, Family, Impl


class SGDW(torch.optim.SGD):
    """SGD with momentum and decoupled weight decay (Loshchilov & Hutter, Alg. 1).

    torch.optim has no SGDW, so this shrinks theta by lr * wd and then takes torch's own SGD step without L2,
    the way torch.optim.AdamW decays before its step. The paper folds the lr into the momentum buffer
    (m = beta m + eta alpha g); torch applies it after, which is the same update while the lr is constant.
    """

    def add_param_group(self, param_group: dict) -> None:
        group = dict(param_group)
        group["decoupled_weight_decay"] = group.get("weight_decay", self.defaults["weight_decay"])
        group["weight_decay"] = 0.0
        super().add_param_group(group)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params and group["decoupled_weight_decay"]:
                torch._foreach_mul_(params, 1.0 - group["lr"] * group["decoupled_weight_decay"])
        super().step()
        return loss


def param_groups(model: torch.nn.Module, weight_decay: float, decay_norm_and_bias: bool) -> list[dict]:
    """Two groups: decayed weights, and biases and norm weights (any parameter of 1 dimension or fewer)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if decay_norm_and_bias or param.ndim > 1 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


def cycle_epochs(cfg: DictConfig) -> float:
    """T in the normalized decay: the run's epochs, or the first cycle's for warm restarts (AdamWR)."""
    return cfg.schedule.t0_epochs if cfg.schedule.name == "warm_restarts" else cfg.trainer.epochs


def torch_weight_decay(cfg: DictConfig, train_size: int | None = None) -> float:
    """The coefficient torch.optim receives, from the configured value and its convention."""
    opt = cfg.optimizer
    wd = opt.weight_decay
    if opt.normalized_wd:  # lambda = lambda_norm * sqrt(b / (B * T)), Loshchilov & Hutter sec. 3
        if train_size is None:
            raise ValueError("normalized_wd needs the number of training examples (train_size)")
        wd *= math.sqrt(cfg.trainer.batch_size / (train_size * cycle_epochs(cfg)))
    if opt.decoupled and opt.decay_mode == DecayMode.paper:
        wd /= opt.lr
    return wd


def implementation(impl: Impl) -> dict:
    """torch.optim's step implementations: fused kernels, foreach (multi-tensor) ops, or a per-tensor loop."""
    return {
        Impl.auto: {"fused": True},  # fastest measured on CPU (make bench)
        Impl.fused: {"fused": True},
        Impl.foreach: {"foreach": True},
        Impl.for_loop: {"foreach": False},
    }[Impl(impl)]


def build_optimizer(
    model: torch.nn.Module, cfg: DictConfig, train_size: int | None = None
) -> torch.optim.Optimizer:
    """The optimizer that cfg.optimizer describes, over parameter groups of `model`.

    `train_size` (examples per epoch) is needed only for `optimizer.normalized_wd`.
    """
    opt = cfg.optimizer
    groups = param_groups(model, torch_weight_decay(cfg, train_size), opt.decay_norm_and_bias)
    kwargs = implementation(opt.impl)
    if opt.family == Family.adam:
        return torch.optim.Adam(
            groups,
            lr=opt.lr,
            betas=tuple(opt.betas),
            eps=opt.eps,
            amsgrad=opt.amsgrad,
            decoupled_weight_decay=opt.decoupled,
            **kwargs,
        )
    sgd = SGDW if opt.decoupled else torch.optim.SGD
    return sgd(groups, lr=opt.lr, momentum=opt.momentum, nesterov=opt.nesterov, **kwargs)
