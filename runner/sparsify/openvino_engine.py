"""OpenVINO as an engine: convert the exported ONNX file, quantize it with NNCF, compile and run it.

Every function here runs inside a process of its own (isolated.call, or the timing process of measure.py):
OpenVINO and NNCF crash in a process that has trained with torch. Arguments and results are plain paths and
numpy arrays so they cross the process boundary.
"""

from __future__ import annotations

from typing import Any

import numpy as np

DEVICE = "CPU"


def convert(onnx_path: str, xml_path: str) -> str:
    """ONNX -> OpenVINO IR (model.xml + model.bin), weights kept in fp32."""
    import openvino as ov

    ov.save_model(ov.convert_model(onnx_path), xml_path, compress_to_fp16=False)
    return xml_path


def quantize(xml_fp32: str, xml_int8: str, calibration: list[dict[str, np.ndarray]], subset_size: int) -> str:
    """NNCF post-training int8 (the transformer preset: SmoothQuant, no quantized softmax or layer norm),
    statistics from `calibration`, batches of training examples only (the caller's guarantee, tested)."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(xml_fp32)
    names = input_names(model)
    dataset = nncf.Dataset(calibration, lambda batch: {k: batch[k] for k in names})
    quantized = nncf.quantize(model, dataset, model_type=nncf.ModelType.TRANSFORMER, subset_size=subset_size)
    ov.save_model(quantized, xml_int8, compress_to_fp16=False)
    return xml_int8


def input_names(model: Any) -> list[str]:
    return [port.get_any_name() for port in model.inputs]


def compile_model(xml_path: str, threads: int, hint: str, precision: str | None) -> Any:
    """A compiled model with OpenVINO's own latency settings on `threads` cores.

    precision: INFERENCE_PRECISION_HINT (f32 keeps an fp32 row fp32; null leaves the engine's choice, which
    is bf16 for the unquantized ops on CPUs with AMX or AVX-512 bf16)."""
    import openvino as ov

    config = {"PERFORMANCE_HINT": hint, "INFERENCE_NUM_THREADS": threads}
    if precision is not None:
        config["INFERENCE_PRECISION_HINT"] = precision
    return ov.Core().compile_model(xml_path, DEVICE, config)


def forward(compiled: Any) -> Any:
    """inputs (numpy or torch arrays by name) -> logits, numpy."""
    names = input_names(compiled)
    request = compiled.create_infer_request()

    def run(inputs: dict[str, Any]) -> np.ndarray:
        feed = {k: np.asarray(inputs[k]) for k in names}
        return np.array(request.infer(feed)[compiled.outputs[0]])

    return run


def logits(xml_path: str, threads: int, hint: str, precision: str | None, batches: list[dict]) -> np.ndarray:
    """Logits of every batch, concatenated (a whole split's accuracy, in an isolated process)."""
    run = forward(compile_model(xml_path, threads, hint, precision))
    return np.concatenate([run(b) for b in batches])
