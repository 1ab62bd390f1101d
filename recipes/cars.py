"""Stanford Cars recipe: fine-tune an ImageNet ResNet50 the fast.ai way ("AdamW and super-convergence", 2018).

Reproduces: fast.ai's Stanford Cars run (sgugger/Adam-experiments, `fit_stanford_cars.py '(1e-2,3e-3)'
--wd=1e-3 --tta=True`): an ImageNet ResNet50 at 224 px, 60 epochs in two one-cycles in one run, 20 epochs with
the body frozen (only the new head trains, peak lr 1e-2) then 40 unfrozen (peak lr 3e-3 at the head, lower lrs
towards the input), Adam with betas (0.95, 0.99) and beta1 cycled 0.95 -> 0.85, L2 weight decay 1e-3, batch
128, the last 10% of each cycle annealed to lr/1000. fast.ai reported 90% test accuracy, 91% with TTA (earlier
reports needed 600 epochs).
Departures from fastai 0.7: a Linear head (fastai: concat pooling and a 512-unit MLP with BN and dropout); five
lr groups, geometric (fastai: three, lr/9, lr/3, lr); RandomResizedCrop + flip (fastai: a 5% zoom, 10-degree
rotations, lighting); label smoothing 0.1; flip TTA (fastai: the centre crop plus 4 augmented views).
Expected: fast.ai's 90% (91% TTA) came from a GPU and is not re-measured here. On this project's CPU (2-core AMD
EPYC with AVX512-BF16, one thread, bf16 autocast, channels_last) ResNet50 at 224 px trains about 6.5 images/s
unfrozen, 18 images/s with the body frozen, and evaluates 19 images/s (half that with TTA): the full 60 epochs
would take about 30 hours on one core, so the real run wants a GPU.
Commands:
    adamrun train recipe=cars data.root=/data/stanford_cars     # the .mat layout (conf/data/stanford_cars.yaml)
    adamrun train recipe=cars data=cars_folder data.root=<dir>  # class-per-folder mirrors: train/ and test/
    adamrun train recipe=cars data=fashion_mnist model.weights=none trainer.epochs=1 data.train_limit=512
    adamrun train recipe=cars recipe.progressive=[{start:0.0,size:128},{start:0.5,size:224}]

Data order and augmentation replay bitwise on a resume, whatever `recipe.workers` is: `batches(generator)`
draws the epoch's order and one seed per image from the generator in the training process, and the worker that
decodes an image seeds its transform's random draws with that image's seed alone.
"""

from __future__ import annotations

import math
import os
import pickle
import traceback
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from omegaconf import MISSING, DictConfig
from PIL import Image
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
from torchvision.transforms import v2

from runner.config import check
from runner.data import ImageDataConfig, holdout, read_fashion_mnist
from runner.errors import UsageError
from runner.recipe import ACCURACY, ParamGroup, Phase, Task

# ------------------------------------------------------------------------------------------------ config
DATASETS = ("stanford_cars", "cars_folder", "fashion_mnist")


@dataclass
class CarsDataConfig(ImageDataConfig):
    """runner's image data keys (root, limits, val_size, val_seed), for the three datasets this recipe reads."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.name in DATASETS, "data.name", f"must be one of {', '.join(DATASETS)}", self.name)
        check(
            not self.download, "data.download", "must be false: get the files by hand (see conf/data/)", True
        )


class Arch(StrEnum):
    """torchvision's ResNets: the stem, layer1-4 and fc that the lr groups and the new head rely on."""

    resnet18 = "resnet18"
    resnet34 = "resnet34"
    resnet50 = "resnet50"
    resnet101 = "resnet101"
    resnet152 = "resnet152"
    resnext50_32x4d = "resnext50_32x4d"
    wide_resnet50_2 = "wide_resnet50_2"


@dataclass
class CarsModelConfig:
    name: str = MISSING
    arch: Arch = MISSING
    weights: str = MISSING  # imagenet | none | a torchvision weights name (IMAGENET1K_V1) | a state_dict file


@dataclass
class ProgressiveStage:
    start: float = MISSING  # fraction of the run from which this size applies
    size: int = MISSING  # px


