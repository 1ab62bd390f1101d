"""The recipe contract: what a recipe gives the shared loop (runner/loop.py), in the spirit of torchtune's
recipe interface. One contract serves image classification, language modelling and fine-tuning alike.

A recipe is one module, `recipes/<name>.py`, with its config `conf/recipe/<name>.yaml` (which also picks the
recipe's default `data` and `model` options), or a user's own module anywhere on the Python path,
`recipe=my_pkg.my_recipe`, with its config beside it as `my_pkg/my_recipe.yaml` (docs/recipes.md has an
example). The module provides:

    SCHEMAS: dict[str, type]   # the dataclass schema of every config node the recipe owns: "recipe" and
                               # "data" (with a `name`: runs are named by it), "model" where it reads one;
                               # compose() validates each node with it
    build(cfg, device) -> Task # data, model, loss and metrics, top to bottom

and nothing under runner/ names it: adding a recipe touches no file here.

Semantics the loop relies on:
- `batches(generator)` yields one epoch of training batches; all randomness comes from the generator (and from
  torch's global RNG, which the loop seeds per epoch), so a resumed epoch replays bitwise. `epoch_start(epoch)`,
  when given, hears which epoch (0-based) begins first: what may change per epoch (progressive resizing).
- `loss(model, batch, state) -> (loss, state)`: `state` is what the recipe carries from one batch to the next
  (an LSTM's hidden state). The loop starts every epoch with `init_state()` and detaches the returned state
  between steps. Stateless recipes take and return None.
- `evaluate(model, split)` with split "val" or "test" returns `{f"{split}_loss": ..., f"{split}_{metric.name}":
  ...}` (and anything else worth logging). The loop calls it under torch.no_grad() with the model in eval mode;
  a recipe whose evaluation carries state starts it itself (once per evaluation).
- `count(batch)`: the batch's size in the unit throughput and loss means are counted in (images, tokens).
- `lr_scale(batch)`: a per-batch factor the schedule multiplies into the lr (AWD-LSTM's seq_len / bptt).
- `param_groups`: which parameters train, each group with an lr multiplier and whether it decays at all;
  runner.optim.build_optimizer further splits every group into decayed weights and undecayed biases/norms.
- `settled`: settings the config left open and the recipe chose by measuring this machine (runner/machine.py);
  the run's config takes them (runner.config.settled), so config.yaml records them and a resume reuses them.
- `phases`: a run may train in phases (a frozen body, then the whole net), each with its own epochs, parameter
  groups, and a hook run at every epoch start of the phase; one optimizer and one schedule cycle per phase.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

Batch = tuple[Any, ...]
State = Any


@dataclass(frozen=True)
class Metric:
    """The recipe's headline metric: runs.csv, reports, targets and sweeps read it under this name."""

    name: str  # suffix of the evaluate() keys: "acc" -> val_acc, test_acc
    higher_is_better: bool

    @property
    def direction(self) -> str:
        return "max" if self.higher_is_better else "min"

    def better(self, a: float, b: float) -> bool:
        """Is a strictly better than b?"""
        return a > b if self.higher_is_better else a < b


ACCURACY = Metric("acc", higher_is_better=True)
PERPLEXITY = Metric("ppl", higher_is_better=False)


@dataclass
class ParamGroup:
    """Parameters that share an lr multiplier; build_optimizer splits off biases and norm weights."""

    params: list[torch.nn.Parameter]
    lr_mult: float = 1.0  # this group's peak lr is optimizer.lr * lr_mult
    decay: bool = True  # false: no weight decay for any parameter of the group
    name: str = "all"


@dataclass
class Phase:
    """A stretch of a run with its own trainable parameters: a new optimizer and schedule cycle start here."""

    epochs: int
    param_groups: list[ParamGroup]
    enter: Callable[[torch.nn.Module], None] | None = None  # after model.train(), at every epoch of the phase
    name: str = "train"


def all_parameters(model: torch.nn.Module) -> list[ParamGroup]:
    """The default: every parameter that requires grad, in one group."""
    return [ParamGroup([p for p in model.parameters() if p.requires_grad])]


def no_state() -> State:
    return None


def batch_length(batch: Batch) -> int:
    return len(batch[0])


def unscaled(batch: Batch) -> float:
    return 1.0


@dataclass
class Task:
    """What a recipe gives the loop."""

    model: torch.nn.Module
    train_size: int  # training examples per epoch (normalized weight decay)
    steps_per_epoch: int
    batches: Callable[[torch.Generator], Iterator[Batch]]
    loss: Callable[[torch.nn.Module, Batch, State], tuple[torch.Tensor, State]]
    evaluate: Callable[[torch.nn.Module, str], dict[str, float]]
    metric: Metric = ACCURACY
    splits: tuple[str, ...] = ("test",)  # evaluation splits: ("val", "test") when there is a validation split
    unit: str = "examples"  # what count() counts: throughput is logged as <unit>_per_s
    count: Callable[[Batch], int] = batch_length
    lr_scale: Callable[[Batch], float] = unscaled
    init_state: Callable[[], State] = no_state
    param_groups: list[ParamGroup] | None = None  # None: all_parameters(model)
    phases: list[Phase] = field(default_factory=list)  # empty: one phase of trainer.epochs over param_groups
    after_step: Callable[[int], None] | None = None  # after every optimizer step (pruning masks)
    epoch_start: Callable[[int], None] | None = None  # before each epoch's batches (progressive resizing)
    settled: dict[str, Any] = field(default_factory=dict)  # config keys the recipe measured on this machine
    # (dotted key: value, e.g. recipe.channels_last): written into the run's config.yaml before it trains

    def run_phases(self, epochs: int) -> list[Phase]:
        """The phases of a run of `epochs` epochs (the single default phase when the recipe declares none)."""
        if self.phases:
            return self.phases
        return [Phase(epochs, self.param_groups or all_parameters(self.model))]
