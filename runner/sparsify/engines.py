"""Every (variant, precision, engine) as a file, a callable forward(inputs) -> logits, and its accuracy.

Accuracy is measured for every row on its own engine, on the validation split (which chooses the winner) and
the test split (which is reported): quantization changes the outputs, so it is never assumed to match fp32.
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

from runner.sparsify import export, pruning, sessions, task, training

Forward = Callable[[dict[str, torch.Tensor]], np.ndarray]


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


def open_engine(row: dict, threads: int, export_cfg: Any, spinning: bool | None = None) -> Forward:
    """A ready forward for one row (torch threads are set by the caller; spinning: see sessions.session)."""
    if row["engine"] == "torch":
        return torch_forward(torch_model(Path(row["path"]), row["precision"]), row["precision"])
    return sessions.open_exported(row, threads, export_cfg, spinning)


def row_scores(found: dict[str, Any]) -> dict[str, float]:
    """A row's accuracy and macro_f1 from training.scores(..., "test") or a stage's saved metrics.json."""
    return {"accuracy": found["test_accuracy"], "macro_f1": found["test_macro_f1"]}


SPLITS_READ = ("validation", "test")  # validation chooses the winner; test is reported


def split_batches(split: dict[str, torch.Tensor], batch_size: int) -> list[dict[str, torch.Tensor]]:
    order = torch.arange(len(split["labels"]))
    return [{k: b[k] for k in export.INPUTS if k in b} for b in task.batches(split, batch_size, order)]


def as_numpy(batches: list[dict[str, torch.Tensor]]) -> list[dict[str, np.ndarray]]:
    return [{k: v.numpy() for k, v in b.items()} for b in batches]


def calibration(
    train: dict[str, torch.Tensor], examples: int, batch_size: int
) -> list[dict[str, np.ndarray]]:
    """The first `examples` training examples, in batches: the only data static quantization sees."""
    head = {k: v[:examples] for k, v in train.items() if k in (*export.INPUTS, "labels")}
    return as_numpy(split_batches(head, batch_size))


def accuracy(row: dict, splits: dict[str, dict], export_cfg: Any) -> dict[str, float]:
    """Test accuracy and macro F1, and validation accuracy, of one row measured on its own engine."""
    batches = {s: split_batches(splits[s], export_cfg.eval_batch_size) for s in SPLITS_READ}
    if row["engine"] == "openvino":  # in a process of its own (see isolated.py)
        from runner.sparsify import isolated, openvino_engine

        ov, flat = export_cfg.openvino, as_numpy([*batches["validation"], *batches["test"]])
        precision = sessions.openvino_precision(row, ov)
        found = isolated.call(
            openvino_engine.logits, row["path"], torch.get_num_threads(), ov.hint, precision, flat
        )
        out = {"validation": found[: len(splits["validation"]["labels"])]}
        out["test"] = found[len(out["validation"]) :]
    else:
        forward = open_engine(row, torch.get_num_threads(), export_cfg)
        out = {s: np.concatenate([forward(b) for b in batches[s]]) for s in SPLITS_READ}
    val = training.scores(out["validation"], splits["validation"]["labels"], "val")
    test = training.scores(out["test"], splits["test"]["labels"], "test")
    return row_scores(test) | {"val_accuracy": val["val_accuracy"]}


def quiet() -> contextlib.ExitStack:
    """Silence the exporters' progress prints and known warnings (the results are checked instead)."""
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    stack.enter_context(contextlib.redirect_stdout(None))
    logging.disable(logging.WARNING)
    stack.callback(logging.disable, logging.NOTSET)
    return stack


def kinds(cfg: Any, variant: Any) -> list[tuple[str, str]]:
    """The (engine, precision) pairs of export.kinds built for a variant (int8 ones unless quantize=none)."""
    wanted = [
        (str(k.engine), str(k.precision))
        for k in cfg.export.kinds
        if variant.name == "dense" or not k.dense_only
    ]
    if str(cfg.quantize) == "none":
        wanted = [(e, p) for e, p in wanted if not p.startswith("int8")]
    return wanted


