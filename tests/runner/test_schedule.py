"""Schedule values against torch.optim.lr_scheduler (a second implementation) and the papers' formulas."""

from __future__ import annotations

import math

import pytest
import torch

from runner.config import compose
from runner.optim import build_optimizer
from runner.schedule import build_schedule

STEPS_PER_EPOCH = 10


def ours(overrides: list[str], epochs: int = 10):
    cfg = compose([f"trainer.epochs={epochs}", *overrides])
    optimizer = build_optimizer(torch.nn.Linear(2, 2), cfg)
    return cfg, optimizer, build_schedule(optimizer, cfg, STEPS_PER_EPOCH)


def torch_values(make_scheduler, steps: int, lr: float = 1.0, adam: bool = True) -> list[tuple[float, float]]:
    """(lr, momentum) that a torch scheduler sets before each of `steps` optimizer steps."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([param], lr=lr, betas=(0.95, 0.99)) if adam else torch.optim.SGD([param], lr, 0.9)
    scheduler = make_scheduler(opt)
    values = []
    for _ in range(steps):
        group = opt.param_groups[0]
        values.append((group["lr"], group["betas"][0] if adam else group["momentum"]))
        opt.step()
        scheduler.step()
    return values


@pytest.mark.parametrize("three_phase,anneal", [(True, "linear"), (False, "cos")])
def test_one_cycle_equals_torch_one_cycle_lr(three_phase, anneal):
    cfg, _, schedule = ours(
        ["schedule=one_cycle", f"schedule.three_phase={three_phase}", f"schedule.anneal={anneal}"]
    )
    s = cfg.schedule
    expected = torch_values(
        lambda opt: torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=1.0, total_steps=100, pct_start=s.pct_start, anneal_strategy=anneal,
            div_factor=s.div_factor, final_div_factor=s.final_div_factor, three_phase=three_phase,
            base_momentum=s.base_momentum, max_momentum=s.max_momentum,
        ),
        100,
    )  # fmt: skip
    for step, (lr, momentum) in enumerate(expected):
        assert schedule.multiplier(step) == pytest.approx(lr, abs=1e-12)
        assert schedule.momentum(step) == pytest.approx(momentum, abs=1e-12)


def test_one_cycle_is_the_fast_ai_shape():
    """lr/10 -> lr -> lr/10 linearly, the last 7.5% annealing to lr/1000; beta1 0.95 -> 0.85 -> 0.95."""
    _, _, schedule = ours(["schedule=one_cycle"], epochs=40)  # 400 steps
    assert schedule.multiplier(0) == pytest.approx(0.1)
    peak = max(range(400), key=schedule.multiplier)
    assert schedule.multiplier(peak) == pytest.approx(1.0, abs=1e-2)
    assert schedule.momentum(peak) == pytest.approx(0.85, abs=1e-3)
    assert schedule.multiplier(round(0.925 * 400) - 2) == pytest.approx(0.1, abs=2e-3)
    assert schedule.multiplier(399) == pytest.approx(1e-3)


def test_cosine_equals_torch_cosine_annealing():
    _, _, schedule = ours(["schedule=cosine", "schedule.final_frac=0.01"])
    expected = torch_values(
        lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=100, eta_min=0.01), 100
    )
    for step, (lr, _) in enumerate(expected):
        assert schedule.multiplier(step) == pytest.approx(lr, abs=1e-9)


def test_step_equals_torch_multistep():
    _, _, schedule = ours(["schedule=step", "schedule.milestones=[0.5,0.75]", "schedule.gamma=0.1"])
    expected = torch_values(lambda opt: torch.optim.lr_scheduler.MultiStepLR(opt, [50, 75], gamma=0.1), 100)
    for step, (lr, _) in enumerate(expected):
        assert schedule.multiplier(step) == pytest.approx(lr, rel=1e-9)


def test_warm_restarts_equal_torch_cosine_annealing_warm_restarts():
    _, _, schedule = ours(
        ["schedule=warm_restarts", "schedule.t0_epochs=1.5", "schedule.t_mult=2"], epochs=20
    )
    expected = torch_values(
        lambda opt: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=15, T_mult=2), 200
    )
    for step, (lr, _) in enumerate(expected):
        assert schedule.multiplier(step) == pytest.approx(lr, abs=1e-9)
    assert (
        schedule.multiplier(15) == 1.0 and schedule.multiplier(45) == 1.0
    )  # restarts at T_0 and T_0 + 2 T_0


def test_linear_decay_and_constant_follow_their_formulas():
    _, _, linear = ours(["schedule=linear", "schedule.warmup=none", "schedule.final_frac=0.0"])
    assert [linear.multiplier(k) for k in (0, 25, 50, 99)] == pytest.approx([1.0, 0.75, 0.5, 0.01])
    _, _, constant = ours(["schedule=constant"])
    assert {constant.multiplier(k) for k in range(100)} == {1.0}


def hugging_face_linear(step: int, warmup: int, total: int) -> float:
    """transformers.get_linear_schedule_with_warmup's lr_lambda, written out (its LambdaLR reads it at step 0
    for the first update)."""
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


def test_linear_with_warmup_is_hugging_faces_bert_schedule():
    """The first update at lr 0, the peak at step W, then the decay from there: HF's values at every step."""
    _, _, schedule = ours(["schedule=linear", "schedule.warmup_steps=10"])  # 100 steps, linear warmup
    ramp = [schedule.multiplier(step) for step in range(100)]
    assert ramp[0] == 0.0 and ramp[10] == 1.0 and ramp[55] == pytest.approx(0.5)
    assert ramp == pytest.approx([hugging_face_linear(step, 10, 100) for step in range(100)], abs=1e-12)
    from transformers import get_linear_schedule_with_warmup

    expected = torch_values(lambda opt: get_linear_schedule_with_warmup(opt, 10, 100), 100, adam=False)
    assert ramp == pytest.approx([lr for lr, _ in expected], abs=1e-12)


