"""The Cars recipe on tiny datasets in the real on-disk layouts: its reading against torchvision's, the two
fine-tuning phases (frozen body, then discriminative lrs), one-line errors, and a small ResNet that learns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image
from torchvision.datasets import ImageFolder, StanfordCars

from recipes import cars
from runner.config import compose
from runner.errors import UsageError
from runner.optim import build_optimizer
from tests.conftest import write_fashion_mnist

CLASSES = 3
TINY = ["model=resnet18", "model.weights=none", "recipe.image_size=32", "recipe.eval_crop=0.875",
        "recipe.workers=0", "trainer.batch_size=8", "trainer.eval_batch_size=16", "trainer.threads=1"]  # fmt: skip


# ------------------------------------------------------------------------------------------------ fixtures
def write_jpeg(path: Path, label: int, rng: np.random.Generator, size=(40, 30)) -> None:
    """A learnable image: each class has its own colour, with noise."""
    colour = np.array([90 * label, 255 - 90 * label, 60 + 40 * label])
    pixels = colour + rng.integers(-25, 25, (size[1], size[0], 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=95)


ANNOTATION_FIELDS = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")  # the devkit's struct


def write_annotations(path: Path, fnames: list[str], labels: np.ndarray) -> None:
    """A 1 x N MATLAB struct array as in cars_train_annos.mat: bounding box, class (from 1), file name."""
    records = np.empty((1, len(fnames)), dtype=[(name, object) for name in ANNOTATION_FIELDS])
    for i, (fname, label) in enumerate(zip(fnames, labels, strict=True)):
        records[0, i] = (np.uint16(2), np.uint16(3), np.uint16(38), np.uint16(27), np.uint8(label + 1), fname)
    scipy.io.savemat(path, {"annotations": records})


def write_stanford_cars(folder: Path, n_train: int, n_test: int, seed: int = 0) -> dict[str, np.ndarray]:
    """torchvision's StanfordCars layout: cars_train/, cars_test/, devkit/*.mat, cars_test_annos_withlabels.mat."""
    rng = np.random.default_rng(seed)
    (folder / "devkit").mkdir(parents=True)
    names = np.array([[f"Make Model {c} 2012" for c in range(CLASSES)]], dtype=object)  # a 1 x C cell array
    scipy.io.savemat(folder / "devkit" / "cars_meta.mat", {"class_names": names})
    labels = {}
    for split, n, mat in (("train", n_train, "devkit/cars_train_annos.mat"),
                          ("test", n_test, "cars_test_annos_withlabels.mat")):  # fmt: skip
        labels[split] = np.arange(n) % CLASSES
        rng.shuffle(labels[split])
        fnames = [f"{i + 1:05d}.jpg" for i in range(n)]
        for fname, label in zip(fnames, labels[split], strict=True):
            write_jpeg(folder / f"cars_{split}" / fname, label, rng)
        write_annotations(folder / mat, fnames, labels[split])
    return labels