@dataclass
class CarsRecipeConfig:
    name: str = MISSING
    image_size: int = MISSING
    eval_crop: float = MISSING
    crop_scale: list[float] = MISSING
    crop_ratio: list[float] = MISSING
    flip: bool = MISSING
    label_smoothing: float = MISSING
    tta: bool = MISSING
    channels_last: bool = MISSING
    workers: int | None = MISSING
    frozen_fraction: float = MISSING
    frozen_lr_mult: float = MISSING
    frozen_bn_eval: bool = MISSING
    stage_lr_div: float = MISSING
    progressive: list[ProgressiveStage] = MISSING

    def __post_init__(self) -> None:
        check(self.image_size > 0, "recipe.image_size", "must be > 0", self.image_size)
        check(0 < self.eval_crop <= 1, "recipe.eval_crop", "must be in (0, 1]", self.eval_crop)
        for key in ("crop_scale", "crop_ratio"):
            low_high = getattr(self, key)
            ok = len(low_high) == 2 and 0 < low_high[0] <= low_high[1]
            check(ok, f"recipe.{key}", "must be [low, high] with 0 < low <= high", low_high)
        check(
            self.crop_scale[1] <= 1,
            "recipe.crop_scale",
            "must be fractions of the image (<= 1)",
            self.crop_scale,
        )
        check(
            0 <= self.label_smoothing < 1, "recipe.label_smoothing", "must be in [0, 1)", self.label_smoothing
        )
        check(
            self.workers is None or self.workers >= 0, "recipe.workers", "must be >= 0 or null", self.workers
        )
        check(
            0 <= self.frozen_fraction <= 1,
            "recipe.frozen_fraction",
            "must be in [0, 1]",
            self.frozen_fraction,
        )
        check(self.frozen_lr_mult > 0, "recipe.frozen_lr_mult", "must be > 0", self.frozen_lr_mult)
        check(self.stage_lr_div >= 1, "recipe.stage_lr_div", "must be >= 1", self.stage_lr_div)
        self.check_progressive()

    def check_progressive(self) -> None:
        starts = [stage.start for stage in self.progressive]
        if starts:
            ok = (
                starts[0] == 0
                and all(a < b for a, b in zip(starts, starts[1:], strict=False))
                and starts[-1] < 1
            )
            check(ok, "recipe.progressive", "starts must rise from 0.0 and stay below 1", starts)
        for stage in self.progressive:
            check(stage.size > 0, "recipe.progressive", "sizes must be > 0", stage.size)


SCHEMAS = {"recipe": CarsRecipeConfig, "data": CarsDataConfig, "model": CarsModelConfig}

# ------------------------------------------------------------------------------------------------ data
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB statistics the torchvision ImageNet weights were trained with
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageFiles:
    """Image files, decoded to RGB on access (in the DataLoader workers)."""

    side = None  # photos of any size: the transforms crop and resize them

    def __init__(self, paths: list[str]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Image.Image:
        path = self.paths[index]
        try:
            with Image.open(path) as image:
                return image.convert("RGB")  # the dataset holds a few greyscale JPEGs
        except OSError as err:  # PIL.UnidentifiedImageError, a truncated file
            raise UsageError(f"cannot decode image {path} ({err})") from err

    def take(self, indices) -> ImageFiles:
        return ImageFiles([self.paths[i] for i in indices])

    def check(self) -> None:
        """Every file exists and starts like an image (PIL reads the header only: about 2 s for all of Cars),
        so a half-copied dataset fails before training; a file broken further in fails when decoded."""
        for path in self.paths:
            if not Path(path).is_file():
                raise UsageError(f"image missing: {path} (the annotations list it)")
            try:
                Image.open(path).close()
            except OSError as err:
                raise UsageError(f"cannot read image {path} ({err})") from err


class ImageArray:
    """uint8 images in memory, N x C x H x W (Fashion-MNIST); the transforms make them RGB."""

    def __init__(self, pixels: torch.Tensor):
        self.pixels = pixels
        self.side = min(pixels.shape[-2:]) if len(pixels) else None  # px: all images share one size

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.pixels[index]

    def take(self, indices) -> ImageArray:
        return ImageArray(self.pixels[torch.as_tensor(indices, dtype=torch.long)])

    def check(self) -> None:
        pass


@dataclass
class Examples:
    images: ImageFiles | ImageArray
    labels: torch.Tensor  # int64, 0 .. classes - 1

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, indices) -> Examples:
        indices = np.asarray(indices, dtype=np.int64)
        return Examples(self.images.take(indices), self.labels[torch.from_numpy(indices)])

    def first(self, limit: int | None) -> Examples:
        return self if limit is None else self.take(np.arange(min(limit, len(self))))