def test_untuned_warmups_of_ma_and_yarats():
    """Linear: min(1, t (1 - beta2) / 2); exponential: 1 - exp(-(1 - beta2) t); t = step + 1, beta2 = 0.99."""
    _, _, lin = ours(["schedule=constant", "schedule.warmup=linear"], epochs=50)
    _, _, exp = ours(["schedule=constant", "schedule.warmup=exponential"], epochs=50)
    for step in (0, 9, 99, 199, 300):
        t = step + 1
        assert lin.multiplier(step) == pytest.approx(min(1.0, t * 0.01 / 2))
        assert exp.multiplier(step) == pytest.approx(1 - math.exp(-0.01 * t))
    _, _, fixed = ours(["schedule=cosine", "schedule.warmup=linear", "schedule.warmup_steps=10"])
    assert fixed.multiplier(4) == pytest.approx(0.5 * (0.5 + 0.5 * math.cos(math.pi * 4 / 100)))
    # the warmup multiplies the cosine, which decays from step 0: the warmed run's peak is below the nominal lr
    peak = max(fixed.multiplier(k) for k in range(100))  # at step 9, where the warmup reaches 1
    assert peak == pytest.approx(0.5 + 0.5 * math.cos(math.pi * 9 / 100))


def test_apply_sets_lr_from_each_groups_base_and_cycles_beta1():
    cfg, optimizer, schedule = ours(["schedule=one_cycle"])
    model_lrs = [g["initial_lr"] for g in optimizer.param_groups]
    eta = schedule.apply(optimizer, 30)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([lr * eta for lr in model_lrs])
    assert {g["betas"] for g in optimizer.param_groups} == {(schedule.momentum(30), cfg.optimizer.betas[1])}
    _, sgd, sgd_schedule = ours(["optimizer=sgd", "schedule=one_cycle"])
    sgd_schedule.apply(sgd, 30)
    assert {g["momentum"] for g in sgd.param_groups} == {sgd_schedule.momentum(30)}
