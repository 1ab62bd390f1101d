"""ONNX export (torch.onnx.export) and dynamic int8 quantization (onnxruntime and torch.ao)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from runner.errors import UsageError
from runner.results import replaced_atomically

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def example_inputs(batch: int, seq_len: int, vocab_size: int, seed: int) -> dict[str, torch.Tensor]:
    """Fixed random token ids with a full attention mask (the benchmark's inputs)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (batch, seq_len), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}


def export_onnx(model: torch.nn.Module, path: Path, export_cfg: Any, inputs: dict[str, torch.Tensor]) -> Path:
    """Export with dynamic batch and sequence axes; transformers 5 BERT exports when called with kwargs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq_len")
    axes = {name: {0: batch, 1: seq} for name in INPUTS}
    with replaced_atomically(path) as tmp:
        write_onnx(model, tmp, export_cfg, inputs, axes)
    return path


def write_onnx(model: torch.nn.Module, path: Path, export_cfg: Any, inputs: dict, axes: dict) -> None:
    torch.onnx.export(
        model,
        args=(),
        kwargs=inputs,
        f=str(path),
        input_names=list(INPUTS),
        output_names=["logits"],
        opset_version=export_cfg.opset,
        dynamo=export_cfg.dynamo,
        dynamic_shapes=axes if export_cfg.dynamo else None,
        dynamic_axes=None if export_cfg.dynamo else {n: {0: "batch", 1: "seq_len"} for n in INPUTS},
        external_data=False,
    )


def quantize_onnx(source: Path, target: Path, export_cfg: Any) -> Path:
    """Dynamic int8: weights quantized offline, activations per batch at run time (no calibration data)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target.parent.mkdir(parents=True, exist_ok=True)
    with replaced_atomically(target) as tmp:
        quantize_dynamic(
            source,
            tmp,
            weight_type=QuantType.QInt8,
            per_channel=export_cfg.per_channel,
            reduce_range=export_cfg.reduce_range,
        )
    return target


def quantize_torch(model: torch.nn.Module) -> torch.nn.Module:
    """torch.ao dynamic int8 on every Linear (deprecated in favour of torchao, but still runs on CPU)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deprecation notices of torch.ao and quantized tensors
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def check_onnx(path: Path) -> None:
    """A saved ONNX model, readable and well-formed, or one line naming it (a copy cut short, another file)."""
    import onnx

    if not path.is_file():
        raise UsageError(f"{path} is missing: run the quantize stage again (stage=quantize)")
    try:
        onnx.checker.check_model(onnx.load(str(path), load_external_data=False))
    except Exception as err:  # noqa: BLE001 - protobuf's decode errors, onnx's checker: any means unreadable
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UsageError(f"{path} is not a readable ONNX model ({reason})") from err


def session(path: Path, threads: int) -> Any:
    """An onnxruntime CPU session with a fixed number of intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_session(sess: Any, inputs: dict[str, torch.Tensor]) -> Any:
    wanted = {i.name for i in sess.get_inputs()}  # the exporter may drop an unused input
    return sess.run(None, {k: v.numpy() for k, v in inputs.items() if k in wanted})[0]