@dataclass
class Splits:
    train: Examples
    val: Examples  # empty when data.val_size is 0
    test: Examples
    classes: int


# The .mat layout of torchvision.datasets.StanfordCars (Krause et al.'s devkit plus the test labels)
CARS_META, CARS_TRAIN_ANNOS = "devkit/cars_meta.mat", "devkit/cars_train_annos.mat"
CARS_TEST_ANNOS = "cars_test_annos_withlabels.mat"
CARS_TRAIN_IMAGES, CARS_TEST_IMAGES = "cars_train", "cars_test"


def stanford_cars_folder(root: Path) -> Path:
    """data.root itself, or torchvision's convention of a root holding stanford_cars/."""
    nested = root / "stanford_cars"
    return nested if not (root / "devkit").exists() and (nested / "devkit").exists() else root


def read_stanford_cars(cfg: DictConfig) -> tuple[Examples, Examples, int]:
    folder = stanford_cars_folder(Path(cfg.root).expanduser())
    needed = [CARS_META, CARS_TRAIN_ANNOS, CARS_TEST_ANNOS, CARS_TRAIN_IMAGES, CARS_TEST_IMAGES]
    missing = [name for name in needed if not (folder / name).exists()]
    if missing:
        raise UsageError(
            f"Stanford Cars not found in {folder} (missing {missing[0]}); "
            "conf/data/stanford_cars.yaml says where to get the files, or set data.root=<folder>"
        )
    classes = len(np.atleast_1d(read_mat(folder / CARS_META, "class_names")))
    train = read_annotations(folder / CARS_TRAIN_ANNOS, folder / CARS_TRAIN_IMAGES, classes)
    test = read_annotations(folder / CARS_TEST_ANNOS, folder / CARS_TEST_IMAGES, classes)
    return train, test, classes


def read_mat(path: Path, key: str) -> np.ndarray:
    import scipy.io  # only this dataset needs scipy

    try:
        contents = scipy.io.loadmat(path, squeeze_me=True)
    except (ValueError, TypeError, OSError, scipy.io.matlab.MatReadError) as err:
        raise UsageError(f"cannot read {path} ({one_line(err)})") from err
    if key not in contents:
        found = ", ".join(k for k in contents if not k.startswith("__")) or "nothing"
        raise UsageError(f"{path} holds no '{key}' (it holds {found})")
    return contents[key]


def read_annotations(mat: Path, images: Path, classes: int) -> Examples:
    """The devkit's 'annotations' struct array: one record per image with its file name and class (from 1)."""
    annotations = np.atleast_1d(read_mat(mat, "annotations"))  # squeeze_me makes a single record 0-d
    fields = annotations.dtype.names or ()
    if not {"fname", "class"} <= set(fields):
        raise UsageError(f"{mat}: 'annotations' lacks the fields fname and class (has {', '.join(fields)})")
    labels = torch.tensor([int(record["class"]) - 1 for record in annotations], dtype=torch.long)
    if len(labels) and not (labels.min() >= 0 and labels.max() < classes):
        raise UsageError(f"{mat}: classes outside 1..{classes} (the number of class names in {CARS_META})")
    return Examples(ImageFiles([str(images / str(record["fname"])) for record in annotations]), labels)


def read_image_folders(cfg: DictConfig) -> tuple[Examples, Examples, int]:
    """train/<class>/*.jpg and test/<class>/*.jpg (torchvision ImageFolder); classes in sorted folder order."""
    root = Path(cfg.root).expanduser()
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise UsageError(
                f"no {split}/ folder in {root} (data=cars_folder reads train/<class>/*.jpg, test/...)"
            )
    classes, class_to_idx = class_folders(root / "train")
    extra = sorted(set(class_folders(root / "test")[0]) - set(classes))
    if extra:
        raise UsageError(f"{root / 'test'} has class folders that train/ lacks: {', '.join(extra[:3])}")
    train, test = (folder_examples(root / split, class_to_idx) for split in ("train", "test"))
    return train, test, len(classes)


def class_folders(folder: Path) -> tuple[list[str], dict[str, int]]:
    try:
        return find_classes(folder)
    except FileNotFoundError as err:
        raise UsageError(f"no class folders in {folder}") from err


