"""The pieces the shared loop (runner.loop.fit) needs for BERT: batches, losses, evaluation; saved models."""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from runner.recipe import Metric, Task
from runner.results import read_json_file, replaced_atomically, write_json, write_text
from runner.sparsify import pruning, task
from runner.sparsify.distill import distillation_loss
from runner.sparsify.export import INPUTS

TEACHER_KEY = "teacher_logits"  # present in the train split of a distillation run only
BATCH_KEYS = ("input_ids", "attention_mask", "token_type_ids", "labels", TEACHER_KEY)  # batch[0]: the ids


def as_tuple(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return tuple(batch[key] for key in BATCH_KEYS if key in batch)


def logits(model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    ids, mask, types = batch[:3]
    return model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits


def cross_entropy(model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return F.cross_entropy(logits(model, batch).float(), batch[3])


def with_teacher_logits(encoded: dict[str, dict], teacher: torch.nn.Module, batch_size: int) -> dict:
    """The splits, with the frozen teacher's logits stored beside every training example.

    The teacher runs in eval mode (no dropout), so its logits are a fixed function of the example: computed
    once here, in fp32, instead of a teacher forward pass at every step of every pruning run.
    """
    train = encoded["train"]
    soft = predict(torch_forward(teacher), train, batch_size)
    return encoded | {"train": train | {TEACHER_KEY: torch.from_numpy(soft)}}


def distilled(
    distill_cfg: Any, teacher: torch.nn.Module | None = None, layer_map: list[int] | None = None
) -> Callable:
    """The loss of a pruning run: KL to the teacher's stored logits (batch[4]) mixed with the task loss; with
    distill.hidden_weight or attention_weight > 0, plus those terms against the teacher run on the same batch
    (student layer j against teacher layer layer_map[j])."""
    from runner.sparsify.distill import attention_loss, hidden_state_loss

    def kd(out: torch.Tensor, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return distillation_loss(out, batch[4], batch[3], distill_cfg.temperature, distill_cfg.kd_weight)

    hidden, attention = distill_cfg.hidden_weight, distill_cfg.attention_weight
    if not (hidden or attention):
        return lambda model, batch: kd(logits(model, batch), batch)

    def loss(model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        ids, mask, types = batch[:3]
        run = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "output_hidden_states": True,
               "output_attentions": bool(attention)}  # fmt: skip
        out = model(**run)
        with torch.no_grad():
            target = teacher(**run)
        total = kd(out.logits, batch)
        if hidden:
            total = total + hidden * hidden_state_loss(
                out.hidden_states, target.hidden_states, layer_map, mask
            )
        if attention:
            total = total + attention * attention_loss(out.attentions, target.attentions, layer_map, mask)
        return total

    return loss


@torch.no_grad()
def predict(
    forward: Callable[[dict], np.ndarray], encoded: dict[str, torch.Tensor], batch_size: int
) -> np.ndarray:
    """Logits of a whole split, batch by batch, from any engine's forward(inputs dict) -> numpy logits."""
    order = torch.arange(len(encoded["labels"]))
    inputs = ({k: b[k] for k in INPUTS if k in b} for b in task.batches(encoded, batch_size, order))
    return np.concatenate([forward(b) for b in inputs])


def torch_forward(model: torch.nn.Module) -> Callable[[dict], np.ndarray]:
    return lambda inputs: model(**inputs).logits.float().numpy()


def scores(out: np.ndarray, labels: torch.Tensor, prefix: str) -> dict[str, float]:
    loss = F.cross_entropy(torch.as_tensor(out, dtype=torch.float32), labels).item()
    found = task.metrics(out.argmax(1), labels.numpy())
    return {f"{prefix}_loss": loss} | {f"{prefix}_{k}": v for k, v in found.items()}


METRIC = Metric("accuracy", higher_is_better=True)  # scores() logs val_accuracy, test_accuracy


def make_task(
    model: torch.nn.Module, encoded: dict[str, dict], cfg: Any, loss: Callable, after_step=None
) -> Task:
    """The fine-tuning (or pruning) run as a recipe's Task over the encoded train split, evaluated on the
    validation split; its test split is read once, by the stage that saves the model."""
    train, batch_size = encoded["train"], cfg.trainer.batch_size
    size = len(train["labels"])

    def batches(generator: torch.Generator) -> Iterator[tuple[torch.Tensor, ...]]:
        order = torch.randperm(size, generator=generator)
        return map(as_tuple, task.batches(train, batch_size, order))

    def stateless(
        m: torch.nn.Module, batch: tuple[torch.Tensor, ...], state: None
    ) -> tuple[torch.Tensor, None]:
        return loss(m, batch), None

    def evaluate(m: torch.nn.Module, split: str) -> dict[str, float]:
        held_out = encoded["validation"]
        return scores(
            predict(torch_forward(m), held_out, cfg.trainer.eval_batch_size), held_out["labels"], split
        )

    return Task(
        model, size, steps_per_epoch(encoded, cfg), batches, stateless, evaluate, METRIC, ("val",),
        after_step=after_step,
    )  # fmt: skip


def steps_per_epoch(encoded: dict[str, dict], cfg: Any) -> int:
    return math.ceil(len(encoded["train"]["labels"]) / cfg.trainer.batch_size)


# ------------------------------------------------------------------------------------------- saved models
def save_model(model: torch.nn.Module, folder: Path) -> None:
    """Weights, the Hugging Face config and the per-layer structure (heads, FFN neurons) of a variant."""
    write_text(folder / "config.json", model.config.to_json_string())  # what save_pretrained writes
    write_json(folder / "structure.json", pruning.structure(model))
    with replaced_atomically(folder / "model.pt") as tmp:
        torch.save(model.state_dict(), tmp)


def load_saved(folder: Path) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(folder))
    pruning.reshape_to(model, read_json_file(folder / "structure.json"))
    model.load_state_dict(torch.load(folder / "model.pt", map_location="cpu", weights_only=True))
    return model.eval()


def state_mb(model: torch.nn.Module) -> float:
    """Serialized size of a model's weights (torch variants have no ONNX file to measure)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell() / 2**20
