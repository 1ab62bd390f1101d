"""Smith's LR range test (runner/lr_find.py).

On least squares the answer is known in closed form: the mean squared error mean((x w - y)^2) over a batch of
m rows has the constant Hessian H = 2 X^T X / m, and plain SGD (no momentum, no decay) is stable exactly for
lr < 2 / L, L the largest eigenvalue of H. Every mini-batch below is an orthogonal design with the same
X^T X / m = diag(s), so even the mini-batch iteration has that edge exactly. Then end to end on the CIFAR-10
recipe with the tiny Fashion-MNIST fixture.
"""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from runner import lr_find
from runner.errors import UsageError
from runner.lr_find import SuggestRule, lr_find_config
from runner.optim import build_optimizer
from runner.recipe import ParamGroup, Phase, Task
from tests.conftest import tiny_overrides

S_MAX, S_MIN = 4.0, 4.0 / 64  # the spectrum of X^T X / m (condition number 64)
L = 2 * S_MAX  # the largest eigenvalue of the Hessian of the mean squared error: SGD diverges for lr > 2 / L
SGD = ["optimizer=sgd", "optimizer.momentum=0", "optimizer.weight_decay=0", "trainer.precision=fp32"]
RAMP = ["lr_find.start_lr=1e-4", "lr_find.end_lr=10", "lr_find.steps=100", "trainer.progress=false"]


def least_squares(
    blocks: int = 16,
    rows: int = 32,
    dim: int = 8,
    sigma: float = 1.0,
    seed: int = 0,
    bias: bool = False,
    **task,
) -> Task:
    """Linear regression whose every batch has X^T X / rows = diag(s), s log-spaced in [S_MIN, S_MAX]; the
    true weights put equal loss in every eigendirection (w_j = +-1 / sqrt(s_j)); targets carry N(0, sigma^2)."""
    gen = torch.Generator().manual_seed(seed)
    s = torch.logspace(math.log10(S_MIN), math.log10(S_MAX), dim, dtype=torch.float64)
    w = torch.randn(dim, generator=gen, dtype=torch.float64).sign() / s.sqrt()
    data = []
    for _ in range(blocks):
        q, _ = torch.linalg.qr(
            torch.randn(rows, dim, generator=gen, dtype=torch.float64)
        )  # orthonormal columns
        x = math.sqrt(rows) * q * s.sqrt()
        y = x @ w + sigma * torch.randn(rows, generator=gen, dtype=torch.float64)
        data.append((x.float(), y.float()))
    model = nn.Linear(dim, 1, bias=bias)
    nn.init.zeros_(model.weight)

    def batches(generator: torch.Generator):
        for k in torch.randperm(blocks, generator=generator).tolist():
            yield data[k]

    def loss(model: nn.Module, batch, state):
        x, y = batch
        return F.mse_loss(model(x).squeeze(-1), y), state

    return Task(
        model=model, train_size=blocks * rows, steps_per_epoch=blocks, batches=batches, loss=loss,
        evaluate=lambda model, split: {}, **task,
    )  # fmt: skip


def run(task: Task, *overrides: str) -> lr_find.Finding:
    cfg = lr_find_config([*SGD, *RAMP, *overrides])
    groups = task.param_groups or task.run_phases(1)[0].param_groups
    return lr_find.range_test(task, build_optimizer(task.model, cfg, task.train_size, groups), cfg)


@pytest.fixture(scope="module")
def finding() -> lr_find.Finding:
    torch.set_num_threads(1)
    return run(least_squares())


# ------------------------------------------------------------------------------ the closed-form problem
def test_stops_just_past_the_stability_edge_of_sgd(finding):
    """The ramp crosses 2/L = 0.25 at step 68 of 100; the error along the top eigenvector then grows by
    |1 - lr L| per step, and the smoothed loss passes 4x its minimum a few steps later (2.45 x 2/L here; 2.2 to
    3.5 x 2/L over 16 seeds and two noise levels)."""
    assert finding.stopped_early
    assert len(finding.lrs) < 100
    assert 2 / L < finding.lrs[-1] < 4 * (2 / L)


def test_suggestions_lie_below_the_edge_near_one_over_l(finding):
    """All three below 2/L; valley (0.15/L here) and minimum/10 (0.27/L) within a factor of 10 below 1/L.

    steepest is only held below 2/L: it is the argmin of a derivative of a noisy curve, and over seeds it
    lands either just under the edge (1.2-1.9/L) or at the start of the window (0.003/L)."""
    s = finding.suggestions
    assert set(s) == set(SuggestRule)
    assert all(0 < lr < 2 / L for lr in s.values())
    for rule in (SuggestRule.valley, SuggestRule.minimum):
        assert 0.1 / L < s[rule] < 1 / L, rule
    assert finding.rule == SuggestRule.valley and finding.lr == s[SuggestRule.valley]


def test_ramp_is_exponential_from_start_lr(finding):
    lrs = np.asarray(finding.lrs)
    ratio = 10 ** ((math.log10(10) - math.log10(1e-4)) / 99)  # 5 decades over 99 steps
    assert lrs[0] == pytest.approx(1e-4, rel=1e-12)
    np.testing.assert_allclose(lrs[1:] / lrs[:-1], ratio, rtol=1e-10)