def folder_examples(folder: Path, class_to_idx: dict[str, int]) -> Examples:
    try:
        samples = make_dataset(folder, class_to_idx, IMG_EXTENSIONS)
    except FileNotFoundError as err:  # a class folder without images
        raise UsageError(f"{folder}: {one_line(err)}") from err
    return Examples(ImageFiles([path for path, _ in samples]), torch.tensor([y for _, y in samples]))


def read_fashion_mnist_images(cfg: DictConfig) -> tuple[Examples, Examples, int]:
    """The offline smoke data: Fashion-MNIST's IDX files, 28x28 greyscale, made RGB by the transforms."""
    arrays = {
        k: torch.from_numpy(a.copy()) for k, a in read_fashion_mnist(Path(cfg.root).expanduser()).items()
    }
    train = Examples(ImageArray(arrays["train_x"][:, None]), arrays["train_y"].long())
    return train, Examples(ImageArray(arrays["test_x"][:, None]), arrays["test_y"].long()), 10


READERS = {
    "stanford_cars": read_stanford_cars,
    "cars_folder": read_image_folders,
    "fashion_mnist": read_fashion_mnist_images,
}


def load_data(cfg: DictConfig) -> Splits:
    """The configured dataset, limited, with data.val_size training images held out; every image file checked."""
    train, test, classes = READERS[cfg.name](cfg)
    train, test = train.first(cfg.train_limit), test.first(cfg.test_limit)
    check(
        cfg.val_size < len(train),
        "data.val_size",
        f"must be < the {len(train)} training images",
        cfg.val_size,
    )
    kept, held = holdout(train.labels.numpy(), cfg.val_size, cfg.val_seed)
    check(
        cfg.val_size == 0 or len(held) > 0, "data.val_size", "holds out no image of any class", cfg.val_size
    )
    data = Splits(train.take(kept), train.take(held), test, classes)
    for split in (data.train, data.val, data.test):
        split.images.check()
    return data


def train_transform(recipe: DictConfig, size: int) -> v2.Compose:
    """uint8 RGB crops of `size` px: a random area and aspect ratio, then a random horizontal flip."""
    crop = v2.RandomResizedCrop(
        size, scale=tuple(recipe.crop_scale), ratio=tuple(recipe.crop_ratio), antialias=True
    )
    flip = [v2.RandomHorizontalFlip()] if recipe.flip else []
    return v2.Compose([v2.ToImage(), v2.RGB(), crop, *flip])


def eval_transform(recipe: DictConfig, size: int) -> v2.Compose:
    """The shorter side resized to size / eval_crop, then the central size x size square."""
    resize = v2.Resize(round(size / recipe.eval_crop), antialias=True)
    return v2.Compose([v2.ToImage(), v2.RGB(), resize, v2.CenterCrop(size)])


class Transformed(Dataset):
    """Examples through a transform, keyed by (index, seed): an image's random draws depend on its seed alone,
    not on which worker decodes it or what that worker decoded before."""

    def __init__(self, examples: Examples, transform: v2.Compose):
        self.examples, self.transform = examples, transform

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = key
        with torch.random.fork_rng(devices=[]):  # with workers=0 this runs in the training process
            torch.default_generator.manual_seed(seed)  # the transforms draw from the CPU default generator
            image = self.transform(self.examples.images[index])
        return image.as_subclass(torch.Tensor), self.examples.labels[index]


def data_loader(
    dataset: Transformed, keys: list[tuple[int, int]], batch_size: int, workers: int, device: torch.device
) -> DataLoader:
    batches = [keys[start : start + batch_size] for start in range(0, len(keys), batch_size)]
    # the generator is only where DataLoader draws its (unused) worker base seed: not torch's global RNG
    unused = torch.Generator().manual_seed(0)
    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=workers,
        generator=unused,
        pin_memory=device.type == "cuda",
    )


def decoded(loader: DataLoader) -> Iterator:
    """The loader's batches; a worker's UsageError back to its one line (DataLoader appends the traceback)."""
    try:
        yield from loader
    except UsageError as err:
        traceback.clear_frames(err.__traceback__)  # frees the loader's iterator now, which stops its workers
        raise UsageError(
            str(err).strip().splitlines()[-1].removeprefix("runner.errors.UsageError: ")
        ) from None


def decoding_workers(setting: int | None, device: torch.device) -> int:
    """DataLoader workers: as configured, or (null) none on the CPU, where they would take cores from the
    training itself, and one per core (at most 8) to keep a GPU fed."""
    if setting is not None:
        return setting
    return 0 if device.type == "cpu" else min(os.cpu_count() or 1, MAX_AUTO_WORKERS)


