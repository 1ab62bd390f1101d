"""The exported engines' forwards, importing neither torch nor transformers (a timing process that runs an
ONNX Runtime or OpenVINO model starts in a fraction of a second, not the 3 s those imports cost)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

Forward = Callable[[dict[str, Any]], np.ndarray]  # inputs by name (numpy or torch arrays) -> logits


def session(path: Path, threads: int, spinning: bool | None = None) -> Any:
    """An onnxruntime CPU session with a fixed number of intra-op threads and every graph optimization.

    spinning: whether idle intra-op threads busy-wait for the next op (null: onnxruntime's default, on)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if spinning is not None:
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def session_forward(sess: Any) -> Forward:
    """The session as a forward; its input names are read once, so a timed call is the model's run alone."""
    wanted = {i.name for i in sess.get_inputs()}  # the exporter may drop an unused input
    return lambda inputs: sess.run(None, {k: np.asarray(v) for k, v in inputs.items() if k in wanted})[0]


def run_session(sess: Any, inputs: dict[str, Any]) -> np.ndarray:
    return session_forward(sess)(inputs)


def openvino_precision(row: dict, ov_cfg: Any) -> str | None:
    """INFERENCE_PRECISION_HINT of a row: export.openvino's fp32 or int8 setting."""
    return ov_cfg.fp32_precision if row["precision"] == "fp32" else ov_cfg.int8_precision


def open_exported(row: dict, threads: int, export_cfg: Any, spinning: bool | None = None) -> Forward:
    """A ready forward for an onnxruntime or openvino row."""
    if row["engine"] == "openvino":
        from runner.sparsify import openvino_engine

        ov = export_cfg.openvino
        compiled = openvino_engine.compile_model(row["path"], threads, ov.hint, openvino_precision(row, ov))
        return openvino_engine.forward(compiled)
    return session_forward(session(Path(row["path"]), threads, spinning))
