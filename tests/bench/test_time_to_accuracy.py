"""The time-to-accuracy section's arithmetic against hand-worked tables: the clocks counted back from a run's
end, censoring, the ratio's bounds, the baseline's choice on validation, and FLOPs against the closed form."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from bench import time_to_accuracy as tta


def rows(*accs: float, train_s: float = 10.0, eval_s: float = 2.0) -> list[dict]:
    return [{"epoch": i + 1, "test_acc": a, "train_s": train_s, "eval_s": eval_s} for i, a in enumerate(accs)]


def test_clocks_count_back_from_the_process_end_and_drop_earlier_evaluations():
    clocked = tta.clocked(rows(0.90, 0.93, 0.95), wall_s=41.0)  # 5 s of start-up before the first epoch
    assert [r["clock_s"] for r in clocked] == [17.0, 29.0, 41.0]
    assert [r["once_s"] for r in clocked] == [17.0, 27.0, 37.0]  # less the 2-second evaluations before


def test_time_to_a_target_is_the_first_crossing_or_censored_at_the_end():
    clocked = tta.clocked(rows(0.90, 0.93, 0.95), wall_s=41.0)
    assert tta.time_to(clocked, "test_acc", 0.93) == (27.0, True)
    assert tta.time_to(clocked, "test_acc", 0.99) == (41.0, False)  # never reached: the run's whole clock


def test_ratio_is_an_upper_bound_when_the_baseline_is_censored():
    points = pd.DataFrame(
        [{"arm": "recipe", "seed": s, "wall_s": 41.0, **r} for s in (0, 1) for r in tta.clocked(rows(0.9, 0.95), 29.0)]
        + [{"arm": "baseline", "seed": s, "wall_s": 100.0, **r}
           for s in (0, 1) for r in tta.clocked(rows(0.80, 0.90, 0.94, train_s=30.0), 100.0)]
    )  # fmt: skip
    times = tta.times_to_targets(points, [0.93, 0.945, 0.99])
    ratio = tta.ratios(times).set_index("target")
    assert ratio.loc[0.99, "ratio_is"] == "none reached"
    assert ratio.loc[0.93, "ratio_is"] == "=" and ratio.loc[0.93, "ratio"] == pytest.approx(
        27.0 / 96.0
    )  # 100 s less 2 earlier evaluations
    assert ratio.loc[0.945, "ratio_is"] == "<=" and ratio.loc[0.945, "baseline_reached"] == "0/2"
    assert set(times[times.arm == "baseline"].reached[times.target == 0.945]) == {False}  # kept, not dropped


def test_the_baseline_is_chosen_on_validation_fastest_to_the_target(monkeypatch):
    histories = {  # (lr, epochs): validation accuracy per epoch, 10 s each
        (1e-3, 2): [0.90, 0.93], (1e-3, 4): [0.90, 0.92, 0.94, 0.95], (3e-3, 2): [0.92, 0.94],
        (3e-3, 4): [0.91, 0.93, 0.945, 0.95],
    }  # fmt: skip
    seen = []

    def run(overrides):
        seen.append(overrides)
        lr = float(next(o for o in overrides if o.startswith("optimizer.lr="))[13:])
        epochs = int(next(o for o in overrides if o.startswith("trainer.epochs="))[15:])
        history = [{"epoch": i + 1, "val_acc": a, "train_s": 10.0, "eval_s": 0.0}
                   for i, a in enumerate(histories[(lr, epochs)])]  # fmt: skip
        return history, 10.0 * epochs + 1

    monkeypatch.setattr(tta, "run_baseline", run)
    s = tta.settings()
    s.baseline_grid.lr, s.baseline_grid.epochs, s.select_target = [1e-3, 3e-3], [2, 4], 0.94
    chosen, grid = tta.baseline_choice(s)
    assert chosen == {"lr": 3e-3, "epochs": 2}  # 0.94 after 21 s; (3e-3, 4) reaches it at 31 s
    assert all(any(o.startswith("data.val_size=") for o in o_list) for o_list in seen)  # never the test split
    s.select_target = 0.99  # nobody reaches it: the best final accuracy
    assert tta.baseline_choice(s)[0]["epochs"] == 4


def test_flops_of_a_conv_step_are_the_closed_form():
    conv = torch.nn.Conv2d(3, 5, 3, padding=1, bias=False)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    forward = 2 * 2 * 5 * 8 * 8 * 3 * 3 * 3  # 2 FLOPs per multiply-add, per output element and tap
    assert tta.step_flops(conv, x, None, bf16=False) == 3 * forward  # forward + input and weight gradients
    shapes = tta.layer_inputs(torch.nn.Sequential(conv, torch.nn.Flatten(), torch.nn.Linear(320, 4)), x)
    assert [tuple(shape) for _, shape in shapes] == [(2, 3, 8, 8), (2, 320)]