MAX_AUTO_WORKERS = 8  # beyond this, decoding outruns one GPU for ResNet50 at 224 px


def image_size_at(recipe: DictConfig, epoch: int, epochs: int) -> int:
    """Progressive resizing: the size of the last stage started by this epoch's point in the run."""
    if not recipe.progressive:
        return recipe.image_size
    return [stage.size for stage in recipe.progressive if stage.start <= epoch / epochs][-1]


def one_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return "; ".join(lines[:2]) or type(err).__name__


# ------------------------------------------------------------------------------------------------ model
def make_model(cfg: DictConfig, classes: int) -> nn.Module:
    """A torchvision ResNet with its weights (ImageNet, a file or random) and a new Linear head for `classes`."""
    net = torchvision.models.get_model(str(cfg.arch), weights=None)  # 1000-way fc: ImageNet files load as-is
    state = pretrained_state(cfg.arch, cfg.weights)
    if state is not None:
        load_body(net, state, cfg.weights)
    net.fc = nn.Linear(net.fc.in_features, classes)
    return net


def pretrained_state(arch: str, spec: str) -> dict | None:
    if spec == "none":
        return None
    available = torchvision.models.get_model_weights(str(arch))
    if spec == "imagenet" or spec in available.__members__:
        weights = available.DEFAULT if spec == "imagenet" else available[spec]
        try:  # torch.hub caches the file: the internet is needed once
            return weights.get_state_dict(progress=False, check_hash=True)
        except (OSError, RuntimeError) as err:
            raise UsageError(
                f"could not download {weights} for {arch} ({one_line(err)}); without internet, save a "
                "state_dict and set model.weights=<file.pth>"
            ) from err
    names = [name for name in available.__members__ if name != "DEFAULT"]
    return read_state_file(Path(spec).expanduser(), arch, names)