def write_image_folders(root: Path, n_per_class: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for label in range(CLASSES):
            for i in range(n_per_class):
                write_jpeg(root / split / f"Make Model {label}" / f"{i:03d}.jpg", label, rng)


@pytest.fixture
def cars_root(tmp_path: Path) -> Path:
    write_stanford_cars(tmp_path / "stanford_cars", n_train=24, n_test=9)
    return tmp_path / "stanford_cars"


def cars_cfg(*extra: str, root: Path | None = None, data: str = "stanford_cars"):
    root_override = [f"data.root={root}"] if root is not None else []
    return compose(["recipe=cars", *TINY, f"data={data}", *root_override, *extra])


def one_line_error(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------------------------------ config
def test_config_files_compose_with_the_recipe_defaults():
    cfg = compose(["recipe=cars"])
    assert (cfg.data.name, cfg.model.arch, cfg.model.weights) == ("stanford_cars", "resnet50", "imagenet")
    assert (cfg.trainer.epochs, cfg.trainer.batch_size, cfg.recipe.image_size) == (60, 128, 224)
    assert round(cfg.recipe.frozen_fraction * cfg.trainer.epochs) == 20  # fast.ai: 20 frozen + 40 unfrozen
    assert cfg.recipe.frozen_lr_mult * 3e-3 == pytest.approx(1e-2, rel=1e-6)  # fast.ai's lrs (1e-2, 3e-3)
    assert compose(["recipe=cars", "data=cars_folder", "model=resnet18"]).model.arch == "resnet18"


@pytest.mark.parametrize(
    "override,named",
    [
        ("recipe.frozen_fraction=1.5", "recipe.frozen_fraction"),
        ("recipe.crop_scale=[0.5]", "recipe.crop_scale"),
        ("recipe.progressive=[{start:0.2,size:128}]", "recipe.progressive"),
        ("recipe.eval_crop=1.5", "recipe.eval_crop"),
        ("data.download=true", "data.download"),
        ("model.arch=vgg16", "model.arch"),
        ("recipe.workerz=2", "recipe.workerz"),
    ],
)
def test_bad_values_fail_at_compose_in_one_line(override, named):
    with pytest.raises(UsageError) as err:
        compose(["recipe=cars", override])
    assert named in one_line_error(err)


# ------------------------------------------------------------------------------------------------ data
def test_stanford_cars_reads_what_torchvision_reads(tmp_path):
    labels = write_stanford_cars(tmp_path / "stanford_cars", n_train=7, n_test=5)
    for root in (tmp_path / "stanford_cars", tmp_path):  # data.root, or torchvision's folder above it
        train, test, classes = cars.read_stanford_cars(cars_cfg(root=root).data)
        assert classes == len(StanfordCars(tmp_path, split="train").classes) == CLASSES
        for split, ours in (("train", train), ("test", test)):
            theirs = StanfordCars(tmp_path, split=split)
            assert len(ours) == len(theirs) == len(labels[split])
            for i in range(len(theirs)):
                image, label = theirs[i]
                assert int(ours.labels[i]) == label == labels[split][i]
                np.testing.assert_array_equal(np.asarray(ours.images[i]), np.asarray(image))


def test_a_single_annotation_still_reads(tmp_path):
    """loadmat(squeeze_me=True) turns a one-record struct array into a scalar (torchvision would fail)."""
    write_stanford_cars(tmp_path / "stanford_cars", n_train=1, n_test=1)
    train, test, _ = cars.read_stanford_cars(cars_cfg(root=tmp_path / "stanford_cars").data)
    assert len(train) == len(test) == 1


def test_image_folders_read_what_image_folder_reads(tmp_path):
    write_image_folders(tmp_path, n_per_class=2)
    train, test, classes = cars.read_image_folders(cars_cfg(root=tmp_path, data="cars_folder").data)
    assert classes == CLASSES
    for split, ours in (("train", train), ("test", test)):
        theirs = ImageFolder(tmp_path / split)
        assert ours.images.paths == [path for path, _ in theirs.samples]
        assert ours.labels.tolist() == theirs.targets
        np.testing.assert_array_equal(np.asarray(ours.images[3]), np.asarray(theirs[3][0]))


def break_stanford_cars(folder: Path, how: str) -> str:
    """Damage a good copy one way; return what the error must name."""
    if how == "no folder":
        return str(folder / "nowhere")
    if how == "missing meta":
        (folder / "devkit" / "cars_meta.mat").unlink()
        return "devkit/cars_meta.mat"
    if how == "mat without key":
        scipy.io.savemat(folder / "devkit" / "cars_meta.mat", {"names": np.zeros(3)})
        return "class_names"
    if how == "corrupt mat":
        (folder / "cars_test_annos_withlabels.mat").write_bytes(b"not a MATLAB file at all" * 10)
        return "cars_test_annos_withlabels.mat"
    if how == "annotations without fname":
        scipy.io.savemat(folder / "devkit" / "cars_train_annos.mat", {"annotations": np.zeros((1, 2))})
        return "fname"
    if how == "missing image":
        (folder / "cars_train" / "00003.jpg").unlink()
        return "00003.jpg"
    (folder / "cars_test" / "00002.jpg").write_bytes(b"<html>404</html>")  # a failed download
    return "00002.jpg"


@pytest.mark.parametrize(
    "how",
    ["no folder", "missing meta", "mat without key", "corrupt mat", "annotations without fname",
     "missing image", "unreadable jpeg"],
)  # fmt: skip
def test_a_broken_stanford_cars_is_one_usage_error_before_training(tmp_path, how):
    folder = tmp_path / "stanford_cars"
    write_stanford_cars(folder, n_train=6, n_test=3)
    named = break_stanford_cars(folder, how)
    root = folder / "nowhere" if how == "no folder" else folder
    with pytest.raises(UsageError) as err:
        cars.build(cars_cfg(root=root), torch.device("cpu"))
    assert named in one_line_error(err)


def test_a_broken_image_folder_is_one_usage_error(tmp_path):
    write_image_folders(tmp_path, n_per_class=1)
    for image in (tmp_path / "test" / "Make Model 2").iterdir():
        image.unlink()  # a class with no test image: half a copy
    with pytest.raises(UsageError) as err:
        cars.build(cars_cfg(root=tmp_path, data="cars_folder"), torch.device("cpu"))
    assert "Make Model 2" in one_line_error(err)
    with pytest.raises(UsageError) as err:
        cars.build(cars_cfg(root=tmp_path / "train", data="cars_folder"), torch.device("cpu"))
    assert "no train/ folder" in one_line_error(err)


def test_a_jpeg_broken_past_its_header_fails_in_a_worker_as_one_line(cars_root):
    path = cars_root / "cars_train" / "00005.jpg"
    path.write_bytes(path.read_bytes()[:-300])  # the header reads, the pixels do not
    task = cars.build(cars_cfg("recipe.workers=1", root=cars_root), torch.device("cpu"))
    with pytest.raises(UsageError) as err:
        list(task.batches(torch.Generator().manual_seed(0)))
    assert "cannot decode image" in one_line_error(err) and "00005.jpg" in str(err.value)


def test_fashion_mnist_becomes_rgb_images_never_larger_than_its_own(tmp_path):
    write_fashion_mnist(tmp_path, n_train=20, n_test=10)
    cfg = cars_cfg("data.train_limit=16", root=tmp_path, data="fashion_mnist")  # image_size 32 > 28 px
    task = cars.build(cfg, torch.device("cpu"))
    x, y = next(task.batches(torch.Generator().manual_seed(0)))
    assert x.shape == (8, 3, 28, 28) and x.dtype == torch.float32 and y.shape == (8,)
    assert x.is_contiguous(memory_format=torch.channels_last)
    smaller = cars.build(cars_cfg("data.train_limit=16", "recipe.image_size=16", root=tmp_path, data="fashion_mnist"),
                         torch.device("cpu"))  # fmt: skip
    assert next(smaller.batches(torch.Generator().manual_seed(0)))[0].shape[-1] == 16
    data = cars.load_data(cfg.data)
    pixels, _ = cars.Transformed(data.test, cars.eval_transform(cfg.recipe, 28))[(0, 0)]
    assert pixels.shape == (3, 28, 28) and pixels.dtype == torch.uint8
    assert torch.equal(pixels[0], pixels[1]) and torch.equal(pixels[0], pixels[2])  # grey, as RGB
    assert task.train_size == 16 and task.steps_per_epoch == 2


def test_val_size_holds_out_a_stratified_split_that_does_not_train(cars_root):
    cfg = cars_cfg("data.val_size=6", root=cars_root)
    data = cars.load_data(cfg.data)
    assert len(data.val) == 6 and len(data.train) == 18
    assert sorted(data.val.labels.tolist()) == [0, 0, 1, 1, 2, 2]
    assert not set(data.val.images.paths) & set(data.train.images.paths)
    assert data.val.images.paths == cars.load_data(cfg.data).val.images.paths  # the same in every run
    task = cars.build(cfg, torch.device("cpu"))
    assert task.splits == ("val", "test") and task.train_size == 18
    task.model.eval()
    with torch.no_grad():
        metrics = task.evaluate(task.model, "val")
    assert set(metrics) == {"val_loss", "val_acc"} and 0 <= metrics["val_acc"] <= 1
    assert cars.build(cars_cfg(root=cars_root), torch.device("cpu")).splits == ("test",)


def test_an_epoch_replays_bitwise_whatever_the_workers(cars_root):
    def epoch(workers: int, seed: int) -> list:
        task = cars.build(cars_cfg(f"recipe.workers={workers}", root=cars_root), torch.device("cpu"))
        return list(task.batches(torch.Generator().manual_seed(seed)))

    in_process, in_workers = epoch(0, seed=7), epoch(2, seed=7)
    assert len(in_process) == 3
    for (x0, y0), (x1, y1) in zip(in_process, in_workers, strict=True):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)
    assert not torch.equal(in_process[0][0], epoch(0, seed=8)[0][0])


def test_the_augmentation_leaves_the_global_rng_alone(cars_root):
    task = cars.build(cars_cfg(root=cars_root), torch.device("cpu"))
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    list(task.batches(torch.Generator().manual_seed(0)))
    assert torch.equal(torch.rand(4), expected)  # dropout draws stay the loop's, seeded per epoch


def test_progressive_resizing_follows_the_run(cars_root):
    progressive = "recipe.progressive=[{start:0.0,size:16},{start:0.5,size:24}]"
    task = cars.build(cars_cfg(progressive, "trainer.epochs=4", root=cars_root), torch.device("cpu"))
    sizes = []
    for epoch in range(4):  # as the loop does: the epoch first, then its batches
        task.epoch_start(epoch)
        sizes.append(next(task.batches(torch.Generator()))[0].shape[-1])
    assert sizes == [16, 16, 24, 24]


# ------------------------------------------------------------------------------------------------ model
def test_weights_from_a_state_dict_file(tmp_path, cars_root):
    source = cars.make_model(cars_cfg(root=cars_root).model, classes=1000)  # resnet18, 1000-way head
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    cfg = cars_cfg(f"model.weights={tmp_path / 'resnet18.pth'}", root=cars_root)
    model = cars.make_model(cfg.model, classes=CLASSES)
    torch.testing.assert_close(model.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    assert model.fc.out_features == CLASSES


@pytest.mark.parametrize("how", ["no file", "not a checkpoint", "another architecture"])
def test_bad_weights_are_one_usage_error(tmp_path, cars_root, how):
    path = tmp_path / "weights.pth"
    if how == "not a checkpoint":
        path.write_text("not a checkpoint")
    if how == "another architecture":
        torch.save(cars.make_model(cars_cfg("model=resnet50", root=cars_root).model, 10).state_dict(), path)
    with pytest.raises(UsageError) as err:
        cars.build(cars_cfg(f"model.weights={path}", root=cars_root), torch.device("cpu"))
    assert str(path) in one_line_error(err)


def test_imagenet_weights_without_internet_say_what_to_do(monkeypatch, cars_root):
    import torchvision

    def offline(self, *args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torchvision.models.ResNet18_Weights, "get_state_dict", offline)
    with pytest.raises(UsageError) as err:
        cars.build(cars_cfg("model.weights=imagenet", root=cars_root), torch.device("cpu"))
    assert "model.weights=<file.pth>" in one_line_error(err)


def names_of(model: torch.nn.Module, params) -> set[str]:
    ids = {id(p) for p in params}
    return {name for name, p in model.named_parameters() if id(p) in ids}


def test_phase_one_trains_only_the_head_with_the_body_frozen(cars_root):
    task = cars.build(cars_cfg("model=resnet50", "trainer.epochs=60", root=cars_root), torch.device("cpu"))
    model, (frozen, unfrozen) = task.model, task.phases
    assert (frozen.name, frozen.epochs, unfrozen.name, unfrozen.epochs) == ("frozen", 20, "unfrozen", 40)
    (head,) = frozen.param_groups
    assert names_of(model, head.params) == {"fc.weight", "fc.bias"}
    assert head.lr_mult == pytest.approx(1e-2 / 3e-3, rel=1e-6)
    for _ in range(2):  # the loop enters at every epoch of the phase: idempotent
        model.train()
        frozen.enter(model)
    assert {name for name, p in model.named_parameters() if p.requires_grad} == {"fc.weight", "fc.bias"}
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms) and model.fc.training
    running_mean = model.bn1.running_mean.clone()
    x, y = next(task.batches(torch.Generator().manual_seed(0)))
    task.loss(model, (x, y), None)[0].backward()
    assert model.conv1.weight.grad is None and model.fc.weight.grad is not None
    assert torch.equal(model.bn1.running_mean, running_mean)  # the frozen statistics stay


def test_phase_two_unfreezes_everything_with_geometric_stage_lrs(cars_root):
    task = cars.build(cars_cfg("model=resnet50", root=cars_root), torch.device("cpu"))
    model, (frozen, unfrozen) = task.model, task.phases
    frozen.enter(model)
    model.train()
    unfrozen.enter(model)
    assert all(p.requires_grad for p in model.parameters())
    assert all(m.training for m in model.modules())
    groups = unfrozen.param_groups
    assert [g.name for g in groups] == ["stem+layer1", "layer2", "layer3", "layer4", "head"]
    div = 1.7320508
    assert [g.lr_mult for g in groups] == pytest.approx([div**-4, div**-3, div**-2, div**-1, 1.0])
    assert groups[0].lr_mult == pytest.approx(1 / 9, rel=1e-6)  # fastai 0.7's lowest group: lr / 9
    names = [names_of(model, g.params) for g in groups]
    assert set().union(*names) == {name for name, _ in model.named_parameters()}
    assert sum(map(len, names)) == len(list(model.parameters()))  # each parameter in one group only
    assert {n.split(".")[0] for n in names[0]} == {"conv1", "bn1", "layer1"}


def test_norm_weights_and_biases_get_no_decay_and_each_stage_its_lr(cars_root):
    cfg = cars_cfg("optimizer.weight_decay=1e-3", root=cars_root)
    task = cars.build(cfg, torch.device("cpu"))
    unfrozen = task.phases[-1]
    unfrozen.enter(task.model)  # the loop enters a phase before its optimizer sees requires_grad
    optimizer = build_optimizer(task.model, cfg, task.train_size, unfrozen.param_groups)
    norms_and_biases = {name for name, p in task.model.named_parameters() if p.ndim == 1}
    assert any(".bn" in name for name in norms_and_biases) and "fc.bias" in norms_and_biases
    seen = set()
    for group in optimizer.param_groups:
        names = names_of(task.model, group["params"])
        seen |= names
        assert group["weight_decay"] == (0.0 if names <= norms_and_biases else 1e-3)
        assert names <= norms_and_biases or not names & norms_and_biases
    assert seen == {name for name, _ in task.model.named_parameters()}
    lrs = {group["name"]: group["lr"] for group in optimizer.param_groups}
    assert lrs["head"] == pytest.approx(cfg.optimizer.lr)
    assert lrs["stem+layer1/no_decay"] == pytest.approx(cfg.optimizer.lr / 9, rel=1e-6)


def test_a_one_epoch_run_is_the_unfrozen_phase_only(cars_root):
    for epochs, expected in ((1, [("unfrozen", 1)]), (2, [("frozen", 1), ("unfrozen", 1)])):
        task = cars.build(cars_cfg(f"trainer.epochs={epochs}", root=cars_root), torch.device("cpu"))
        assert [(phase.name, phase.epochs) for phase in task.phases] == expected


# ------------------------------------------------------------------------------------------------ training
def test_flip_tta_averages_the_logits_of_both_views():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    x = torch.randn(2, 1, 3, 4)
    expected = (model(x) + model(x.flip(-1))) / 2
    torch.testing.assert_close(cars.predict(model, x, tta=True), expected)
    torch.testing.assert_close(cars.predict(model, x, tta=False), model(x))


def test_a_small_resnet_learns_the_fixture(cars_root):
    task = cars.build(cars_cfg("recipe.label_smoothing=0.0", root=cars_root), torch.device("cpu"))
    model, unfrozen = task.model, task.phases[-1]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for epoch in range(4):
        model.train()
        unfrozen.enter(model)
        for batch in task.batches(torch.Generator().manual_seed(epoch)):
            loss, _ = task.loss(model, batch, None)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3])
    model.eval()
    with torch.no_grad():
        metrics = task.evaluate(model, "test")
    assert set(metrics) == {"test_loss", "test_acc"}