def build_variant(
    run: Any, variant: Any, folder: Path, splits: dict[str, dict], wanted: list[tuple[str, str]] | None = None
) -> list[dict]:
    """Rows for one trained variant: its torch precisions, then every ONNX Runtime and OpenVINO form of its
    ONNX export that export.kinds names (or just the `wanted` pairs), each with its accuracy measured on its
    own engine."""
    cfg = run.cfg
    model = training.load_saved(folder)
    params, nonzero = pruning.count(model)
    base = {"variant": variant.name, "sparsity": variant.sparsity, "structured": variant.structured}
    base |= {"layers": model.config.num_hidden_layers, "params": params, "nonzero_params": nonzero}
    base |= {"vocab_size": model.config.vocab_size, "test_examples": len(splits["test"]["labels"])}
    rows = []
    for engine, precision in kinds(cfg, variant) if wanted is None else wanted:
        if engine == "torch":
            path = folder
            size = training.state_mb(at_precision(model, precision))
        else:
            path = artifact(run.dir, variant.name, engine, precision, model, cfg.export, splits["train"])
            size = sum(f.stat().st_size for f in path.parent.iterdir()) / 2**20
        row = base | {"precision": precision, "engine": engine, "path": str(path), "file_mb": size}
        rows.append(row | accuracy(row, splits, cfg.export))
    return rows


def artifact(
    run_dir: Path,
    name: str,
    engine: str,
    precision: str,
    model: torch.nn.Module,
    export_cfg: Any,
    train: dict,
) -> Path:
    """variants/<name>-<precision>[-openvino]/model.onnx|xml, built from the variant's checked fp32 export."""
    from runner.sparsify import isolated, openvino_engine

    fp32 = run_dir / "variants" / f"{name}-fp32" / "model.onnx"
    if not fp32.exists():
        onnx_file(fp32, model, export_cfg)
    folder = run_dir / "variants" / (f"{name}-{precision}" + ("-openvino" if engine == "openvino" else ""))
    folder.mkdir(parents=True, exist_ok=True)
    calib = lambda: calibration(train, export_cfg.calibration_examples, export_cfg.eval_batch_size)  # noqa: E731
    with quiet():
        if engine == "onnxruntime" and precision == "fp32":
            return fp32
        if engine == "onnxruntime" and precision == "int8":
            return export.quantize_onnx(fp32, folder / "model.onnx", export_cfg)
        if engine == "onnxruntime" and precision == "int8-static":
            return export.quantize_static_onnx(fp32, folder / "model.onnx", calib(), export_cfg.static)
        ir = run_dir / "variants" / f"{name}-fp32-openvino" / "model.xml"
        if not ir.exists():
            ir.parent.mkdir(parents=True, exist_ok=True)
            isolated.call(openvino_engine.convert, str(fp32), str(ir))
        if precision == "fp32":
            return ir
        target = folder / "model.xml"
        isolated.call(
            openvino_engine.quantize, str(ir), str(target), calib(), export_cfg.calibration_examples
        )
        return target


def onnx_file(fp32: Path, model: torch.nn.Module, export_cfg: Any) -> Path:
    """The fp32 export, checked against torch on shapes other than the traced ones."""
    check_inputs = export.example_inputs(2, 16, model.config.vocab_size, seed=0)
    with quiet():
        export.export_onnx(model, fp32, export_cfg, check_inputs)
    check_export(model, fp32, export_cfg.atol)
    return fp32


def check_export(model: torch.nn.Module, path: Path, atol: float) -> None:
    """ONNX fp32 must compute the torch function: compare on shapes other than the traced ones."""
    inputs = export.example_inputs(3, 24, model.config.vocab_size, seed=1)
    with torch.no_grad():
        expected = model(**inputs).logits.numpy()
    got = sessions.run_session(sessions.session(path, torch.get_num_threads()), inputs)
    error = float(np.abs(got - expected).max())
    if error > atol:
        raise RuntimeError(
            f"ONNX export of {path.parent.name} differs from torch by {error:.2e} > export.atol"
        )
