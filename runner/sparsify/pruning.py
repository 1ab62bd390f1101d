"""Gradual magnitude pruning (Zhu & Gupta 2017) driven by conf/prune, unstructured or structured.

Masks live in torch.nn.utils.prune's `weight_mask` / `bias_mask` buffers, so they are part of the state dict
and an interrupted pruning run resumes with them. Unstructured masks zero single weights (global or per-layer
magnitude threshold); structured masks zero whole attention heads (their query/key/value rows and the matching
columns of the attention output) and FFN neurons (a row of intermediate.dense and a column of output.dense),
which `shrink` then removes for real: same function, smaller matrices. transformers 5 dropped
`PreTrainedModel.prune_heads`, so the head slicing is written here on top of its `prune_linear_layer`.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from runner.sparsify.schema import Importance, Interpolation, Scope

EXPONENTS = {Interpolation.cubic: 3, Interpolation.linear: 1}  # (1 - progress)^k of the interpolation


# --------------------------------------------------------------------------------------------- schedule
@dataclass(frozen=True)
class Window:
    first: int  # optimizer step of the first mask update
    last: int  # optimizer step at which the final sparsity is reached
    every: int  # steps between updates


def window(prune_cfg: Any, total_steps: int) -> Window:
    first = round(prune_cfg.start * total_steps)
    last = min(max(first + 1, round(prune_cfg.end * total_steps)), total_steps - 1)  # steps are 0-based
    return Window(first, last, prune_cfg.update_every)


def target_sparsity(step: int, w: Window, init: float, final: float, interpolation: str) -> float:
    """Zhu & Gupta's s_t = s_f + (s_i - s_f)(1 - (t - t0)/(t1 - t0))^k; 0 before t0 and s_f after t1."""
    if step < w.first:
        return 0.0
    progress = min(1.0, (step - w.first) / (w.last - w.first))
    return final + (init - final) * (1.0 - progress) ** EXPONENTS[Interpolation(interpolation)]


def is_update(step: int, w: Window) -> bool:
    return step == w.last or (w.first <= step < w.last and (step - w.first) % w.every == 0)


# ------------------------------------------------------------------------------------------ unstructured
def effective(module: nn.Module, name: str) -> torch.Tensor:
    """orig * mask, fresh: the `weight` attribute itself is refreshed only by the next forward's hook."""
    if hasattr(module, name + "_mask"):
        return getattr(module, name + "_orig") * getattr(module, name + "_mask")
    return getattr(module, name)


def set_mask(module: nn.Module, name: str, mask: torch.Tensor) -> None:
    getattr(module, name + "_mask").copy_(mask.view_as(getattr(module, name + "_mask")))
    setattr(module, name, effective(module, name))  # what prune's forward pre-hook would do


def matches(name: str, patterns: list[str]) -> bool:
    """sparseml-style names: `re:<regex>` must match the whole module name, anything else equals it."""
    return any(re.fullmatch(p[3:], name) if p.startswith("re:") else p == name for p in patterns)


def prunable(model: nn.Module, patterns: list[str]) -> dict[str, nn.Linear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and matches(n, patterns)}


