"""Every (variant, precision, engine) as a callable forward(inputs) -> logits, and its measured accuracy.

Accuracy is measured on the test split for every row, int8 included: quantization changes the outputs
noticeably, so it is never assumed to match fp32 (torch fp32 rows take the scores their training stage measured
on the same saved model).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from runner.sparsify import export, pruning, training

Forward = Callable[[dict[str, torch.Tensor]], np.ndarray]
DENSE_TORCH_EXTRAS = ("bf16", "int8")  # torch precisions benchmarked for the dense model only


def at_precision(model: torch.nn.Module, precision: str) -> torch.nn.Module:
    """The model to run at a torch precision: an int8 copy, or the model itself (bf16 is autocast)."""
    return export.quantize_torch(model) if precision == "int8" else model


def torch_model(folder: Path, precision: str) -> torch.nn.Module:
    return at_precision(training.load_saved(folder), precision)


def torch_forward(model: torch.nn.Module, precision: str) -> Forward:
    autocast = (
        torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    )

    @torch.inference_mode()
    def forward(inputs: dict[str, torch.Tensor]) -> np.ndarray:
        with autocast:
            return model(**inputs).logits.float().numpy()

    return forward


def open_engine(row: dict, threads: int) -> Forward:
    """A ready forward for one benchmark row (torch threads are set by the caller, per block)."""
    if row["engine"] == "torch":
        return torch_forward(torch_model(Path(row["path"]), row["precision"]), row["precision"])
    sess = export.session(Path(row["path"]), threads)
    return lambda inputs: export.run_session(sess, inputs)


def row_scores(found: dict[str, Any]) -> dict[str, float]:
    """A row's accuracy and macro_f1 from training.scores(..., "test") or a stage's saved metrics.json."""
    return {"accuracy": found["test_accuracy"], "macro_f1": found["test_macro_f1"]}


def accuracy(forward: Forward, test: dict[str, torch.Tensor], batch_size: int) -> dict[str, float]:
    return row_scores(training.scores(training.predict(forward, test, batch_size), test["labels"], "test"))


def quiet() -> contextlib.ExitStack:
    """Silence the exporters' progress prints and known warnings (the results are checked instead)."""
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    stack.enter_context(contextlib.redirect_stdout(None))
    logging.disable(logging.WARNING)
    stack.callback(logging.disable, logging.NOTSET)
    return stack


def build_variant(
    run: Any, variant: Any, folder: Path, test: dict[str, torch.Tensor], trained: dict[str, float]
) -> list[dict]:
    """Rows for one trained variant: torch precisions, then its ONNX fp32 (and int8) export.

    `trained`: the torch fp32 test scores its training stage measured on this very model (not measured twice).
    """
    cfg = run.cfg
    int8 = str(cfg.quantize) == "int8"
    extras = [p for p in DENSE_TORCH_EXTRAS if p != "int8" or (int8 and cfg.export.torch_int8)]
    precisions = ["fp32", *(extras if variant.name == "dense" else [])]
    model = training.load_saved(folder)
    params, nonzero = pruning.count(model)
    base = {"variant": variant.name, "sparsity": variant.sparsity, "structured": variant.structured}
    base |= {"layers": model.config.num_hidden_layers, "params": params, "nonzero_params": nonzero}
    base |= {"vocab_size": model.config.vocab_size, "test_examples": len(test["labels"])}
    rows = []
    for precision in precisions:
        m = at_precision(model, precision)  # quantize_dynamic copies: `model` stays fp32 for the export
        if precision == "fp32":
            found = trained
        else:
            found = accuracy(torch_forward(m, precision), test, cfg.export.eval_batch_size)
        rows.append(
            base
            | found
            | {
                "precision": precision,
                "engine": "torch",
                "path": str(folder),
                "file_mb": training.state_mb(m),
            }
        )
    for precision in ["fp32", "int8"] if int8 else ["fp32"]:
        path = onnx_file(run.dir, variant.name, precision, model, cfg.export)
        forward = open_engine({"engine": "onnxruntime", "path": str(path)}, threads=torch.get_num_threads())
        found = accuracy(forward, test, cfg.export.eval_batch_size)
        rows.append(
            base
            | found
            | {
                "precision": precision,
                "engine": "onnxruntime",
                "path": str(path),
                "file_mb": path.stat().st_size / 2**20,
            }
        )
    return rows


def onnx_file(run_dir: Path, name: str, precision: str, model: torch.nn.Module, export_cfg: Any) -> Path:
    """variants/<name>-<precision>/model.onnx; the fp32 export is checked against torch first."""
    fp32 = run_dir / "variants" / f"{name}-fp32" / "model.onnx"
    if precision == "fp32":
        check_inputs = export.example_inputs(2, 16, model.config.vocab_size, seed=0)
        with quiet():
            export.export_onnx(model, fp32, export_cfg, check_inputs)
        check_export(model, fp32, export_cfg.atol)
        return fp32
    with quiet():
        return export.quantize_onnx(
            fp32, fp32.parent.with_name(f"{name}-{precision}") / "model.onnx", export_cfg
        )


def check_export(model: torch.nn.Module, path: Path, atol: float) -> None:
    """ONNX fp32 must compute the torch function: compare on shapes other than the traced ones."""
    inputs = export.example_inputs(3, 24, model.config.vocab_size, seed=1)
    with torch.no_grad():
        expected = model(**inputs).logits.numpy()
    got = export.run_session(export.session(path, torch.get_num_threads()), inputs)
    error = float(np.abs(got - expected).max())
    if error > atol:
        raise RuntimeError(
            f"ONNX export of {path.parent.name} differs from torch by {error:.2e} > export.atol"
        )