def test_ramp_reaches_end_lr_when_nothing_diverges():
    f = run(least_squares(), "lr_find.end_lr=0.1", "lr_find.steps=30")  # 0.1 < 2/L: stable throughout
    assert not f.stopped_early
    assert len(f.lrs) == 30
    assert f.lrs[-1] == pytest.approx(0.1, rel=1e-12)
    assert "no divergence up to lr 1.0e-01" in f.describe()


def test_smoothing_is_the_bias_corrected_moving_average(finding):
    """s_i = (1 - beta) sum_k beta^(i-k) loss_k / (1 - beta^(i+1)), written out, not as the recursion."""
    beta, losses = 0.98, np.asarray(finding.losses)
    assert finding.smoothed[0] == pytest.approx(finding.losses[0], rel=1e-12)
    for i in (1, 10, len(losses) - 2):
        weights = (1 - beta) * beta ** np.arange(i, -1, -1)
        assert finding.smoothed[i] == pytest.approx(
            (weights @ losses[: i + 1]) / (1 - beta ** (i + 1)), rel=1e-9
        )


def test_group_ratios_and_lr_scale_are_kept():
    """Two recipe groups (lr_mult 1 and 0.1) and lr_scale 0.5: each torch group's lr is ramp * mult * 0.5 at
    every step, whatever optimizer.lr the config names."""
    seen: list[list[float]] = []
    task = least_squares(bias=True, lr_scale=lambda batch: 0.5)
    task.param_groups = [
        ParamGroup([task.model.weight], lr_mult=1.0, name="weight"),
        ParamGroup([task.model.bias], lr_mult=0.1, name="bias"),
    ]
    cfg = lr_find_config([*SGD, *RAMP, "optimizer.lr=0.3", "lr_find.steps=40"])
    optimizer = build_optimizer(task.model, cfg, task.train_size, task.param_groups)
    task.after_step = lambda step: seen.append([g["lr"] for g in optimizer.param_groups])
    f = lr_find.range_test(task, optimizer, cfg)
    names = [g["name"] for g in optimizer.param_groups]
    assert sorted(names) == ["bias/no_decay", "weight"]  # the bias is 1-D: build_optimizer moves it
    mult = {"weight": 1.0, "bias/no_decay": 0.1}
    assert len(seen) == len(f.lrs)
    for lrs, ramp_lr in zip(seen, f.lrs, strict=True):
        for name, lr in zip(names, lrs, strict=True):
            assert lr == pytest.approx(ramp_lr * mult[name] * 0.5, rel=1e-12)


@pytest.mark.parametrize("optimizer", ["sgdw", "adamw"])
def test_paper_decay_stays_what_training_at_the_ramp_lr_applies(optimizer):
    """decay_mode=paper: torch's lr * wd (the shrink per step) equals the configured lambda at every step of
    the ramp, as in training with optimizer.lr = the ramp's lr and eta_t = 1."""
    task = least_squares()
    cfg = lr_find_config(
        [f"optimizer={optimizer}", "optimizer.decay_mode=paper", "optimizer.weight_decay=0.02",
         "trainer.precision=fp32", *RAMP, "lr_find.steps=20", "lr_find.end_lr=0.01"]
    )  # fmt: skip
    optimizer_ = build_optimizer(task.model, cfg, task.train_size)
    key = "decoupled_weight_decay" if optimizer == "sgdw" else "weight_decay"
    shrink = []
    task.after_step = lambda step: shrink.append(
        optimizer_.param_groups[0]["lr"] * optimizer_.param_groups[0][key]
    )
    lr_find.range_test(task, optimizer_, cfg)
    np.testing.assert_allclose(shrink, 0.02, rtol=1e-12)


def test_a_non_finite_loss_stops_the_ramp():
    calls = []
    task = least_squares()
    finite = task.loss

    def loss(model, batch, state):
        calls.append(1)
        value, state = finite(model, batch, state)
        return (value * math.nan if len(calls) > 40 else value), state

    task.loss = loss
    f = run(task)
    assert f.stopped_early and len(f.lrs) == 41 and math.isnan(f.losses[-1])
    assert f.window == (10, 36)  # 100 // 10 skipped at the start, the last 5 at the end


def test_divergence_at_once_is_a_usage_error():
    with pytest.raises(UsageError, match=r"diverged after \d+ of 100 steps .* too soon"):
        run(least_squares(), "lr_find.start_lr=1.0", "lr_find.end_lr=1e4")


def test_rule_picks_the_reported_lr():
    f = run(least_squares(), "lr_find.rule=minimum")
    assert f.rule == SuggestRule.minimum and f.lr == f.suggestions[SuggestRule.minimum]
    assert f.describe().startswith(f"suggested lr {f.lr:.1e} (minimum); valley ")


def test_phase_enter_runs_after_train_mode():
    entered = []
    task = least_squares()
    task.phases = [
        Phase(1, [ParamGroup(list(task.model.parameters()))], enter=lambda m: entered.append(m.training))
    ]
    task.model.eval()
    run(task, "lr_find.steps=20", "lr_find.end_lr=0.01")
    assert entered == [True]


