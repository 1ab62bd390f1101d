"""make bench, section `cars`: how fast does the Stanford Cars recipe train and evaluate ResNet50 at 224 px on
this machine, against the plain torchvision loop, and what epoch time does that imply for Stanford Cars?

Variants, each timed on every device in `devices` that this machine has (the CPU here; a CUDA GPU when one is
visible; a device it lacks gets one row saying so):

- plain loop: what a user writes first. torchvision.models.resnet50(weights=None), a DataLoader over an
  ImageFolder with RandomResizedCrop/flip (inference: Resize/CenterCrop) and ToTensor/Normalize, fp32,
  contiguous memory, torch.optim.Adam at the recipe's lr, `loss.backward(); optimizer.step();
  optimizer.zero_grad()`; inference in eval mode under no_grad.
- recipe: the cars recipe's build (recipes/cars.py) on the same photos (data=cars_folder): its decoding
  (uint8 crops, normalized on the device), model, label-smoothed loss and discriminative-lr parameter groups;
  runner.optim's Adam-L2 and the one-cycle schedule, stepped as runner/loop.py's fit steps them (schedule,
  autocast, backward, step, zero_grad(set_to_none=True)); inference through runner.loop.evaluate and the
  recipe's evaluate. bf16 autocast or fp32, channels_last on or off, and (inference) flip TTA.

Training times the unfrozen phase (the whole net, 40 of the recipe's 60 epochs; model.weights=none, as this
machine has no internet: random weights train at the same speed). The photos are synthetic JPEGs of
`photo_size`, written to a temporary folder, one class-per-folder dataset shared by all variants. A
measurement builds its model afresh, runs `warmup_steps` untimed steps, then times `timed_steps` steps (data
decoding included, as in a real epoch); the variants are interleaved `repeats` times, and the CSV has the
median and range of images/s, the ratio to the plain loop's median (same mode, same device) and the minutes
per Stanford Cars epoch (8,144 training images) or test pass (8,041 images) it implies.
"""

from __future__ import annotations

import itertools
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import torchvision
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torchvision import transforms

from bench.harness import section_config
from recipes import cars
from runner.config import check, compose, validate
from runner.device import autocast
from runner.loop import evaluate, train_mode
from runner.optim import build_optimizer
from runner.results import write_text
from runner.schedule import build_schedule


# ------------------------------------------------------------------------------------------------ settings
class Device(StrEnum):
    cpu = "cpu"
    cuda = "cuda"


@dataclass
class CarsBenchConfig:
    """conf/bench_cars.yaml: every value's unit is in the YAML file's comments."""

    arch: cars.Arch = cars.Arch.resnet50
    image_size: int = 224
    photo_size: list[int] = field(default_factory=lambda: [400, 300])
    classes: int = 196
    devices: list[Device] = field(default_factory=lambda: [Device.cpu, Device.cuda])
    batch_size: dict[str, int] = field(default_factory=lambda: {"cpu": 8, "cuda": 128})
    warmup_steps: int = 1
    timed_steps: int = 4
    repeats: int = 2
    tta: bool = True
    threads: int | None = None
    train_images: int = 8144
    test_images: int = 8041
    plain_workers: int = 0
    plain_eval_crop: float = 0.875
    seed: int = 0

    def __post_init__(self) -> None:
        check(self.image_size > 0, "bench_cars.image_size", "must be > 0", self.image_size)
        ok = len(self.photo_size) == 2 and min(self.photo_size) > 0
        check(ok, "bench_cars.photo_size", "must be [width, height] in px, both > 0", self.photo_size)
        check(self.classes >= 2, "bench_cars.classes", "must be >= 2", self.classes)
        check(len(self.devices) > 0, "bench_cars.devices", "must name at least one device", self.devices)
        for device in self.devices:
            size = self.batch_size.get(str(device), 0)
            check(size > 0, f"bench_cars.batch_size.{device}", "must be > 0 for every device timed", size)
        check(self.warmup_steps >= 0, "bench_cars.warmup_steps", "must be >= 0", self.warmup_steps)
        check(self.timed_steps > 0, "bench_cars.timed_steps", "must be > 0", self.timed_steps)
        check(self.repeats > 0, "bench_cars.repeats", "must be > 0", self.repeats)
        check(
            self.threads is None or self.threads > 0,
            "bench_cars.threads",
            "must be > 0 or null",
            self.threads,
        )
        check(self.train_images > 0, "bench_cars.train_images", "must be > 0", self.train_images)
        check(self.test_images > 0, "bench_cars.test_images", "must be > 0", self.test_images)
        check(self.plain_workers >= 0, "bench_cars.plain_workers", "must be >= 0", self.plain_workers)
        ok = 0 < self.plain_eval_crop <= 1
        check(ok, "bench_cars.plain_eval_crop", "must be in (0, 1]", self.plain_eval_crop)