def read_state_file(path: Path, arch: str, names: list[str]) -> dict:
    if not path.is_file():
        valid = ", ".join(["imagenet", "none", *names])
        raise UsageError(f"model.weights: no such file {path}; valid: {valid} or a state_dict file of {arch}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        raise UsageError(f"cannot load model.weights={path} ({one_line(err)})") from err
    if not isinstance(state, dict):
        raise UsageError(f"model.weights={path} holds a {type(state).__name__}, not a state_dict")
    return state


def load_body(net: nn.Module, state: dict, source: str) -> None:
    """Every weight but the head's (replaced anyway), strictly: a file of another architecture is refused."""
    body = {key: value for key, value in state.items() if not key.startswith("fc.")}
    try:
        missing, unexpected = net.load_state_dict(body, strict=False)
    except RuntimeError as err:  # size mismatches
        raise UsageError(f"model.weights={source} does not fit the model: {one_line(err)}") from err
    missing = [key for key in missing if not key.startswith("fc.")]
    if missing or unexpected:
        first = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise UsageError(
            f"model.weights={source} does not fit the model ({first}, and {len(missing + unexpected) - 1} more)"
        )


def stages(net: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    """A ResNet's stages, input to output: the discriminative-lr groups (the small stem joins layer1)."""
    return [
        ("stem+layer1", [net.conv1, net.bn1, net.layer1]),
        ("layer2", [net.layer2]),
        ("layer3", [net.layer3]),
        ("layer4", [net.layer4]),
        ("head", [net.fc]),
    ]


def parameters_of(modules: list[nn.Module]) -> list[nn.Parameter]:
    return [param for module in modules for param in module.parameters()]


def unfrozen_groups(net: nn.Module, stage_lr_div: float) -> list[ParamGroup]:
    """The head at optimizer.lr, each earlier stage at the next one's lr / stage_lr_div."""
    named = stages(net)
    return [
        ParamGroup(parameters_of(modules), lr_mult=stage_lr_div ** -(len(named) - 1 - i), name=name)
        for i, (name, modules) in enumerate(named)
    ]


def freeze_body(model: nn.Module, bn_eval: bool) -> None:
    """Only the head trains; the frozen body's BatchNorm keeps its ImageNet statistics (fastai 0.7)."""
    model.requires_grad_(False)
    model.fc.requires_grad_(True)
    if bn_eval:
        for module in model.modules():
            if isinstance(module, _BatchNorm):
                module.eval()


def unfreeze(model: nn.Module) -> None:
    model.requires_grad_(True)


def make_phases(net: nn.Module, recipe: DictConfig, epochs: int) -> list[Phase]:
    """Frozen body (a rounded fraction of the epochs), then everything with discriminative lrs; an empty phase
    (trainer.epochs=1) is left out."""
    frozen_epochs = round(recipe.frozen_fraction * epochs)
    head = ParamGroup(list(net.fc.parameters()), lr_mult=recipe.frozen_lr_mult, name="head")
    phases = [
        Phase(
            frozen_epochs, [head], enter=partial(freeze_body, bn_eval=recipe.frozen_bn_eval), name="frozen"
        ),
        Phase(
            epochs - frozen_epochs, unfrozen_groups(net, recipe.stage_lr_div), enter=unfreeze, name="unfrozen"
        ),
    ]
    return [phase for phase in phases if phase.epochs > 0]


# ------------------------------------------------------------------------------------------------ task
def build(cfg: DictConfig, device: torch.device) -> Task:
    torch.manual_seed(cfg.seed)  # the new head's initial weights (and the body's with model.weights=none)
    recipe, trainer = cfg.recipe, cfg.trainer
    data = load_data(cfg.data)
    memory_format = torch.channels_last if recipe.channels_last else torch.contiguous_format
    model = make_model(cfg.model, data.classes).to(device, memory_format=memory_format)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255

    def model_input(pixels: torch.Tensor) -> torch.Tensor:
        """Workers ship uint8 (a quarter of float32's bytes); normalize on the device."""
        x = pixels.to(device, non_blocking=True).float()
        return ((x - mean) / std).contiguous(memory_format=memory_format)

    epoch = [0]  # the epoch under way (epoch_start): progressive resizing picks its image size
    workers = decoding_workers(recipe.workers, device)

    def capped(size: int) -> int:
        """Never larger than the data's own images: Fashion-MNIST's 28 px are not worth 224 px of compute."""
        return min(size, data.train.images.side or size)

    def batches(generator: torch.Generator) -> Iterator:
        order = torch.randperm(len(data.train), generator=generator).tolist()
        seeds = torch.randint(0, 2**62, (len(data.train),), generator=generator).tolist()
        transform = train_transform(recipe, capped(image_size_at(recipe, epoch[0], trainer.epochs)))
        loader = data_loader(Transformed(data.train, transform), list(zip(order, seeds, strict=True)),
                             trainer.batch_size, workers, device)  # fmt: skip
        for pixels, labels in decoded(loader):
            yield model_input(pixels), labels.to(device)

    def loss(model: nn.Module, batch, state: None) -> tuple[torch.Tensor, None]:
        x, y = batch
        return F.cross_entropy(model(x), y, label_smoothing=recipe.label_smoothing), None

    def evaluate(model: nn.Module, split: str) -> dict[str, float]:
        examples = {"val": data.val, "test": data.test}[split]
        keys = [(index, 0) for index in range(len(examples))]  # no random draws: any seed
        loader = data_loader(Transformed(examples, eval_transform(recipe, capped(recipe.image_size))), keys,
                             trainer.eval_batch_size, workers, device)  # fmt: skip
        logits, labels = [], []
        for pixels, y in decoded(loader):
            logits.append(predict(model, model_input(pixels), recipe.tta))
            labels.append(y.to(device))
        logits, labels = torch.cat(logits), torch.cat(labels)
        return {
            f"{split}_loss": F.cross_entropy(logits, labels).item(),
            f"{split}_acc": (logits.argmax(1) == labels).float().mean().item(),
        }

    return Task(
        model=model,
        train_size=len(data.train),
        steps_per_epoch=math.ceil(len(data.train) / trainer.batch_size),
        batches=batches,
        loss=loss,
        evaluate=evaluate,
        metric=ACCURACY,
        splits=("val", "test") if cfg.data.val_size > 0 else ("test",),
        phases=make_phases(model, recipe, trainer.epochs),
        epoch_start=lambda e: epoch.__setitem__(0, e),
    )


def predict(model: nn.Module, x: torch.Tensor, tta: bool) -> torch.Tensor:
    """Logits in fp32; with test-time augmentation, averaged over the image and its horizontal flip."""
    logits = model(x).float()
    if tta:
        logits = (logits + model(x.flip(-1)).float()) / 2
    return logits
