"""A Hugging Face directory for an engine that starts from one (vLLM), when the run has no ``model.hf_path``.

The embedded demo's model (preset ``tiny``, the built-in character tokenizer) exists only as Megatron
parameters. vLLM needs a model directory: ``config.json`` (the tiny preset is a Llama), safetensors weights
and tokenizer files. The weights written are the policy's at build time; the trainer syncs the real ones
before the first generation, so only their names, shapes and dtypes matter to vLLM's start.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from megatron_r1.config import ModelConfig
from megatron_r1.data.tokenizer import SPECIAL_TOKENS, CharTokenizer


def char_tokenizer_to_hf(tokenizer: CharTokenizer):
    """The built-in character tokenizer as a ``transformers`` fast tokenizer with the same ids.

    Every character is its own token (split before the word-level lookup), the R1 tags and control tokens
    are special tokens matched first, and decoding concatenates (no spaces between tokens), so
    ``encode`` / ``decode`` agree with ``CharTokenizer``'s and vLLM's detokeniser sees the same text.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(tokenizer.vocab)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<pad>"
    )


def write_engine_hf_dir(
    out_dir: str | Path,
    model_cfg: ModelConfig,
    tokenizer,
    buckets: Iterator[list[tuple[str, torch.Tensor]]],
) -> Path:
    """Write ``config.json``, the weights (``buckets`` of HF-named full tensors, in the model dtype) and
    the tokenizer into ``out_dir``; returns it. ``tokenizer`` is a ``CharTokenizer`` or an HF tokenizer."""
    from megatron_r1.convert.checkpoint import hf_config_from_model_config, write_safetensors_shards

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = hf_config_from_model_config(model_cfg)
    config |= {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    dtype = getattr(torch, model_cfg.params_dtype)
    named = ((name, t.detach().to(dtype)) for bucket in buckets for name, t in bucket)
    write_safetensors_shards(named, out, max_shard_bytes=2 * 1024**3)
    hf_tokenizer = char_tokenizer_to_hf(tokenizer) if isinstance(tokenizer, CharTokenizer) else tokenizer
    hf_tokenizer.save_pretrained(out)
    tmp = out / "config.json.tmp"
    tmp.write_text(json.dumps(config, indent=2))
    tmp.rename(out / "config.json")
    return out


def engine_hf_dir(
    model_cfg: ModelConfig,
    tokenizer,
    buckets: Callable[[], Iterator[list[tuple[str, torch.Tensor]]]],
) -> str:
    """``model.hf_path`` when the run has one, else a fresh temporary directory written by
    :func:`write_engine_hf_dir` (removed at exit). ``buckets`` is called only then; it is a collective
    (every rank of the run must call this)."""
    if model_cfg.hf_path:
        return model_cfg.hf_path
    import atexit
    import shutil
    import tempfile

    path = tempfile.mkdtemp(prefix="megatron_r1_engine_hf_")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return str(write_engine_hf_dir(path, model_cfg, tokenizer, buckets()))