def settings(**overrides) -> DictConfig:
    """conf/bench_cars.yaml, checked against CarsBenchConfig; `overrides` replace values (tests shrink it)."""
    s = section_config("cars", CarsBenchConfig)
    if overrides:
        s = OmegaConf.merge(s, overrides)
        validate(s)
    return s


# ------------------------------------------------------------------------------------------------ variants
@dataclass(frozen=True)
class Variant:
    name: str
    mode: str  # train | infer
    precision: str  # fp32 | bf16
    channels_last: bool
    tta: bool = False
    plain: bool = False


PLAIN_TRAIN = Variant("plain loop (DataLoader + ImageFolder, fp32, torch.optim.Adam)", "train", "fp32", False,
                      plain=True)  # fmt: skip
PLAIN_INFER = Variant("plain loop (DataLoader + ImageFolder, fp32, eval + no_grad)", "infer", "fp32", False,
                      plain=True)  # fmt: skip
RECIPE = [  # the recipe's default first (bf16 autocast + channels_last), then each switch off
    ("recipe (bf16 + channels_last)", "bf16", True),
    ("recipe, fp32 + channels_last", "fp32", True),
    ("recipe, bf16, no channels_last", "bf16", False),
    ("recipe, fp32, no channels_last", "fp32", False),
]


def variants(s: DictConfig) -> list[Variant]:
    train = [Variant(name, "train", precision, last) for name, precision, last in RECIPE]
    infer = [Variant(name, "infer", precision, last) for name, precision, last in RECIPE]
    tta = [Variant(f"{RECIPE[0][0]}, flip TTA", "infer", "bf16", True, tta=True)] if s.tta else []
    return [PLAIN_TRAIN, *train, PLAIN_INFER, *infer, *tta]


# ------------------------------------------------------------------------------------------------ photos
def write_photos(root: Path, s: DictConfig, per_split: int) -> None:
    """train/<class>/*.jpg and test/<class>/*.jpg, `per_split` photos each spread over the classes: shaded
    fields of a random colour with noise (about a photo's JPEG decoding cost; nothing in them is learnt)."""
    rng = np.random.default_rng(s.seed)
    width, height = s.photo_size
    ramp = np.linspace(0, 1, width)[None, :, None] * np.linspace(0.5, 1, height)[:, None, None]
    for split in ("train", "test"):
        for i in range(per_split):
            label = i % s.classes
            colour = rng.integers(0, 256, 3)
            pixels = colour * ramp + rng.normal(0, 12, (height, width, 3))
            path = root / split / f"class_{label:03d}" / f"{i:05d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)


def photos_needed(s: DictConfig, devices: list[str]) -> int:
    """Photos per split: every class, and one epoch for all the steps a measurement takes."""
    batch = max(s.batch_size[d] for d in devices)
    return max(s.classes, batch * (s.warmup_steps + s.timed_steps))


# ------------------------------------------------------------------------------------------------ timing
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_s(step: Callable[[], int], warmup: int, timed: int, device: torch.device) -> float:
    """`warmup` untimed calls of step (each returns its images), then the images/s of `timed` calls."""
    for _ in range(warmup):
        step()
    synchronize(device)
    started, seen = time.perf_counter(), 0
    for _ in range(timed):
        seen += step()
    synchronize(device)
    return seen / (time.perf_counter() - started)


def forever(epoch: Callable[[int], Iterator]) -> Iterator:
    """Batches of epoch 0, 1, 2, ...: a measurement never runs out."""
    return (batch for index in itertools.count() for batch in epoch(index))


