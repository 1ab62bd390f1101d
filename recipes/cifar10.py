"""CIFAR-10 recipe: AdamW + one-cycle (fast.ai, "AdamW and super-convergence", 2018) on an airbench-style net.

Reproduces: fast.ai's CIFAR-10 setting (AdamW, wd 0.1 in torch's convention, betas (0.95, 0.99) with beta1
cycled against the lr, one-cycle with the last 7.5% annealed to lr/1000) on the convnet of airbench94
(KellerJordan/cifar10-airbench): three conv-pool-BN-GELU blocks, label smoothing 0.2, and airbench94's speed
tricks, each a switch in conf/recipe/cifar10.yaml: a frozen patch-whitening stem initialised from the training
patches, BatchNorm scales frozen at 1, alternating flips, flip + translate test-time augmentation; batch 256 at
peak lr 6e-3 (conf/optimizer/adamw_cifar10.yaml); channels_last and bf16 measured per machine at the start of a
run (runner/machine.py) and written to its config.yaml; the data held in memory as uint8 tensors.
Expected, offline on the real Fashion-MNIST (data=fashion_mnist), 5 epochs, 2 CPU cores: see docs/recipes.md
and results/bench/time_to_accuracy.csv for the figures and the CPU they were measured on (make bench). The
earlier recipe's 94.10 +- 0.16% (6 epochs, seeds 0-2, same test set and metric) is the reference.
Commands:
    adamrun train recipe=cifar10                              # real CIFAR-10, downloaded to data.root
    adamrun train recipe=cifar10 data=fashion_mnist trainer.epochs=5   # offline (make demo)
    adamrun train recipe=cifar10_trial data=fashion_mnist     # the trial profile a study's trials use
    adamrun train recipe=cifar10 optimizer=adam_l2 optimizer.weight_decay=5e-4 trainer.epochs=10
"""

from __future__ import annotations

import copy
import math
import pickle
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import MISSING, DictConfig
from torch import nn

from runner import machine
from runner.config import Precision, check
from runner.data import ImageDataConfig, holdout, read_fashion_mnist, read_once
from runner.device import use_bf16
from runner.errors import UsageError
from runner.recipe import ACCURACY, ParamGroup, Task


# ------------------------------------------------------------------------------------------------ schema
class Flip(StrEnum):
    none = "none"
    random = "random"  # each image flipped with probability 1/2, drawn anew every epoch
    alternating = "alternating"  # drawn once, then every image flipped the other way each epoch (airbench)


class TTA(StrEnum):
    none = "none"
    flip = "flip"  # the image and its mirror
    flip_translate = "flip_translate"  # and both shifted one pixel up-left and down-right (airbench94)


@dataclass
class Cifar10Recipe:
    name: str = MISSING
    widths: list[int] = MISSING  # channels of the stem and the three blocks
    label_smoothing: float = MISSING
    crop_padding: int = MISSING  # pixels of random translation
    flip: Flip = MISSING
    bn_momentum: float = MISSING
    bn_scale: bool = MISSING  # false: BatchNorm's scale frozen at 1 (airbench), only its bias trains
    bias_lr_mult: float = MISSING  # lr multiplier of the BatchNorm biases
    scaling: float = MISSING  # logits multiplier (airbench), temperature of the softmax
    channels_last: bool | None = MISSING  # null: the faster of the two on this machine, measured
    tta: TTA = MISSING
    whiten: bool = MISSING  # the stem is a frozen patch-whitening conv, initialised from training patches
    whiten_patch: int = MISSING  # pixels: the side of a whitened patch
    whiten_images: int = MISSING  # training images whose patches estimate the covariance
    whiten_eps: float = MISSING  # added to the covariance's eigenvalues before their inverse square root
    settle_steps: int = MISSING  # timed training steps per alternative when a setting is measured

    def __post_init__(self) -> None:
        check(len(self.widths) == 4, "recipe.widths", "must be four channel counts", self.widths)
        check(all(w > 0 for w in self.widths), "recipe.widths", "must all be > 0", self.widths)
        check(
            0 <= self.label_smoothing < 1, "recipe.label_smoothing", "must be in [0, 1)", self.label_smoothing
        )
        check(self.crop_padding >= 0, "recipe.crop_padding", "must be >= 0", self.crop_padding)
        check(0 <= self.bn_momentum <= 1, "recipe.bn_momentum", "must be in [0, 1]", self.bn_momentum)
        check(self.scaling > 0, "recipe.scaling", "must be > 0", self.scaling)
        check(self.bias_lr_mult > 0, "recipe.bias_lr_mult", "must be > 0", self.bias_lr_mult)
        check(self.whiten_patch > 0, "recipe.whiten_patch", "must be > 0", self.whiten_patch)
        check(self.whiten_images > 0, "recipe.whiten_images", "must be > 0", self.whiten_images)
        check(self.whiten_eps > 0, "recipe.whiten_eps", "must be > 0", self.whiten_eps)
        check(self.settle_steps > 0, "recipe.settle_steps", "must be > 0", self.settle_steps)


