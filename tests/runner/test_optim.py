"""Optimizer steps against closed-form numbers and a second, plain implementation of the paper's algorithms."""

from __future__ import annotations

import math

import pytest
import torch

from runner import optim as optim_module
from runner.config import compose
from runner.optim import SGDW, build_optimizer, split_decay, torch_weight_decay
from runner.recipe import ParamGroup
from runner.schedule import build_schedule

IMPLS = ["fused", "foreach", "for_loop"]
GRADS = [torch.tensor([0.5, -1.0, 2.0]), torch.tensor([-0.3, 0.2, 1.0]), torch.tensor([0.1, 0.1, -4.0])]
THETA0 = torch.tensor([1.0, -2.0, 0.5])


class Single(torch.nn.Module):
    """One weight matrix, so every parameter lands in the decayed group."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(THETA0.clone()[None, :].repeat(2, 1))


def run_steps(cfg, steps: int = 3) -> torch.Tensor:
    model = Single()
    optimizer = build_optimizer(model, cfg)
    for grad in GRADS[:steps]:
        model.weight.grad = grad[None, :].repeat(2, 1)
        optimizer.step()
    return model.weight.detach()[0].double()


def plain_adam(lr, betas, eps, wd, decoupled, amsgrad=False, steps=3, eta=1.0) -> torch.Tensor:
    """Loshchilov & Hutter, Algorithm 2, in float64: L2 in the gradient, or decay decoupled (torch's lr * wd)."""
    theta = THETA0.double().clone()
    m = torch.zeros(3, dtype=torch.float64)
    v = torch.zeros(3, dtype=torch.float64)
    v_max = torch.zeros(3, dtype=torch.float64)
    for t, grad in enumerate(GRADS[:steps], start=1):
        g = grad.double() + (0 if decoupled else wd * theta)
        if decoupled:
            theta = theta * (1 - lr * eta * wd)
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        v_max = torch.maximum(v_max, v)
        v_hat = (v_max if amsgrad else v) / (1 - betas[1] ** t)
        theta = theta - lr * eta * (m / (1 - betas[0] ** t)) / (v_hat.sqrt() + eps)
    return theta


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name,decoupled", [("adam_l2", False), ("adamw", True)])
def test_adam_family_matches_the_paper(name, decoupled, impl):
    cfg = compose([f"optimizer={name}", f"optimizer.impl={impl}", "optimizer.weight_decay=0.2"])
    expected = plain_adam(3e-3, (0.95, 0.99), 1e-8, 0.2, decoupled)
    torch.testing.assert_close(run_steps(cfg), expected, rtol=1e-6, atol=1e-7)


def test_amsgrad_keeps_the_running_max_of_v():
    """beta2 = 0.5 makes v shrink when the gradient does, which is where AMSGrad's max differs from Adam."""
    cfg = compose(["optimizer=amsgrad", "optimizer.weight_decay=0.2", "optimizer.betas=[0.9,0.5]"])
    expected = plain_adam(3e-3, (0.9, 0.5), 1e-8, 0.2, decoupled=True, amsgrad=True)
    torch.testing.assert_close(run_steps(cfg), expected, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(expected, plain_adam(3e-3, (0.9, 0.5), 1e-8, 0.2, decoupled=True), rtol=1e-6)


def test_first_adamw_step_in_closed_form():
    """Step 1: m_hat = g, v_hat = g^2, so theta1 = theta0 (1 - lr wd) - lr g / (|g| + eps)."""
    cfg = compose(["optimizer=adamw", "optimizer.weight_decay=0.2"])
    g = GRADS[0].double()
    expected = THETA0.double() * (1 - 3e-3 * 0.2) - 3e-3 * g / (g.abs() + 1e-8)
    torch.testing.assert_close(run_steps(cfg, steps=1), expected, rtol=1e-6, atol=1e-7)


def test_adam_l2_and_adamw_differ_in_one_switch_with_identical_groups():
    l2, w = compose(["optimizer=adam_l2", "optimizer.weight_decay=0.1"]), compose(["optimizer=adamw"])
    differing = {k for k in l2.optimizer if l2.optimizer[k] != w.optimizer[k]}
    assert differing == {"decoupled"}
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    groups_l2, groups_w = build_optimizer(model, l2).param_groups, build_optimizer(model, w).param_groups
    for a, b in zip(groups_l2, groups_w, strict=True):
        assert [id(p) for p in a["params"]] == [id(p) for p in b["params"]]
        assert a["weight_decay"] == b["weight_decay"]
    assert [g["decoupled_weight_decay"] for g in groups_l2] == [False, False]
    assert [g["decoupled_weight_decay"] for g in groups_w] == [True, True]


def test_l2_divides_decay_by_sqrt_v_but_adamw_does_not():
    """With zero gradient, Adam-L2's first step moves every weight by about lr (the sign of wd*theta, normalized),
    while AdamW shrinks it by exactly lr * wd * theta."""
    theta = torch.tensor([[10.0, 0.1]])
    for name, expected in (
        ("adam_l2", theta - 3e-3 * torch.sign(theta)),
        ("adamw", theta * (1 - 3e-3 * 0.1)),
    ):
        model = torch.nn.Linear(2, 1, bias=False)
        model.weight.data = theta.clone()
        optimizer = build_optimizer(model, compose([f"optimizer={name}", "optimizer.weight_decay=0.1"]))
        model.weight.grad = torch.zeros_like(theta)
        optimizer.step()
        torch.testing.assert_close(model.weight.data, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["adamw", "sgdw"])
def test_paper_decay_mode_makes_decay_independent_of_the_base_lr(name):
    """decay_mode=paper: one step with zero gradient shrinks theta by eta_t * lambda whatever alpha is."""
    shrunk = {}
    for mode in ("paper", "torch"):
        for lr in (1e-3, 1e-1):
            model = Single()
            cfg = compose([f"optimizer={name}", f"optimizer.lr={lr}", "optimizer.weight_decay=0.05",
                           f"optimizer.decay_mode={mode}"])  # fmt: skip
            optimizer = build_optimizer(model, cfg)
            eta = 0.5  # a schedule multiplier: lr_t = alpha * eta
            optimizer.param_groups[0]["lr"] = lr * eta
            model.weight.grad = torch.zeros_like(model.weight)
            optimizer.step()
            shrunk[mode, lr] = (model.weight.detach()[0] / THETA0).mean().item()
    assert shrunk["paper", 1e-3] == pytest.approx(1 - 0.5 * 0.05, rel=1e-6)
    assert shrunk["paper", 1e-1] == pytest.approx(1 - 0.5 * 0.05, rel=1e-6)
    assert shrunk["torch", 1e-3] == pytest.approx(1 - 1e-3 * 0.5 * 0.05, rel=1e-6)
    assert shrunk["torch", 1e-1] == pytest.approx(1 - 1e-1 * 0.5 * 0.05, rel=1e-6)


def plain_sgd(lr, momentum, wd, decoupled, steps=3) -> torch.Tensor:
    """Loshchilov & Hutter, Algorithm 1 at constant eta: m = mu m + lr g; theta -= m (+ lr wd theta if decoupled)."""
    theta = THETA0.double().clone()
    m = torch.zeros(3, dtype=torch.float64)
    for grad in GRADS[:steps]:
        g = grad.double() + (0 if decoupled else wd * theta)
        m = momentum * m + lr * g
        theta = theta - m - (lr * wd * theta if decoupled else 0)
    return theta


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name,decoupled", [("sgd", False), ("sgdw", True)])
def test_sgd_family_matches_the_paper(name, decoupled, impl):
    cfg = compose([f"optimizer={name}", f"optimizer.impl={impl}", "optimizer.weight_decay=0.01"])
    expected = plain_sgd(0.1, 0.9, 0.01, decoupled)
    torch.testing.assert_close(run_steps(cfg), expected, rtol=1e-6, atol=1e-7)


def test_sgdw_state_round_trips_through_state_dict():
    model = Single()
    optimizer = build_optimizer(model, compose(["optimizer=sgdw", "optimizer.weight_decay=0.01"]))
    assert isinstance(optimizer, SGDW)
    model.weight.grad = torch.ones_like(model.weight)
    optimizer.step()
    clone = build_optimizer(Single(), compose(["optimizer=sgdw", "optimizer.weight_decay=0.5"]))
    clone.load_state_dict(optimizer.state_dict())
    assert clone.param_groups[0]["decoupled_weight_decay"] == 0.01
    assert clone.param_groups[0]["weight_decay"] == 0.0


def test_normalized_weight_decay_follows_the_formula():
    """lambda = lambda_norm * sqrt(b / (B T)) (sec. 3); for warm restarts the optimizer starts with the first
    cycle's T_0 (the schedule moves it to each later cycle's T_i: the next test)."""
    cfg = compose(["optimizer.normalized_wd=true", "optimizer.weight_decay=0.05", "trainer.batch_size=128",
                   "trainer.epochs=30"])  # fmt: skip
    assert torch_weight_decay(cfg, train_size=50_000) == pytest.approx(0.05 * math.sqrt(128 / (50_000 * 30)))
    cfg = compose(["optimizer.normalized_wd=true", "optimizer.weight_decay=0.05", "schedule=warm_restarts",
                   "schedule.t0_epochs=10", "optimizer.decay_mode=paper", "optimizer.lr=1e-3"])  # fmt: skip
    expected = 0.05 * math.sqrt(cfg.trainer.batch_size / (50_000 * 10)) / 1e-3
    assert torch_weight_decay(cfg, train_size=50_000) == pytest.approx(expected)


@pytest.mark.parametrize("name,key", [("adamw", "weight_decay"), ("sgdw", "decoupled_weight_decay")])
def test_normalized_decay_under_warm_restarts_uses_each_cycles_length(name, key):
    """App. B: lambda_i = lambda_norm * sqrt(b / (B T_i)), T_i = T_0 t_mult^i epochs, at every step of cycle i;
    here T_0 = 1 epoch of 10 steps, t_mult = 2: cycles of 1, 2 and 4 epochs. A resume keeps the base value."""
    cfg = compose([f"optimizer={name}", "optimizer.normalized_wd=true", "optimizer.weight_decay=0.05",
                   "optimizer.decay_mode=torch", "trainer.batch_size=128", "trainer.epochs=7",
                   "schedule=warm_restarts", "schedule.t0_epochs=1", "schedule.t_mult=2"])  # fmt: skip
    optimizer = build_optimizer(Single(), cfg, train_size=50_000)
    schedule = build_schedule(optimizer, cfg, steps_per_epoch=10)
    for step, cycle_epochs in ((0, 1), (9, 1), (10, 2), (29, 2), (30, 4), (69, 4)):
        schedule.apply(optimizer, step)
        expected = 0.05 * math.sqrt(128 / (50_000 * cycle_epochs))
        assert optimizer.param_groups[0][key] == pytest.approx(expected, rel=1e-12), step
    resumed = build_optimizer(Single(), cfg, train_size=50_000)
    resumed.load_state_dict(optimizer.state_dict())
    build_schedule(resumed, cfg, steps_per_epoch=10).apply(resumed, 15)
    assert resumed.param_groups[0][key] == pytest.approx(0.05 * math.sqrt(128 / (50_000 * 2)), rel=1e-12)
    plain = compose([f"optimizer={name}", "optimizer.weight_decay=0.05", "optimizer.decay_mode=torch",
                     "schedule=warm_restarts", "schedule.t0_epochs=1"])  # fmt: skip
    optimizer = build_optimizer(Single(), plain)
    schedule = build_schedule(optimizer, plain, steps_per_epoch=10)
    for step in (0, 10, 30):
        schedule.apply(optimizer, step)
        assert optimizer.param_groups[0][key] == 0.05  # without normalization the coefficient stays put


def test_biases_and_norm_weights_get_no_decay_unless_asked():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2))
    everything = ParamGroup(list(model.parameters()))
    groups = split_decay(everything, 0.1, decay_norm_and_bias=False, lr=1e-3)
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert {p.ndim for p in groups[0]["params"]} == {2, 4}
    assert len(groups[1]["params"]) == 4  # conv bias, BN weight and bias, linear bias
    assert len(split_decay(everything, 0.1, decay_norm_and_bias=True, lr=1e-3)) == 1


