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
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
from omegaconf import DictConfig

from runner import import_frozen
from runner.config import DecayMode, Family, Impl
from runner.recipe import ParamGroup, all_parameters


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


class NTASGD(torch.optim.ASGD):
    """Non-monotonically triggered ASGD (Merity et al. 2017, salesforce/awd-lstm-lm): plain SGD until the
    validation loss has not improved on the best of all but the last `nonmono` checks, then averaged SGD.

    It is torch.optim.ASGD throughout, with lambd = 0 (so its step size is the lr, as SGD's): before the
    trigger t0 is infinite and the average just tracks the weights (mu = 1); at the trigger t0 becomes the
    current step, so the average runs over every step since, as awd-lstm-lm's fresh ASGD(t0=0) does. The
    validation history and t0 live in the parameter groups, so they are saved with the optimizer's state.
    """

    NEVER = math.inf  # t0 before the trigger

    def __init__(self, params, lr: float, weight_decay: float, nonmono: int, **kwargs):
        super().__init__(params, lr=lr, lambd=0.0, t0=self.NEVER, weight_decay=weight_decay, **kwargs)
        for group in self.param_groups:
            group.update(nonmono=nonmono, val_losses=[])

    @property
    def averaging(self) -> bool:
        return self.param_groups[0]["t0"] != self.NEVER

    def steps_taken(self) -> float:
        states = [self.state[p] for g in self.param_groups for p in g["params"] if "step" in self.state[p]]
        return float(states[0]["step"]) if states else 0.0

    def observe(self, val_loss: float) -> None:
        """One validation check: start averaging when it is worse than the best before the last nonmono."""
        group = self.param_groups[0]
        history, nonmono = group["val_losses"], group["nonmono"]
        if not self.averaging and len(history) > nonmono and val_loss > min(history[:-nonmono]):
            for g in self.param_groups:
                g["t0"] = self.steps_taken()
        history.append(val_loss)

    @contextmanager
    def averaged(self) -> Iterator[None]:
        """The averaged weights in place of the current ones (for evaluation), then the current ones back."""
        params = [p for g in self.param_groups for p in g["params"] if "ax" in self.state[p]]
        swapped = [p.data.clone() for p in params]
        for p in params:
            p.data.copy_(self.state[p]["ax"])
        try:
            yield
        finally:
            for p, current in zip(params, swapped, strict=True):
                p.data.copy_(current)


def observe(optimizer: torch.optim.Optimizer, row: dict) -> dict:
    """Hand an evaluation to an optimizer that reacts to validation (NT-ASGD); others ignore it. Returns what
    the row records of it: NT-ASGD's `averaging` (1 once its average runs), so a study can tell NT-ASGD that
    triggered from plain SGD."""
    if not isinstance(optimizer, NTASGD):
        return {}
    if "val_loss" in row:
        optimizer.observe(row["val_loss"])
    return {"averaging": float(optimizer.averaging)}


def weight_norm(model: torch.nn.Module) -> float:
    """The L2 norm of every trainable parameter together: what weight decay shrinks (a study's check that decay
    acts compares it across weight decays)."""
    with torch.no_grad():
        squares = [p.detach().float().pow(2).sum() for p in model.parameters() if p.requires_grad]
        return float(torch.stack(squares).sum().sqrt()) if squares else 0.0


def evaluation_weights(optimizer: torch.optim.Optimizer):
    """The weights to evaluate: NT-ASGD's average once it averages, else the current ones."""
    return optimizer.averaged() if isinstance(optimizer, NTASGD) and optimizer.averaging else nullcontext()


def weight_average(model: torch.nn.Module, decay: float | None):
    """torch's exponential moving average of the weights and BatchNorm statistics (trainer.ema), or None.
    Updated after every optimizer step; evaluation reads it, training never does."""
    if decay is None:
        return None
    return torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(decay), use_buffers=True
    )