def warm_forward(model: torch.nn.Module, batch: int, size: int, memory_format, steps: int) -> None:
    """Inference warmup: forward passes of a batch of the timed shape (kernel selection, allocations)."""
    x = torch.zeros(batch, 3, size, size, device=next(model.parameters()).device)
    for _ in range(steps):
        model(x.contiguous(memory_format=memory_format))


# -------------------------------------------------------------------------------------------- the plain loop
def plain_model(s: DictConfig, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(s.seed)
    return torchvision.models.get_model(str(s.arch), weights=None, num_classes=s.classes).to(device)


def plain_speed(variant: Variant, s: DictConfig, root: Path, lr: float, device: torch.device) -> float:
    """What a user writes first: ImageFolder + DataLoader, fp32, contiguous, torch.optim.Adam's defaults."""
    batch = s.batch_size[device.type]
    normalize = [transforms.ToTensor(), transforms.Normalize(cars.IMAGENET_MEAN, cars.IMAGENET_STD)]
    model = plain_model(s, device)
    if variant.mode == "train":
        augment = [transforms.RandomResizedCrop(s.image_size), transforms.RandomHorizontalFlip()]
        dataset = torchvision.datasets.ImageFolder(root / "train", transforms.Compose([*augment, *normalize]))
        generator = torch.Generator().manual_seed(s.seed)
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, generator=generator,
                                             num_workers=s.plain_workers)  # fmt: skip
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        model.train()
        batches = forever(lambda _: iter(loader))

        def step() -> int:
            x, y = next(batches)
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            return len(y)

        return images_per_s(step, s.warmup_steps, s.timed_steps, device)
    resize = [transforms.Resize(round(s.image_size / s.plain_eval_crop)), transforms.CenterCrop(s.image_size)]
    dataset = torchvision.datasets.ImageFolder(root / "test", transforms.Compose([*resize, *normalize]))
    subset = torch.utils.data.Subset(dataset, range(batch * s.timed_steps))
    loader = torch.utils.data.DataLoader(subset, batch_size=batch, num_workers=s.plain_workers)
    model.eval()
    with torch.no_grad():
        warm_forward(model, batch, s.image_size, torch.contiguous_format, s.warmup_steps)

        def one_pass() -> int:
            seen = 0
            for x, y in loader:
                model(x.to(device)).argmax(1).eq(y.to(device)).sum()
                seen += len(y)
            return seen

        return images_per_s(one_pass, 0, 1, device)


# ------------------------------------------------------------------------------------------------ recipe
def recipe_config(variant: Variant, s: DictConfig, root: Path, device: torch.device) -> DictConfig:
    """The cars recipe's own config, on the photos, unfrozen (its 40-epoch phase), this variant's switches."""
    batch = s.batch_size[device.type]
    return compose([
        "recipe=cars", "data=cars_folder", f"data.root={root}", f"data.test_limit={batch * s.timed_steps}",
        f"model.arch={s.arch}", "model.weights=none", "recipe.frozen_fraction=0",
        f"recipe.image_size={s.image_size}", f"recipe.channels_last={str(variant.channels_last).lower()}",
        f"recipe.tta={str(variant.tta).lower()}", f"trainer.precision={variant.precision}",
        f"trainer.batch_size={batch}", f"trainer.eval_batch_size={batch}", f"trainer.device={device.type}",
        "trainer.progress=false", f"seed={s.seed}",
    ])  # fmt: skip


def recipe_speed(variant: Variant, s: DictConfig, root: Path, device: torch.device) -> float:
    cfg = recipe_config(variant, s, root, device)
    task = cars.build(cfg, device)
    model = task.model
    if variant.mode == "train":
        phase = task.run_phases(cfg.trainer.epochs)[0]
        train_mode(model, phase)
        optimizer = build_optimizer(model, cfg, task.train_size, phase.param_groups)
        schedule = build_schedule(optimizer, cfg, task.steps_per_epoch, phase.epochs)
        task.epoch_start(0)
        batches = forever(lambda epoch: task.batches(torch.Generator().manual_seed(s.seed + epoch)))
        steps = itertools.count()

        def step() -> int:  # runner/loop.py's fit, minus its bookkeeping
            batch = next(batches)
            schedule.apply(optimizer, next(steps), task.lr_scale(batch))
            with autocast(cfg, device):
                loss, _ = task.loss(model, batch, None)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return task.count(batch)

        return images_per_s(step, s.warmup_steps, s.timed_steps, device)
    memory_format = torch.channels_last if variant.channels_last else torch.contiguous_format
    model.eval()
    with torch.no_grad(), autocast(cfg, device):
        warm_forward(model, cfg.trainer.eval_batch_size, s.image_size, memory_format, s.warmup_steps)

    def one_pass() -> int:
        evaluate(task, None, cfg, device, ["test"])  # no optimizer: no NT-ASGD weight averaging to apply
        return cfg.data.test_limit

    return images_per_s(one_pass, 0, 1, device)


