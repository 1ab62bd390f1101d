"""A recipe of my own, outside adamrun: an MLP on my CSV (numeric features, the class label last).
PYTHONPATH=. adamrun train recipe=my_pkg.tabular data.path=my.csv      # or pip install my_pkg
"""

from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import MISSING

from runner.recipe import Task


@dataclass
class Recipe:
    name: str = MISSING
    hidden: int = MISSING  # units of the hidden layer


@dataclass
class Data:
    name: str = MISSING  # names the runs and their rows
    path: str = MISSING  # the CSV file
    test_size: int = MISSING  # first rows: the test split
    val_size: int = MISSING  # next rows: the validation split (0: none)
    train_limit: int | None = MISSING  # train on the first N of the other rows (null: all)


SCHEMAS = {"recipe": Recipe, "data": Data}  # every config node the recipe owns, checked at compose time


def build(cfg, device) -> Task:
    rows = torch.from_numpy(np.loadtxt(cfg.data.path, delimiter=",", dtype=np.float32, ndmin=2)).to(device)
    x, y, test, val = rows[:, :-1], rows[:, -1].long(), cfg.data.test_size, cfg.data.val_size
    splits = {"test": slice(0, test), "val": slice(test, test + val)}
    train_x, train_y = x[test + val :][: cfg.data.train_limit], y[test + val :][: cfg.data.train_limit]
    hidden, size = cfg.recipe.hidden, cfg.trainer.batch_size
    net = torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, int(y.max()) + 1)
    )

    def batches(generator):  # all randomness from the generator: a resumed epoch replays bitwise
        for i in torch.randperm(len(train_y), generator=generator).split(size):
            yield train_x[i], train_y[i]

    def loss(model, batch, state):
        return torch.nn.functional.cross_entropy(model(batch[0]), batch[1]), state

    def evaluate(model, split):
        logits, labels = model(x[splits[split]]), y[splits[split]]
        return {f"{split}_loss": torch.nn.functional.cross_entropy(logits, labels).item(),
                f"{split}_acc": (logits.argmax(1) == labels).float().mean().item()}  # fmt: skip

    return Task(net.to(device), train_size=len(train_y), steps_per_epoch=-(-len(train_y) // size),
                batches=batches, loss=loss, evaluate=evaluate, splits=("val", "test") if val else ("test",))  # fmt: skip