def split_decay(group: ParamGroup, weight_decay: float, decay_norm_and_bias: bool, lr: float) -> list[dict]:
    """torch param groups of one recipe group: decayed weights, then biases and norm weights (any parameter
    of 1 dimension or fewer) and everything of a group that does not decay."""
    decay, no_decay = [], []
    for param in group.params:
        if param.requires_grad:
            decays = group.decay and (decay_norm_and_bias or param.ndim > 1)
            (decay if decays else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "lr": lr, "name": group.name},
        {"params": no_decay, "weight_decay": 0.0, "lr": lr, "name": f"{group.name}/no_decay"},
    ]
    return [g for g in groups if g["params"]]


def cycle_epochs(cfg: DictConfig) -> float:
    """T in the normalized decay: the run's epochs, or for warm restarts (AdamWR) the first cycle's, T_0; the
    schedule rescales the coefficient to each later cycle's T_i (runner/schedule.py, decay_multiplier)."""
    return cfg.schedule.t0_epochs if cfg.schedule.name == "warm_restarts" else cfg.trainer.epochs


def decay_key(optimizer: torch.optim.Optimizer) -> str:
    """The param-group key that holds the decay coefficient: SGDW keeps its own (torch's is 0 there)."""
    return "decoupled_weight_decay" if isinstance(optimizer, SGDW) else "weight_decay"


def torch_weight_decay(cfg: DictConfig, train_size: int | None = None, lr_mult: float = 1.0) -> float:
    """The coefficient torch.optim receives, from the configured value and its convention; in paper mode it
    depends on the group's own lr (optimizer.lr * lr_mult), so that every group shrinks by eta_t * lambda."""
    opt = cfg.optimizer
    wd = opt.weight_decay
    if opt.normalized_wd:  # lambda = lambda_norm * sqrt(b / (B * T)), Loshchilov & Hutter sec. 3
        if train_size is None:
            raise ValueError("normalized_wd needs the number of training examples (train_size)")
        wd *= math.sqrt(cfg.trainer.batch_size / (train_size * cycle_epochs(cfg)))
    if opt.decoupled and opt.decay_mode == DecayMode.paper:
        wd /= opt.lr * lr_mult
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
    model: torch.nn.Module,
    cfg: DictConfig,
    train_size: int | None = None,
    groups: list[ParamGroup] | None = None,
) -> torch.optim.Optimizer:
    """The optimizer that cfg.optimizer describes, over the recipe's parameter groups (default: all of the
    model's parameters), each split into decayed weights and undecayed biases and norm weights.

    `train_size` (examples per epoch) is needed only for `optimizer.normalized_wd`.
    """
    import_frozen("torch._dynamo")  # torch.optim imports it when it builds its first optimizer (a second)
    opt = cfg.optimizer
    torch_groups = [
        g
        for group in groups or all_parameters(model)
        for g in split_decay(
            group,
            torch_weight_decay(cfg, train_size, group.lr_mult),
            opt.decay_norm_and_bias,
            opt.lr * group.lr_mult,
        )
    ]
    kwargs = implementation(opt.impl)
    if opt.family == Family.adam:
        return torch.optim.Adam(
            torch_groups,
            lr=opt.lr,
            betas=tuple(opt.betas),
            eps=opt.eps,
            amsgrad=opt.amsgrad,
            decoupled_weight_decay=opt.decoupled,
            **kwargs,
        )
    if opt.family == Family.nt_asgd:  # torch.optim.ASGD has no fused kernel
        foreach = Impl(opt.impl) is not Impl.for_loop
        return NTASGD(torch_groups, lr=opt.lr, weight_decay=0.0, nonmono=opt.nonmono, foreach=foreach)
    sgd = SGDW if opt.decoupled else torch.optim.SGD
    return sgd(torch_groups, lr=opt.lr, momentum=opt.momentum, nesterov=opt.nesterov, **kwargs)