# ------------------------------------------------------------------------------------------------ section
def available(device: str) -> bool:
    return device == "cpu" or torch.cuda.is_available()


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return "cpu"


def measure(s: DictConfig, devices: list[torch.device], root: Path) -> dict[tuple[str, Variant], list[float]]:
    lr = compose(["recipe=cars"]).optimizer.lr  # the plain loop's Adam gets the recipe's peak lr
    speeds: dict[tuple[str, Variant], list[float]] = {}
    for repeat in range(s.repeats):
        for device in devices:
            print(f"cars: {device.type}, pass {repeat + 1}/{s.repeats}", flush=True)
            for variant in variants(s):
                speed = (
                    plain_speed(variant, s, root, lr, device)
                    if variant.plain
                    else recipe_speed(variant, s, root, device)
                )
                speeds.setdefault((device.type, variant), []).append(speed)
    return speeds


WORKERS_NOTE = "the timed pass includes starting the recipe's decoding workers, as every evaluation does"


def table(s: DictConfig, speeds: dict[tuple[str, Variant], list[float]], missing: list[str]) -> pd.DataFrame:
    rows = []
    for (device, variant), values in speeds.items():
        median = statistics.median(values)
        plain = statistics.median(speeds[(device, PLAIN_TRAIN if variant.mode == "train" else PLAIN_INFER)])
        epoch_images = s.train_images if variant.mode == "train" else s.test_images
        rows.append({
            "variant": variant.name, "mode": variant.mode, "precision": variant.precision,
            "channels_last": variant.channels_last, "tta": variant.tta,
            "images_per_s": median, "min_images_per_s": min(values), "max_images_per_s": max(values),
            "ratio_vs_plain": median / plain, "epoch_images": epoch_images,
            "implied_epoch_min": epoch_images / median / 60, "device": describe(torch.device(device)),
            "batch_size": s.batch_size[device], "image_size": s.image_size,
            "timed_images": s.batch_size[device] * s.timed_steps, "repeats": len(values),
            "note": WORKERS_NOTE if (device, variant.mode, variant.plain) == ("cuda", "infer", False) else "",
        })  # fmt: skip
    for device in missing:
        rows.append({"variant": "all", "device": device, "note": f"not measured: no {device} device visible "
                     "in this run (torch.cuda.is_available() is False)"})  # fmt: skip
    counts = ["epoch_images", "batch_size", "image_size", "timed_images", "repeats"]
    return pd.DataFrame(rows).astype({key: "Int64" for key in counts})  # blank, not NaN, where not measured


def run(cfg: DictConfig, out: Path, env: dict, s: DictConfig | None = None) -> list[Path]:
    """The cars section: `s` is conf/bench_cars.yaml (tests pass a smaller one); cfg, the bench_train config,
    is not read."""
    s = s if s is not None else settings()
    threads = torch.get_num_threads()
    if s.threads is not None:
        torch.set_num_threads(s.threads)
    present = [str(d) for d in s.devices if available(str(d))]
    missing = [str(d) for d in s.devices if not available(str(d))]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            write_photos(root, s, photos_needed(s, present) if present else s.classes)
            speeds = measure(s, [torch.device(d) for d in present], root)
        frame = table(s, speeds, missing).assign(**(env | {"threads": torch.get_num_threads()}))
    finally:
        torch.set_num_threads(threads)
    path = out / "cars_speed.csv"
    write_text(path, frame.to_csv(index=False))
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        print(frame.drop(columns=list(env)).to_string(index=False), flush=True)
    return [path]