# ------------------------------------------------------------------------------------------------ one run
def test_the_two_phases_are_one_run_and_a_kill_in_phase_two_resumes_bitwise(tmp_path, cars_root, monkeypatch):
    """Phase 1 (epoch 1) leaves the body as initialised; phase 2 trains every stage at its own lr; Ctrl-C in
    phase 2 and a resume end bitwise where an uninterrupted run ends, in one folder with one row."""
    from runner import checkpoint, results
    from runner.run import train
    from tests.conftest import assert_same_run, interrupting

    def cfg(*extra: str):
        return cars_cfg("trainer.epochs=3", "recipe.frozen_fraction=0.34", "trainer.progress=false",
                        f"results_dir={tmp_path / 'results'}", *extra, root=cars_root)  # fmt: skip

    initial = cars.build(cfg(), torch.device("cpu")).model.state_dict()
    straight = train(cfg(f"run_dir={tmp_path / 'straight'}"))
    build = cars.build

    def frozen_body(state):  # phase 1 (epoch 1) left the body as initialised
        body = {k: v for k, v in state["model"].items() if not k.startswith("fc.")}
        assert all(torch.equal(v, initial[k]) for k, v in body.items())

    monkeypatch.setattr(
        cars, "build", interrupting(build, at_batch=1, after_epoch=1, inspect=frozen_body)
    )  # Ctrl-C at the second batch of epoch 2, the first of phase 2
    assert train(cfg(f"run_dir={tmp_path / 'resumed'}"))["status"] == "interrupted"
    monkeypatch.setattr(cars, "build", build)
    assert train(cfg(f"run_dir={tmp_path / 'resumed'}", "resume=true"))["status"] == "finished"
    assert straight["status"] == "finished"
    assert_same_run(tmp_path / "straight", tmp_path / "resumed")
    rows = results.read_rows(tmp_path / "results" / "runs.csv")
    assert sorted(Path(r["run_dir"]).name for r in rows) == [
        "resumed",
        "straight",
    ]  # a row per run, not phase
    state = checkpoint.load(tmp_path / "resumed")
    assert state["phase"] == 1 and state["epoch"] == 3
    lrs = {g["name"]: g["initial_lr"] for g in state["optimizer"]["param_groups"]}
    assert lrs["head"] == pytest.approx(3e-3) and lrs["stem+layer1"] == pytest.approx(3e-3 / 9, rel=1e-6)