def keep_largest(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """1 for the scores above the k-th smallest (k = round(sparsity * n)), 0 for the rest."""
    k = round(sparsity * scores.numel())
    if k == 0:
        return torch.ones_like(scores)
    threshold = torch.kthvalue(scores.flatten().float(), k).values
    return (scores > threshold).to(scores.dtype)


class GradualPruner:
    """Raises the sparsity along the configured ramp at every update step; subclasses apply a target."""

    def __init__(self, prune_cfg: Any, final: float, total_steps: int):
        self.cfg, self.final, self.window = prune_cfg, final, window(prune_cfg, total_steps)

    def __call__(self, step: int) -> None:
        if is_update(step, self.window):
            target = target_sparsity(
                step, self.window, self.cfg.init_sparsity, self.final, self.cfg.interpolation
            )
            self.apply(target)

    def apply(self, sparsity: float) -> None:
        raise NotImplementedError


class UnstructuredPruner(GradualPruner):
    """Magnitude masks on single weights of the modules prune_cfg.params names."""

    def __init__(self, model: nn.Module, prune_cfg: Any, final: float, total_steps: int):
        super().__init__(prune_cfg, final, total_steps)
        self.modules = prunable(model, list(prune_cfg.params))
        for module in self.modules.values():
            if not prune.is_pruned(module):
                prune.identity(module, "weight")

    @torch.no_grad()
    def apply(self, sparsity: float) -> None:
        # |effective weight|: pruned weights score 0, so they stay pruned as the target grows
        weights = [effective(m, "weight").abs() for m in self.modules.values()]
        if Scope(self.cfg.scope) is Scope["global"]:
            flat = keep_largest(torch.cat([w.flatten() for w in weights]), sparsity)
            masks = torch.split(flat, [w.numel() for w in weights])
        else:
            masks = [keep_largest(w, sparsity) for w in weights]
        for module, mask in zip(self.modules.values(), masks, strict=True):
            set_mask(module, "weight", mask)

    def finalize(self, model: nn.Module) -> nn.Module:
        """Bake the masks into the weights (zeros stay; the matrices keep their shape)."""
        for module in self.modules.values():
            prune.remove(module, "weight")
        return model


# -------------------------------------------------------------------------------------------- structured
def encoder_layers(model: nn.Module) -> nn.ModuleList:
    return model.base_model.encoder.layer


def kept_layer_indices(total: int, keep: int) -> list[int]:
    """Every (total/keep)-th layer from the bottom, as DistilBERT initialises its student: 6 -> 3 keeps 0, 2, 4."""
    return [i * total // keep for i in range(keep)]


def drop_layers(model: nn.Module, keep: int) -> nn.Module:
    """Keep `keep` evenly spaced encoder layers: structured pruning at the coarsest grain (oBERT's 3-layer
    and 6-layer students start this way); the distillation that follows recovers the accuracy."""
    layers = encoder_layers(model)
    model.base_model.encoder.layer = nn.ModuleList(layers[i] for i in kept_layer_indices(len(layers), keep))
    model.config.num_hidden_layers = keep  # saved with the model, so load_saved rebuilds this depth
    return model


def head_size(layer: nn.Module) -> int:
    return layer.attention.self.attention_head_size


def head_scores(layer: nn.Module) -> torch.Tensor:
    """L1 norm per head of its query/key/value rows and its attention-output columns."""
    attn, d = layer.attention.self, head_size(layer)
    qkv = (attn.query, attn.key, attn.value)
    rows = sum(effective(m, "weight").abs().sum(1) + effective(m, "bias").abs() for m in qkv)
    cols = effective(layer.attention.output.dense, "weight").abs().sum(0)
    return (rows + cols).view(-1, d).sum(1)


def neuron_scores(layer: nn.Module) -> torch.Tensor:
    """L1 norm per FFN neuron of its intermediate.dense row (and bias) and its output.dense column."""
    up, down = layer.intermediate.dense, layer.output.dense
    rows = effective(up, "weight").abs().sum(1) + effective(up, "bias").abs()
    return rows + effective(down, "weight").abs().sum(0)


def keep_top(scores: torch.Tensor, remove: int) -> torch.Tensor:
    keep = torch.ones_like(scores, dtype=torch.bool)
    keep[torch.argsort(scores)[:remove]] = False
    return keep


def structure_masks(layer: nn.Module) -> dict[tuple[nn.Linear, str], tuple[int, str]]:
    """Every masked tensor of a layer: (module, tensor name) -> (dim of the unit, 'head' | 'neuron')."""
    attn = layer.attention.self
    masked = {(m, t): (0, "head") for m in (attn.query, attn.key, attn.value) for t in ("weight", "bias")}
    masked[(layer.attention.output.dense, "weight")] = (1, "head")
    masked[(layer.intermediate.dense, "weight")] = (0, "neuron")
    masked[(layer.intermediate.dense, "bias")] = (0, "neuron")
    masked[(layer.output.dense, "weight")] = (1, "neuron")
    return masked


def unit_mask(keep: torch.Tensor, repeat: int, shape: torch.Size, dim: int) -> torch.Tensor:
    """Expand a keep-vector over units (heads of `repeat` rows, or single neurons) to a tensor's mask."""
    along = keep.repeat_interleave(repeat).to(torch.float32)
    view = [-1] + [1] * (len(shape) - 1) if dim == 0 else [1, -1]
    return along.view(view).expand(shape).contiguous()


class TaylorScores:
    """First-order Taylor importance of every head and FFN neuron (Molchanov et al. 2019): per optimizer step,
    (sum over the unit's weights of w * dL/dw)^2, the squared loss change its removal predicts, summed over the
    steps since the last mask update. Gradients are read as backward accumulates them (the loop zeroes them
    before the pruner runs); a masked unit gets no gradient, scores 0, and so stays pruned. The sums are not in
    the checkpoint: after a resume, the first update ranks by the steps since the resume."""

    def __init__(self, layers: nn.ModuleList):
        self.step_sums = [self.zeros(layer) for layer in layers]
        self.totals = [self.zeros(layer) for layer in layers]
        for i, layer in enumerate(layers):
            for (module, name), (dim, unit) in structure_masks(layer).items():
                size = head_size(layer) if unit == "head" else 1
                hook = functools.partial(self.add, self.step_sums[i], unit, dim, size)
                getattr(module, name + "_orig").register_post_accumulate_grad_hook(hook)

    @staticmethod
    def zeros(layer: nn.Module) -> dict[str, torch.Tensor]:
        heads = layer.attention.self.query.out_features // head_size(layer)
        return {"head": torch.zeros(heads), "neuron": torch.zeros(layer.intermediate.dense.out_features)}

    @staticmethod
    @torch.no_grad()
    def add(sums: dict, unit: str, dim: int, size: int, param: torch.Tensor) -> None:
        product = (param * param.grad).float()
        per_row = (
            product if product.dim() == 1 else product.sum(1 - dim)
        )  # one value per row (dim 0) or column
        sums[unit] += per_row.view(-1, size).sum(1)

    def end_step(self) -> None:
        for step, total in zip(self.step_sums, self.totals, strict=True):
            for unit in total:
                total[unit] += step[unit] ** 2
                step[unit].zero_()

    def take(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer i's head and neuron scores since the last update, then a fresh start for the next one."""
        found = self.totals[i]["head"].clone(), self.totals[i]["neuron"].clone()
        for total in self.totals[i].values():
            total.zero_()
        return found


class StructuredPruner(GradualPruner):
    """Masks whole heads and FFN neurons, the same fraction in every encoder layer (uniform shapes)."""

    def __init__(self, model: nn.Module, prune_cfg: Any, final: float, total_steps: int):
        super().__init__(prune_cfg, final, total_steps)
        self.layers = encoder_layers(model)
        for layer in self.layers:
            for module, name in structure_masks(layer):
                if not hasattr(module, name + "_mask"):
                    prune.identity(module, name)
        taylor = Importance(prune_cfg.importance) is Importance.taylor
        self.taylor = TaylorScores(self.layers) if taylor else None

    def __call__(self, step: int) -> None:
        if self.taylor is not None:
            self.taylor.end_step()
        super().__call__(step)

    def scores(self, i: int, layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """Head and neuron importance of layer i (prune.importance)."""
        return self.taylor.take(i) if self.taylor is not None else (head_scores(layer), neuron_scores(layer))

    @torch.no_grad()
    def apply(self, sparsity: float) -> None:
        for i, layer in enumerate(self.layers):
            heads, neurons = self.scores(i, layer)
            removable = len(heads) - self.cfg.min_heads_per_layer
            keep = {
                "head": (keep_top(heads, min(removable, round(sparsity * len(heads)))), head_size(layer)),
                "neuron": (keep_top(neurons, round(sparsity * len(neurons))), 1),
            }
            for (module, name), (dim, unit) in structure_masks(layer).items():
                set_mask(module, name, unit_mask(*keep[unit], getattr(module, name + "_mask").shape, dim))

    def finalize(self, model: nn.Module) -> nn.Module:
        """Remove the masked heads and neurons for real: smaller matrices computing the same function."""
        for layer in self.layers:
            kept_heads = kept_units(layer.attention.self.value.weight_mask[:, 0], head_size(layer))
            kept_neurons = kept_units(layer.intermediate.dense.weight_mask[:, 0], 1)
            for module, name in structure_masks(layer):
                prune.remove(module, name)
            shrink_layer(layer, kept_heads, kept_neurons)
        return model


def kept_units(row_mask: torch.Tensor, size: int) -> torch.Tensor:
    return torch.nonzero(row_mask.view(-1, size)[:, 0]).flatten()


def shrink_layer(layer: nn.Module, heads: torch.Tensor, neurons: torch.Tensor) -> None:
    """Keep only the given heads and FFN neurons of one BERT layer (slices its Linear modules)."""
    from transformers.pytorch_utils import prune_linear_layer

    attn, d = layer.attention.self, head_size(layer)
    rows = (heads[:, None] * d + torch.arange(d)).flatten()
    attn.query = prune_linear_layer(attn.query, rows, dim=0)
    attn.key = prune_linear_layer(attn.key, rows, dim=0)
    attn.value = prune_linear_layer(attn.value, rows, dim=0)
    layer.attention.output.dense = prune_linear_layer(layer.attention.output.dense, rows, dim=1)
    attn.num_attention_heads, attn.all_head_size = len(heads), len(rows)
    layer.intermediate.dense = prune_linear_layer(layer.intermediate.dense, neurons, dim=0)
    layer.output.dense = prune_linear_layer(layer.output.dense, neurons, dim=1)


def structure(model: nn.Module) -> dict[str, list[int]]:
    """Heads and FFN neurons per layer: enough to rebuild a shrunk model before loading its weights."""
    layers = encoder_layers(model)
    return {
        "heads": [layer.attention.self.query.out_features // head_size(layer) for layer in layers],
        "ffn": [layer.intermediate.dense.out_features for layer in layers],
    }


def reshape_to(model: nn.Module, shape: dict[str, list[int]]) -> nn.Module:
    """Shrink a freshly built model to a saved structure (the weights are loaded afterwards)."""
    for layer, heads, neurons in zip(encoder_layers(model), shape["heads"], shape["ffn"], strict=True):
        shrink_layer(layer, torch.arange(heads), torch.arange(neurons))
    return model


def count(model: nn.Module) -> tuple[int, int]:
    """(parameters, non-zero parameters)."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(int(torch.count_nonzero(p)) for p in params)


def sparsity_of(modules: dict[str, nn.Linear]) -> float:
    weights = [effective(m, "weight") for m in modules.values()]
    return 1.0 - sum(int(torch.count_nonzero(w)) for w in weights) / sum(w.numel() for w in weights)


PRUNERS = {False: UnstructuredPruner, True: StructuredPruner}