# ------------------------------------------------------------------------------------------ the rules
def fastai_valley_index(losses: list[float]) -> int:
    """The index fastai/callback/schedule.py::valley (fastai 2.7) reads lrs at, line for line (it returns
    lrs[idx], so -1 is the window's last point)."""
    n = len(losses)
    max_start, max_end = 0, 0
    lds = [1] * n
    for i in range(1, n):
        for j in range(0, i):
            if (losses[i] < losses[j]) and (lds[i] < lds[j] + 1):
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    return max_start + int(sections) + int(sections / 2)


def test_valley_is_fastais_wherever_its_index_is_not_minus_one():
    rng = np.random.default_rng(0)
    lrs = np.geomspace(1e-5, 1.0, 60)
    for _ in range(30):
        curve = 2.3 - np.clip(np.linspace(-1, 2, 60), 0, None) + np.linspace(0, 3, 60) ** 4 / 20
        curve = curve + rng.normal(0, rng.choice([0.001, 0.05, 0.3]), 60)
        index = fastai_valley_index(curve.tolist())
        assert index >= 0
        assert lr_find.valley(lrs, curve) == lrs[index]


@pytest.mark.parametrize(
    "curve",
    [
        np.concatenate([[1.0, 0.5], np.linspace(2.0, 3.0, 18)]),  # the first two fall, then only rises
        np.array([1.0, 0.5, 2.0, 1.5, 3.0, 2.5, 4.0, 3.5]),  # falling pairs, never three in order
    ],
)
def test_valley_differs_from_fastai_only_where_its_index_is_minus_one(curve):
    """The longest valley is 2 points, the window's first two: fastai's index is -1, its last (most diverged)
    lr; ours is the window's first."""
    lrs = np.geomspace(1e-4, 1.0, len(curve))
    assert fastai_valley_index(curve.tolist()) == -1
    assert lr_find.valley(lrs, curve) == lrs[0]


def test_valley_of_a_loss_that_never_falls_is_the_window_start_as_in_fastai():
    """No point is below an earlier one: fastai's start stays at its initial 0, so its index is 0 too."""
    lrs, curve = np.geomspace(1e-4, 1.0, 20), np.linspace(1.0, 2.0, 20)
    assert fastai_valley_index(curve.tolist()) == 0
    assert lr_find.valley(lrs, curve) == lrs[0]


def test_valley_past_the_first_pair_matches_fastai():
    """A longest valley of 2 that ends later than the second point: fastai's index is end - 2 >= 0."""
    lrs, curve = np.geomspace(1e-4, 1.0, 6), np.array([1.0, 2.0, 3.0, 2.5, 4.0, 5.0])
    assert fastai_valley_index(curve.tolist()) == 1
    assert lr_find.valley(lrs, curve) == lrs[1]


def test_valley_steepest_and_minimum_on_a_drawn_curve():
    """Flat 10 points, a straight fall over 20 (steepest at its steepest part), then a rise."""
    lrs = np.geomspace(1e-4, 1.0, 50)
    curve = np.concatenate([np.full(10, 3.0), 3.0 - 0.1 * np.arange(1, 21) ** 1.2, np.linspace(0.0, 2.0, 20)])
    # the longest decreasing subsequence: one flat point, then the 20 of the fall, ending at the minimum (29)
    assert np.argmin(curve) == 29
    assert lr_find.minimum(lrs, curve) == pytest.approx(lrs[29] / 10)
    assert lr_find.steepest(lrs, curve) == lrs[28]  # the last step of the fall is the largest (power 1.2)
    assert lr_find.valley(lrs, curve) == lrs[8 + 7 + 3]  # start = 29 - 21 = 8, L = 21: 8 + int(7) + int(3.5)


# ------------------------------------------------------------------------------------------ end to end
def test_find_on_the_cifar10_recipe_writes_png_and_csv(tmp_path, fmnist_root):
    out = tmp_path / "lr_find"
    cfg = lr_find_config(
        tiny_overrides(tmp_path, fmnist_root) + ["lr_find.steps=30", f"lr_find.out_dir={out}"]
    )
    f = lr_find.find(cfg)
    assert f.png == out / "lr_find.png" and f.csv == out / "lr_find.csv"
    assert f.png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.iterdir()) == ["lr_find.csv", "lr_find.png"]  # no temporary file left
    with f.csv.open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["step", "lr", "loss", "smoothed"]
    assert [int(r["step"]) for r in rows] == list(range(len(f.lrs)))
    for column, values in (("lr", f.lrs), ("loss", f.losses), ("smoothed", f.smoothed)):
        assert [float(r[column]) for r in rows] == values, column
    assert f.rule == SuggestRule.valley
    assert f.lr == f.suggestions[f.rule] and f.lr in f.suggestions.values()
    assert all(0 < lr < cfg.lr_find.end_lr for lr in f.suggestions.values())
    assert f.describe().startswith(f"suggested lr {f.lr:.1e} (valley); steepest ")