SCHEMAS = {"recipe": Cifar10Recipe, "data": ImageDataConfig}

# ------------------------------------------------------------------------------------------------ data


@dataclass
class Images:
    train_x: torch.Tensor  # uint8, N x C x H x W
    train_y: torch.Tensor  # int64, N
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: int
    val_x: torch.Tensor | None = None  # held out of the training images (data.val_size)
    val_y: torch.Tensor | None = None


CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR10_TEST = ["test_batch"]
CIFAR10_PIXELS = 3 * 32 * 32


@read_once
def read_cifar10_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One python-pickle batch of cifar-10-python.tar.gz: 'data' N x 3072 uint8 (RGB planes), 'labels'."""
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="latin1")
        data = np.asarray(batch["data"], dtype=np.uint8)
        labels = np.asarray(batch["labels"], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError) as err:
        raise UsageError(f"{path} is not a CIFAR-10 python batch ({type(err).__name__}: {err})") from err
    if data.ndim != 2 or data.shape[1] != CIFAR10_PIXELS or len(data) != len(labels):
        raise UsageError(
            f"{path} holds {data.shape} pixels for {len(labels)} labels; expected N x {CIFAR10_PIXELS}"
        )
    return data.reshape(-1, 3, 32, 32), labels


def read_cifar10_batches(folder: Path, names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    batches = [read_cifar10_batch(folder / name) for name in names]
    xs, ys = zip(*batches, strict=True)
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def load_cifar10(cfg: DictConfig) -> Images:
    root = Path(cfg.root).expanduser()
    folder = root / CIFAR10_FOLDER
    if not all((folder / name).exists() for name in CIFAR10_TRAIN + CIFAR10_TEST):
        if not cfg.download:
            raise UsageError(f"CIFAR-10 not found in {folder}; set data.download=true or data.root=<folder>")
        download_cifar10(root)
    train_x, train_y = read_cifar10_batches(folder, CIFAR10_TRAIN)
    test_x, test_y = read_cifar10_batches(folder, CIFAR10_TEST)
    return Images(train_x, train_y, test_x, test_y, classes=10)


def download_cifar10(root: Path) -> None:
    from torchvision.datasets import CIFAR10

    try:
        CIFAR10(str(root), train=True, download=True)
    except OSError as err:  # URLError and friends: no network, or the mirror is down
        raise UsageError(f"could not download CIFAR-10 to {root}: {err}") from err


def load_fashion_mnist(cfg: DictConfig) -> Images:
    arrays = read_fashion_mnist(Path(cfg.root).expanduser())
    tensors = {key: torch.from_numpy(array.copy()) for key, array in arrays.items()}
    return Images(
        tensors["train_x"][:, None], tensors["train_y"].long(), tensors["test_x"][:, None],
        tensors["test_y"].long(), 10,
    )  # fmt: skip


LOADERS = {"cifar10": load_cifar10, "fashion_mnist": load_fashion_mnist}


def load_images(cfg: DictConfig) -> Images:
    """The data's images, limited to the first train_limit / test_limit, with data.val_size training images
    held out for validation (stratified by class; which ones depends on data.val_seed only)."""
    if cfg.name not in LOADERS:
        raise UsageError(f"this recipe cannot read data '{cfg.name}'; valid: {', '.join(LOADERS)}")
    images = LOADERS[cfg.name](cfg)
    train_x, train_y = images.train_x[: cfg.train_limit], images.train_y[: cfg.train_limit]
    check(
        cfg.val_size < len(train_y), "data.val_size", f"must be below the {len(train_y)} training images",
        cfg.val_size,
    )  # fmt: skip
    train, val = (torch.from_numpy(i) for i in holdout(train_y.numpy(), cfg.val_size, cfg.val_seed))
    return Images(
        train_x[train], train_y[train], images.test_x[: cfg.test_limit], images.test_y[: cfg.test_limit],
        images.classes, train_x[val] if len(val) else None, train_y[val] if len(val) else None,
    )  # fmt: skip


def random_crop_flip(
    padded: torch.Tensor, padding: int, flip: Flip, gen: torch.Generator, flipped: torch.Tensor | None = None
) -> torch.Tensor:
    """Random translations by up to `padding` pixels and horizontal flips of a uint8 batch, in one gather.
    `flipped` (bool per image) are the batch's alternating flips; random ones are drawn from `gen`."""
    n, _, height, width = padded.shape
    height, width = height - 2 * padding, width - 2 * padding
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=gen)
    flips = torch.rand(n, generator=gen) < 0.5
    rows = (dy[:, None] + torch.arange(height)).to(padded.device)
    cols = (dx[:, None] + torch.arange(width)).to(padded.device)
    if flip != Flip.none:
        flips = (flips if flip == Flip.random else flipped).to(padded.device)
        cols = torch.where(flips[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=padded.device)[:, None, None]
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(
        0, 3, 1, 2
    )  # gather gives N x H x W x C


def alternating_flips(n: int, seed: int, epoch: int) -> torch.Tensor:
    """airbench's flips: a random half of the images drawn once per run, then every image flipped the other
    way each epoch, so each sees both views equally often; a pure function of (seed, epoch)."""
    drawn = torch.rand(n, generator=torch.Generator().manual_seed(seed)) < 0.5
    return drawn ^ bool(epoch % 2)


# ------------------------------------------------------------------------------------------------ model


class Scale(nn.Module):
    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def conv_block(c_in: int, c_out: int, bn_momentum: float) -> nn.Sequential:
    """airbench's ConvGroup: conv, 2x2 max-pool, BN, GELU, conv, BN, GELU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.MaxPool2d(2),
        nn.BatchNorm2d(c_out, momentum=bn_momentum),
        nn.GELU(),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out, momentum=bn_momentum),
        nn.GELU(),
    )


def stem(in_channels: int, recipe: DictConfig) -> list[nn.Module]:
    """A 3x3 conv + BN + GELU of widths[0] channels, or airbench's whitening conv (2 x C x patch² filters, no
    padding, its weights set by `whiten` and frozen) + GELU."""
    if recipe.whiten:
        patch = recipe.whiten_patch
        return [nn.Conv2d(in_channels, 2 * in_channels * patch * patch, patch, bias=True), nn.GELU()]
    return [
        nn.Conv2d(in_channels, recipe.widths[0], 3, padding=1, bias=False),
        nn.BatchNorm2d(recipe.widths[0], momentum=recipe.bn_momentum),
        nn.GELU(),
    ]


def make_net(in_channels: int, classes: int, recipe: DictConfig) -> nn.Sequential:
    first = stem(in_channels, recipe)
    widths = [first[0].out_channels, *recipe.widths[1:]]
    net = nn.Sequential(
        *first,
        *(
            conv_block(c_in, c_out, recipe.bn_momentum)
            for c_in, c_out in zip(widths, widths[1:], strict=False)
        ),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Linear(widths[-1], classes, bias=False),
        Scale(recipe.scaling),
    )
    for norm in batch_norms(net):
        norm.weight.requires_grad_(recipe.bn_scale)
    return net


def batch_norms(net: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]


def patches(x: torch.Tensor, side: int) -> torch.Tensor:
    """Every side x side patch of a float batch, one row each: (N * positions) x (C * side * side)."""
    c = x.shape[1]
    return x.unfold(2, side, 1).unfold(3, side, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, c * side * side)


def whiten(conv: nn.Conv2d, images: torch.Tensor, eps: float) -> None:
    """airbench's whitening init: the filters are the eigenvectors of the patches' (uncentred) covariance
    scaled by 1/sqrt(eigenvalue + eps), and their negatives, so that the first half of the outputs (before the
    bias) has identity covariance on these patches; the weights are then frozen (the bias still trains)."""
    rows = patches(images.double(), conv.kernel_size[0])
    eigenvalues, eigenvectors = torch.linalg.eigh(rows.T @ rows / len(rows))
    filters = (eigenvectors.T / (eigenvalues + eps).sqrt()[:, None]).reshape(-1, *conv.weight.shape[1:])
    with torch.no_grad():
        conv.weight.copy_(torch.cat([filters, -filters]).to(conv.weight.dtype))
        conv.bias.zero_()
    conv.weight.requires_grad_(False)


def param_groups(net: nn.Module, bias_lr_mult: float) -> list[ParamGroup]:
    """The BatchNorm biases in a group of their own, at bias_lr_mult times the lr (airbench); the rest."""
    biases = {id(norm.bias) for norm in batch_norms(net)}
    trained = [p for p in net.parameters() if p.requires_grad]
    return [
        ParamGroup([p for p in trained if id(p) not in biases], name="weights"),
        ParamGroup([p for p in trained if id(p) in biases], lr_mult=bias_lr_mult, name="bn_biases"),
    ]


# ------------------------------------------------------------------------------------------------ task


def build(cfg: DictConfig, device: torch.device) -> Task:
    torch.manual_seed(cfg.seed)
    images = load_images(cfg.data)
    recipe = cfg.recipe
    pad, side = recipe.crop_padding, min(images.train_x.shape[-2:])
    check(pad < side, "recipe.crop_padding", f"must be below the image side ({side} pixels)", pad)
    train_x = images.train_x.float() / 255
    mean, std = train_x.mean(dim=(0, 2, 3), keepdim=True), train_x.std(dim=(0, 2, 3), keepdim=True)
    padded = F.pad(images.train_x, (pad, pad, pad, pad), mode="reflect" if pad else "constant").to(device)
    train_y = images.train_y.to(device)
    mean, std = mean.to(device), std.to(device)
    model = make_net(images.train_x.shape[1], images.classes, recipe).to(device)
    if recipe.whiten:
        whiten(model[0], ((train_x[: recipe.whiten_images] - mean.cpu()) / std.cpu()), recipe.whiten_eps)
    batch_size = cfg.trainer.batch_size
    n_train = len(train_y)
    first = ((images.train_x[:batch_size].to(device).float() / 255 - mean) / std, train_y[:batch_size])
    settled = settle(cfg, model, *first)
    memory_format = torch.channels_last if settled["recipe.channels_last"] else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    epoch_now = [0]  # the epoch whose batches are drawn: alternating flips depend on it

    def normalize(x_uint8: torch.Tensor) -> torch.Tensor:
        return ((x_uint8.to(device).float() / 255 - mean) / std).contiguous(memory_format=memory_format)

    held_out = {"test": (normalize(images.test_x), images.test_y.to(device))}
    if images.val_x is not None:
        held_out["val"] = (normalize(images.val_x), images.val_y.to(device))

    def batches(gen: torch.Generator):
        order = torch.randperm(n_train, generator=gen)
        flipped = alternating_flips(n_train, cfg.seed, epoch_now[0])
        for start in range(0, n_train, batch_size):
            idx = order[start : start + batch_size]
            augmented = random_crop_flip(padded[idx.to(device)], pad, recipe.flip, gen, flipped[idx])
            yield normalize(augmented), train_y[idx.to(device)]

    def loss(model: nn.Module, batch, state: None) -> tuple[torch.Tensor, None]:
        x, y = batch
        return F.cross_entropy(model(x), y, label_smoothing=recipe.label_smoothing), None

    def evaluate(model: nn.Module, split: str) -> dict[str, float]:
        x, y = held_out[split]
        logits = torch.cat([predict(model, xb, recipe.tta) for xb in x.split(cfg.trainer.eval_batch_size)])
        return {
            f"{split}_loss": F.cross_entropy(logits, y).item(),
            f"{split}_acc": (logits.argmax(1) == y).float().mean().item(),
        }

    def epoch_start(epoch: int) -> None:
        epoch_now[0] = epoch

    return Task(
        model=model,
        train_size=n_train,
        steps_per_epoch=math.ceil(n_train / batch_size),
        batches=batches,
        loss=loss,
        evaluate=evaluate,
        metric=ACCURACY,
        splits=tuple(sorted(held_out, reverse=True)),  # ("val", "test") or ("test",)
        param_groups=param_groups(model, recipe.bias_lr_mult),
        epoch_start=epoch_start,
        settled=settled,
    )


def predict(model: nn.Module, x: torch.Tensor, tta: TTA) -> torch.Tensor:
    """Logits in fp32; with test-time augmentation, averaged over the views airbench94 uses: the image and its
    mirror, then (flip_translate) half that and half the mean of both shifted one pixel each way."""
    logits = model(x).float()
    if tta == TTA.none:
        return logits
    logits = (logits + model(x.flip(-1)).float()) / 2
    if tta == TTA.flip:
        return logits
    height, width = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    shifted = [padded[..., :height, :width], padded[..., 2:, 2:]]
    return (logits + sum(predict(model, view, TTA.flip) for view in shifted) / 2) / 2


# ------------------------------------------------------------------------------------------------ machine


def settle(cfg: DictConfig, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """The settings measured on this machine where the config leaves them open (recipe.channels_last null;
    trainer.precision auto on hardware with bf16): each alternative times recipe.settle_steps training steps
    of a copy of the model on the batch (x, y), and the fastest wins. The choice goes into the run's
    config.yaml, so a resumed run uses it again without measuring."""
    layouts = [True, False] if cfg.recipe.channels_last is None else [cfg.recipe.channels_last]
    precision = Precision(cfg.trainer.precision)
    if precision == Precision.auto:
        precisions = [Precision.bf16, Precision.fp32] if use_bf16(precision, x.device) else [Precision.fp32]
    else:
        precisions = [precision]
    alternatives = [(layout, p) for layout in layouts for p in precisions]
    chosen = alternatives[0]
    if len(alternatives) > 1:
        seconds = {key: seconds_per_step(model, x, y, key, cfg.recipe.settle_steps) for key in alternatives}
        chosen = machine.fastest(seconds)
        print(machine.describe("(channels_last, precision)", seconds, chosen), flush=True)
    return {"recipe.channels_last": chosen[0], "trainer.precision": str(chosen[1])}


def seconds_per_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, setting: tuple, steps: int) -> float:
    """Seconds of one forward + backward of a copy of the model on (x, y) in `setting` (channels_last,
    precision): the median of `steps` timed steps (runner.machine)."""
    channels_last, precision = setting
    layout = torch.channels_last if channels_last else torch.contiguous_format
    trial, x = copy.deepcopy(model).to(memory_format=layout), x.contiguous(memory_format=layout)

    def step() -> None:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == Precision.bf16):
            loss = F.cross_entropy(trial(x), y)
        loss.backward()
        trial.zero_grad(set_to_none=True)

    return machine.seconds_per_step(step, steps)
