"""The CIFAR-10 recipe's speed tricks (airbench94's), each against an independent expectation: whitening gives
identity covariance, EMA evaluates the running average, alternating flips alternate, the TTA views average,
frozen BatchNorm scales stay frozen, the machine's faster setting wins, and every trick on resumes bitwise."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from recipes import cifar10
from runner import machine, optim
from runner.config import compose
from runner.errors import UsageError
from runner.loop import fit
from runner.run import train
from tests.conftest import assert_same_run, interrupting, read_metrics, tiny_overrides

EVERY_TRICK = [  # on, whatever the shipped defaults become
    "recipe.whiten=true", "recipe.flip=alternating", "recipe.tta=flip_translate", "recipe.bn_scale=false",
    "recipe.bias_lr_mult=4.0", "trainer.ema=0.9", "trainer.eval_every=2",
]  # fmt: skip


def structured_images(n: int, seed: int = 0) -> torch.Tensor:
    """Grey 28x28 images with correlated neighbouring pixels (smoothed noise), normalized: real patches are
    far from white, so whitening has something to undo."""
    noise = torch.randn(n, 1, 32, 32, generator=torch.Generator().manual_seed(seed))
    smooth = F.avg_pool2d(noise, 5, stride=1)  # 28 x 28
    return (smooth - smooth.mean()) / smooth.std()


def test_whitening_makes_the_training_patches_covariance_the_identity():
    recipe = compose(["recipe.whiten=true", "recipe.whiten_patch=2", "recipe.whiten_eps=1e-6"]).recipe
    net = cifar10.make_net(1, 10, recipe)
    conv = net[0]
    images = structured_images(256)
    cifar10.whiten(conv, images, recipe.whiten_eps)
    with torch.no_grad():
        out = conv(images) - conv.bias[None, :, None, None]
    half = out[:, : out.shape[1] // 2].permute(0, 2, 3, 1).reshape(-1, out.shape[1] // 2).double()
    covariance = half.T @ half / len(half)  # uncentred, as the init estimates it
    before = cifar10.patches(images.double(), 2)
    spectrum = torch.linalg.eigvalsh(before.T @ before / len(before))
    assert spectrum.min() < 0.2 * spectrum.max()  # neighbouring pixels correlate: far from white before
    torch.testing.assert_close(covariance, torch.eye(len(covariance), dtype=torch.float64), atol=1e-3, rtol=0)
    torch.testing.assert_close(out[:, 4:], -out[:, :4])  # the negated filters: both signs survive the GELU
    assert not conv.weight.requires_grad and conv.bias.requires_grad


def test_a_whitened_stem_stays_frozen_through_training(tiny_cfg, tmp_path):
    cfg = tiny_cfg(*EVERY_TRICK, "trainer.precision=fp32", "recipe.channels_last=false")
    task = cifar10.build(cfg, torch.device("cpu"))
    weight = task.model[0].weight.clone()
    norms = [m.weight.clone() for m in cifar10.batch_norms(task.model)]
    fit(task, cfg, tmp_path / "run")
    assert torch.equal(task.model[0].weight, weight)
    assert all(torch.equal(m.weight, w) for m, w in zip(cifar10.batch_norms(task.model), norms, strict=True))
    assert all(torch.equal(w, torch.ones_like(w)) for w in norms)  # BatchNorm's scale frozen at 1


def test_batchnorm_biases_get_their_own_lr_multiplier(tiny_cfg):
    cfg = tiny_cfg("recipe.bias_lr_mult=8.0", "recipe.bn_scale=false")
    task = cifar10.build(cfg, torch.device("cpu"))
    optimizer = optim.build_optimizer(task.model, cfg, task.train_size, task.param_groups)
    by_name = {g["name"]: g for g in optimizer.param_groups}
    biases = {id(m.bias) for m in cifar10.batch_norms(task.model)}
    assert {id(p) for p in by_name["bn_biases/no_decay"]["params"]} == biases
    assert by_name["bn_biases/no_decay"]["lr"] == pytest.approx(8.0 * cfg.optimizer.lr)
    assert by_name["weights"]["lr"] == pytest.approx(cfg.optimizer.lr)
    scales = {id(m.weight) for m in cifar10.batch_norms(task.model)}
    trained = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert not scales & trained


def test_alternating_flips_flip_each_image_the_other_way_every_epoch():
    first, second, third = (cifar10.alternating_flips(1000, seed=3, epoch=e) for e in range(3))
    assert torch.equal(second, ~first) and torch.equal(third, first)
    assert 400 < int(first.sum()) < 600  # a random half at the start
    assert torch.equal(cifar10.alternating_flips(1000, seed=3, epoch=1), second)  # a pure function
    assert not torch.equal(cifar10.alternating_flips(1000, seed=4, epoch=0), first)


def test_the_batch_mirrors_exactly_the_images_the_flips_name():
    images = torch.randint(0, 256, (6, 1, 5, 5), dtype=torch.uint8)
    flipped = torch.tensor([True, False, True, False, False, True])
    out = cifar10.random_crop_flip(
        images, 0, cifar10.Flip.alternating, torch.Generator().manual_seed(0), flipped
    )
    expected = torch.where(flipped[:, None, None, None], images.flip(-1), images)
    assert torch.equal(out, expected)
    unflipped = cifar10.random_crop_flip(
        images, 0, cifar10.Flip.none, torch.Generator().manual_seed(0), flipped
    )
    assert torch.equal(unflipped, images)


def test_the_flip_setting_reaches_the_training_batches(tiny_cfg):
    """recipe.flip as composed decides which images of a real batch are mirrored: the same generator gives the
    same order and crops under every setting, so the batches differ exactly by their flips."""

    def first_batch(flip: str) -> torch.Tensor:
        cfg = tiny_cfg(f"recipe.flip={flip}", "recipe.whiten=false", "trainer.precision=fp32")
        task = cifar10.build(cfg, torch.device("cpu"))
        x, _ = next(iter(task.batches(torch.Generator().manual_seed(0))))
        return x

    none, random_, alternating = (first_batch(f) for f in ("none", "random", "alternating"))
    for flipped in (random_, alternating):
        mirrored = (flipped != none).flatten(1).any(1)
        assert 0 < mirrored.sum() < len(none)  # some images mirrored, not all
        assert torch.equal(flipped[mirrored], none[mirrored].flip(-1))  # mirrored, nothing else changed
        assert torch.equal(flipped[~mirrored], none[~mirrored])
    assert not torch.equal(random_, alternating)  # the two draw different images to mirror


def test_flip_translate_tta_averages_airbench94s_six_views():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Flatten(), nn.LazyLinear(4)).eval()
    x = torch.randn(5, 1, 8, 8)
    model(x)
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    views = [x, padded[..., :8, :8], padded[..., 2:, 2:]]
    mirrored = [(model(v) + model(v.flip(-1))) / 2 for v in views]
    expected = 0.5 * mirrored[0] + 0.25 * mirrored[1] + 0.25 * mirrored[2]
    torch.testing.assert_close(cifar10.predict(model, x, cifar10.TTA.flip_translate), expected)
    torch.testing.assert_close(cifar10.predict(model, x, cifar10.TTA.flip), mirrored[0])
    torch.testing.assert_close(cifar10.predict(model, x, cifar10.TTA.none), model(x))


def test_ema_evaluates_the_running_average_of_the_weights(tiny_cfg, tmp_path):
    decay = 0.8
    cfg = tiny_cfg(
        "trainer.ema=0.8", "trainer.epochs=2", "trainer.precision=fp32", "recipe.channels_last=false"
    )
    task = cifar10.build(cfg, torch.device("cpu"))
    names = [n for n, p in task.model.named_parameters()]
    history: list[dict] = []
    task.after_step = lambda step: history.append(
        {n: p.detach().clone() for n, p in task.model.named_parameters()}
    )
    evaluated: list[dict] = []
    evaluate = task.evaluate

    def recording(model, split):
        evaluated.append({n: p.detach().clone() for n, p in model.named_parameters()})
        return evaluate(model, split)

    task.evaluate = recording
    fit(task, cfg, tmp_path / "run")
    average = dict(history[0])  # torch's EMA starts from the weights after the first step
    for weights in history[1:]:
        average = {n: decay * average[n] + (1 - decay) * weights[n] for n in names}
    for name in names:
        torch.testing.assert_close(evaluated[-1][name], average[name], rtol=1e-5, atol=1e-6)
    moved = [n for n in names if not torch.equal(history[-1][n], history[-2][n])]
    assert any(not torch.allclose(evaluated[-1][n], history[-1][n]) for n in moved)  # not the raw weights


def test_eval_every_k_epochs_evaluates_those_and_the_last(tiny_cfg, tmp_path):
    cfg = tiny_cfg("trainer.epochs=5", "trainer.eval_every=2")
    outcome = fit(cifar10.build(cfg, torch.device("cpu")), cfg, tmp_path / "run")
    assert [row["epoch"] for row in outcome.metrics] == [2, 4, 5]
    with pytest.raises(UsageError, match="whole number of epochs"):
        tiny_cfg("trainer.eval_every=1.5")


def test_the_machine_choice_takes_the_faster_setting(tiny_cfg, monkeypatch):
    table = {(True, "bf16"): 0.30, (True, "fp32"): 0.50, (False, "bf16"): 0.20, (False, "fp32"): 0.40}
    monkeypatch.setattr(cifar10, "seconds_per_step", lambda model, x, y, setting, steps: table[setting])
    monkeypatch.setattr(cifar10, "use_bf16", lambda precision, device: True)
    cfg = tiny_cfg("recipe.channels_last=null", "trainer.precision=auto")
    task = cifar10.build(cfg, torch.device("cpu"))
    assert task.settled == {"recipe.channels_last": False, "trainer.precision": "bf16"}
    assert task.model[0].weight.is_contiguous()
    table[(True, "fp32")] = 0.1
    assert cifar10.build(cfg, torch.device("cpu")).settled == {
        "recipe.channels_last": True, "trainer.precision": "fp32"
    }  # fmt: skip
    fixed = cifar10.build(
        tiny_cfg("recipe.channels_last=true", "trainer.precision=bf16"), torch.device("cpu")
    )
    assert fixed.settled == {"recipe.channels_last": True, "trainer.precision": "bf16"}  # nothing measured
    assert machine.fastest({"a": 2.0, "b": 1.0, "c": 1.0}) == "b"


def test_every_trick_on_resumes_bitwise_and_never_measures_again(tmp_path, fmnist_root, monkeypatch):
    timed: list[tuple] = []
    table = {(True, "bf16"): 0.3, (True, "fp32"): 0.1, (False, "bf16"): 0.2, (False, "fp32"): 0.4}

    def stub(model, x, y, setting, steps):
        timed.append(setting)
        return table[setting]

    monkeypatch.setattr(cifar10, "seconds_per_step", stub)
    base = [*tiny_overrides(tmp_path, fmnist_root), *EVERY_TRICK, "trainer.epochs=4", "recipe.channels_last=null",
            "trainer.precision=auto"]  # fmt: skip
    straight = tmp_path / "straight"
    train(compose([*base, f"run_dir={straight}"]))
    saved = yaml.safe_load((straight / "config.yaml").read_text())
    assert saved["recipe"]["channels_last"] is True and saved["trainer"]["precision"] == "fp32"
    assert saved["measured"] == {"recipe.channels_last": True, "trainer.precision": "fp32"}
    killed = tmp_path / "killed"
    monkeypatch.setattr(cifar10, "build", interrupting(cifar10.build, at_batch=1, after_epoch=1))
    train(compose([*base, f"run_dir={killed}"]))
    monkeypatch.undo()
    timed.clear()
    monkeypatch.setattr(cifar10, "seconds_per_step", stub)
    train(compose([*base, f"run_dir={killed}", "resume=true"]))
    assert timed == []  # the resumed run took its settings from config.yaml
    assert_same_run(straight, killed)
    assert [row["epoch"] for row in read_metrics(killed)] == [2, 4]


def test_the_shipped_recipe_leaves_layout_and_precision_to_the_machine():
    cfg = compose(["recipe=cifar10"])
    assert cfg.recipe.channels_last is None and cfg.trainer.precision == "auto"
