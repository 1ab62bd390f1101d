"""ONNX export (torch.onnx.export); int8 quantization: dynamic (onnxruntime, torch.ao) and static (onnxruntime
QDQ, calibrated)."""

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


def quantize_static_onnx(source: Path, target: Path, calibration: list[dict], static_cfg: Any) -> Path:
    """Static int8 in QDQ form: int8 weights per output channel, activation ranges fixed offline from
    `calibration` (batches of training examples only: the caller's guarantee, tested); ONNX Runtime fuses
    each QuantizeLinear/DequantizeLinear pair around a MatMul into an integer kernel when it loads the file."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    reader = CalibrationReader(calibration)
    target.parent.mkdir(parents=True, exist_ok=True)
    with replaced_atomically(target) as tmp:
        quantize_static(
            source,
            tmp,
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=static_cfg.per_channel,
            activation_type=QuantType[static_cfg.activation_type],
            weight_type=QuantType.QInt8,
            op_types_to_quantize=list(static_cfg.op_types),
            calibrate_method=CalibrationMethod[static_cfg.method],
        )
    return target


class CalibrationReader:
    """onnxruntime's CalibrationDataReader protocol over a list of input batches (numpy, by input name)."""

    def __init__(self, batches: list[dict]) -> None:
        self.batches = batches
        self.rewind()

    def get_next(self) -> dict | None:
        return next(self.remaining, None)

    def rewind(self) -> None:
        self.remaining = iter(self.batches)


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