# ------------------------------------------------------------------------------------------------ NT-ASGD
def nt_asgd(nonmono: int = 2):
    model = Single()
    optimizer = build_optimizer(model, compose(["optimizer=asgd", f"optimizer.nonmono={nonmono}",
                                               "optimizer.weight_decay=0", "schedule=constant"]))  # fmt: skip
    return model, optimizer


def test_nt_asgd_is_plain_sgd_until_validation_stops_improving():
    """Merity et al.: switch when the loss is worse than the best of all but the last `nonmono` checks."""
    model, optimizer = nt_asgd(nonmono=2)
    theta = model.weight.detach().clone()
    for grad in GRADS:
        model.weight.grad = grad[None, :].repeat(2, 1)
        optimizer.step()
        theta -= 30.0 * grad  # SGD at lr 30, no momentum
    torch.testing.assert_close(model.weight.detach(), theta)
    for loss in (5.0, 4.0, 3.0, 3.5, 3.2):  # the best before the last two is 4.0 or 3.0: no switch yet
        optimizer.observe(loss)
        assert not optimizer.averaging
    optimizer.observe(4.5)  # worse than min(5, 4, 3) = 3: averaging starts now
    assert optimizer.averaging and optimizer.param_groups[0]["t0"] == len(GRADS)


def test_nt_asgd_averages_as_awd_lstm_lms_fresh_asgd_and_evaluates_with_the_average():
    """awd-lstm-lm replaces SGD by torch.optim.ASGD(t0=0, lambd=0) at the switch: ours must end with the
    same weights and the same average (torch's ASGD starts averaging one step after it is created)."""
    model, optimizer = nt_asgd(nonmono=1)
    model.weight.grad = torch.ones_like(model.weight)
    optimizer.step()  # before the switch: plain SGD
    for loss in (2.0, 1.0, 3.0):
        optimizer.observe(loss)
    assert optimizer.averaging
    reference = torch.nn.Parameter(model.weight.detach().clone())
    fresh = torch.optim.ASGD([reference], lr=30.0, t0=0, lambd=0.0, weight_decay=0.0)
    for grad in GRADS:
        for param in (model.weight, reference):
            param.grad = grad[None, :].repeat(2, 1) * 0.01
        optimizer.step()
        fresh.step()
    torch.testing.assert_close(model.weight.detach(), reference.detach())
    current = model.weight.detach().clone()
    with optim_module.evaluation_weights(optimizer):
        torch.testing.assert_close(model.weight.detach(), fresh.state[reference]["ax"])
        assert not torch.equal(model.weight.detach(), current)
    torch.testing.assert_close(model.weight.detach(), current)  # the current weights back after evaluation


def test_nt_asgd_state_round_trips_through_state_dict():
    model, optimizer = nt_asgd(nonmono=1)
    model.weight.grad = torch.ones_like(model.weight)
    optimizer.step()
    for loss in (2.0, 1.0, 3.0):
        optimizer.observe(loss)
    clone_model, clone = nt_asgd(nonmono=1)
    clone.load_state_dict(optimizer.state_dict())
    assert clone.averaging and clone.param_groups[0]["val_losses"] == [2.0, 1.0, 3.0]
