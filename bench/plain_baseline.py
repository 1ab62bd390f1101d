"""The plain baseline of make bench's time_to_accuracy section: the CIFAR-10 recipe's net as a user writes its
training first, with none of the recipe's machinery: a DataLoader over the images with torchvision's random
crop + flip per image, fp32, torch.optim.AdamW under torch's OneCycleLR, the test (or validation) split
evaluated after every epoch. Same data, split and net (recipes.cifar10.make_net, without whitening and with
BatchNorm as torch ships it) as the recipe; its lr and epochs come from the command line (the section chose
them on the validation split). One process per run, as a user runs it: the clock starts at its start.

    python -m bench.plain_baseline <overrides of conf/bench_train.yaml>   # one JSON line per epoch on stdout
"""

from __future__ import annotations

import json
import sys
import time

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torchvision.transforms import v2

from bench.harness import bench_config
from recipes import cifar10


class Augmented(torch.utils.data.Dataset):
    """uint8 images, cropped and flipped one at a time by torchvision, then scaled and normalized."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, padding: int, mean: float, std: float):
        self.images, self.labels, self.mean, self.std = images, labels, mean, std
        side = images.shape[-1]
        self.augment = v2.Compose([v2.RandomCrop(side, padding=padding, padding_mode="reflect"),
                                   v2.RandomHorizontalFlip()])  # fmt: skip

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return (self.augment(self.images[i]).float() / 255 - self.mean) / self.std, self.labels[i]


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    model.eval()
    with torch.no_grad():
        batches = zip(x.split(batch_size), y.split(batch_size), strict=True)
        correct = sum((model(xb).argmax(1) == yb).sum().item() for xb, yb in batches)
    model.train()
    return correct / len(y)


def main(cfg: DictConfig) -> None:
    torch.manual_seed(cfg.seed)
    images = cifar10.load_images(cfg.data)
    train_x = images.train_x.float() / 255
    mean, std = train_x.mean().item(), train_x.std().item()
    split = (
        ("val", images.val_x, images.val_y)
        if images.val_x is not None
        else ("test", images.test_x, images.test_y)
    )
    name, held_x, held_y = split[0], (split[1].float() / 255 - mean) / std, split[2]
    loader = torch.utils.data.DataLoader(
        Augmented(images.train_x, images.train_y, cfg.recipe.crop_padding, mean, std),
        batch_size=cfg.trainer.batch_size, shuffle=True, drop_last=False,
    )  # fmt: skip
    model = cifar10.make_net(images.train_x.shape[1], images.classes, cfg.recipe)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.optimizer.lr, weight_decay=cfg.optimizer.weight_decay
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.optimizer.lr, epochs=cfg.trainer.epochs, steps_per_epoch=len(loader)
    )
    for epoch in range(cfg.trainer.epochs):
        started = time.perf_counter()
        for xb, yb in loader:
            loss = F.cross_entropy(model(xb), yb, label_smoothing=cfg.recipe.label_smoothing)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            schedule.step()
        evaluated = time.perf_counter()
        acc = accuracy(model, held_x, held_y, cfg.trainer.eval_batch_size)
        row = {"epoch": epoch + 1, f"{name}_acc": acc, "train_s": evaluated - started,
               "eval_s": time.perf_counter() - evaluated}  # fmt: skip
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main(bench_config(sys.argv[1:]))
