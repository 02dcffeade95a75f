"""Checkpoint files: HF directory ⇄ Megatron-Core dist_checkpoint, and loading either into a built model.

A converted Megatron checkpoint directory holds the ``dist_checkpointing`` files of the model
(``model.sharded_state_dict()``, loadable under any TP / PP / EP layout), ``megatron_r1_model.json`` (the
:class:`ModelConfig`, so a later load knows the architecture), ``hf_config.json`` (the source ``config.json``,
written back by :func:`megatron_to_hf`) and the tokenizer files. Both directions stream: HF weights are read
tensor by tensor with ``safe_open`` and copied into the model's parameters, HF shards are written as they
fill. Output directories are written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from megatron_r1.config import ConfigError, ModelConfig, ParallelConfig
from megatron_r1.convert.hf_config import hf_config_from_model_config
from megatron_r1.convert.naming import (  # noqa: F401 (canonical_name, global_name: re-exported)
    LAYER,
    LOCAL_EXPERT,
    canonical_name,
    expert_layout,
    gated_parameters,
    global_name,
    model_tensors,
    tp_shard,
)

logger = logging.getLogger(__name__)

MODEL_CONFIG_FILE = "megatron_r1_model.json"
HF_CONFIG_FILE = "hf_config.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)


class ConversionError(RuntimeError):
    """A checkpoint that does not match the model (names, shapes, logits), reported as one line."""


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of ``--verify``: the largest absolute logit difference and the tolerance it was held to."""

    max_abs_diff: float
    tolerance: float


# --------------------------------------------------------------------------- reading HF safetensors


def hf_weight_files(hf_dir: str | Path) -> list[Path]:
    """The safetensors files of a local HF directory (sharded via the index, or one file)."""
    hf_dir = Path(hf_dir)
    index = hf_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [hf_dir / name for name in sorted(set(weight_map.values()))]
    single = hf_dir / "model.safetensors"
    if single.is_file():
        return [single]
    raise ConversionError(f"no model.safetensors or model.safetensors.index.json in {hf_dir}")


def iter_hf_tensors(hf_dir: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, tensor), read one at a time from the directory's safetensors files."""
    from safetensors import safe_open

    for path in hf_weight_files(hf_dir):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                yield name, f.get_tensor(name)


# --------------------------------------------------------------------------- loading into a model


def _shard(name: str, full: torch.Tensor, param: torch.Tensor, gated: set[int]) -> torch.Tensor:
    """This rank's slice of a full tensor, following the parameter's tensor-parallel attributes."""
    if not getattr(param, "tensor_model_parallel", False):
        return full
    from megatron.core import parallel_state as mpu

    if ".experts." in name:
        rank, size = mpu.get_expert_tensor_parallel_rank(), mpu.get_expert_tensor_parallel_world_size()
    else:
        rank, size = mpu.get_tensor_model_parallel_rank(), mpu.get_tensor_model_parallel_world_size()
    return tp_shard(full, rank, size, param.partition_dim, id(param) in gated)


def load_hf_weights(model: torch.nn.Module, hf_dir: str | Path, cfg: ModelConfig) -> None:
    """Stream a HF checkpoint into a built Megatron model (any TP / PP / EP layout: each rank keeps the
    slices it owns). A missing, unexpected or mis-shaped tensor is an error naming it (and both shapes)."""
    from megatron_r1.convert import get_adapter

    adapter = get_adapter(cfg.preset)
    params = model_tensors(model)
    gated = gated_parameters(model)
    loaded: set[str] = set()
    with torch.no_grad():
        for name, full in _with_tied_head(adapter.from_hf(iter_hf_tensors(hf_dir), cfg), cfg, params):
            param = params.get(name)
            if param is None:
                if _owned_elsewhere(model, name):
                    continue
                raise ConversionError(f"checkpoint tensor {name!r} has no parameter in the model")
            shard = _shard(name, full, param, gated)
            if tuple(shard.shape) != tuple(param.shape):
                sliced = f" (this rank's slice {tuple(shard.shape)})" if shard is not full else ""
                raise ConversionError(
                    f"shape mismatch for {name!r}: checkpoint {tuple(full.shape)}{sliced} "
                    f"vs model {tuple(param.shape)}"
                )
            param.copy_(shard)
            loaded.add(name)
    missing = sorted(set(params) - loaded)
    if missing:
        raise ConversionError(f"model tensors missing from {hf_dir}: {', '.join(missing[:8])}")


def _with_tied_head(named: Iterator[tuple[str, torch.Tensor]], cfg: ModelConfig, params: dict) -> Iterator:
    """With tied embeddings and pipeline parallelism the last stage holds its own copy of the embedding as
    ``output_layer.weight``; feed it the embedding."""
    for name, tensor in named:
        yield name, tensor
        if (
            name == "embedding.word_embeddings.weight"
            and cfg.tie_word_embeddings
            and "output_layer.weight" in params
        ):
            yield "output_layer.weight", tensor


def _owned_elsewhere(model: torch.nn.Module, name: str) -> bool:
    """Whether a full tensor belongs to another pipeline stage or expert-parallel rank."""
    m = LAYER.match(name)
    if m:
        numbers = {layer.layer_number - 1 for layer in model.decoder.layers}
        if int(m.group(1)) not in numbers:
            return True
        e = LOCAL_EXPERT.search(name)
        first, local = expert_layout(model)
        return bool(e and local and not first <= int(e.group(1)) < first + local)
    pre = getattr(model, "pre_process", True)
    post = getattr(model, "post_process", True)
    return (name.startswith("embedding.") and not pre) or (
        (name.startswith("output_layer.") or name.startswith("decoder.final_layernorm")) and not post
    )


# --------------------------------------------------------------------------- dist_checkpointing


def save_dist_checkpoint(model: torch.nn.Module, ckpt_dir: str | Path) -> None:
    """Save the model as a Megatron-Core dist_checkpoint (collective: every rank calls it)."""
    from megatron.core import dist_checkpointing

    Path(ckpt_dir).mkdir(parents=True, exist_ok=True)
    dist_checkpointing.save(model.sharded_state_dict(), str(ckpt_dir))


def load_dist_checkpoint(model: torch.nn.Module, ckpt_dir: str | Path) -> None:
    """Load a dist_checkpoint into a built model of any parallel layout (collective). A tensor whose
    global shape differs from the model's, or that is missing, is an error naming it and both shapes."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedTensor
    from megatron.core.dist_checkpointing.utils import extract_sharded_tensors_and_factories

    sharded = model.sharded_state_dict()
    saved = dist_checkpointing.load_tensors_metadata(str(ckpt_dir))
    tensors, _ = extract_sharded_tensors_and_factories(sharded)
    for item in _flatten(tensors):
        if not isinstance(item, ShardedTensor):
            continue
        if item.key not in saved:
            raise ConversionError(f"tensor {item.key!r} is missing from the checkpoint {ckpt_dir}")
        have = tuple(saved[item.key].global_shape)
        if have != tuple(item.global_shape):
            raise ConversionError(
                f"shape mismatch for {item.key!r}: checkpoint {have} vs model {tuple(item.global_shape)}"
            )
    state = dist_checkpointing.load(sharded, str(ckpt_dir))
    model.load_state_dict(state, strict=False)


def _flatten(tree) -> Iterator:
    if isinstance(tree, dict):
        for value in tree.values():
            yield from _flatten(value)
    elif isinstance(tree, list | tuple):
        for value in tree:
            yield from _flatten(value)
    else:
        yield tree


def read_model_config(ckpt_dir: str | Path) -> ModelConfig:
    """The ModelConfig of a checkpoint: ``megatron_r1_model.json`` beside a converted one, or the ``model``
    section of the run's ``config.json`` for a training checkpoint ``RUN/checkpoints/step_N``."""
    ckpt_dir = Path(ckpt_dir)
    path = ckpt_dir / MODEL_CONFIG_FILE
    run_config = ckpt_dir.parent.parent / "config.json"
    if path.is_file():
        data = json.loads(path.read_text())
    elif run_config.is_file() and "model" in json.loads(run_config.read_text()):
        path, data = run_config, json.loads(run_config.read_text())["model"]
    else:
        raise ConversionError(
            f"{ckpt_dir} has no {MODEL_CONFIG_FILE} and is not a training checkpoint RUN/checkpoints/step_N "
            "with RUN/config.json"
        )
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(f"{path}: unknown ModelConfig fields {', '.join(unknown)}")
    return ModelConfig(**data)


def dist_checkpoint_dir(ckpt_dir: str | Path) -> Path:
    """Where the dist_checkpoint files are: the directory itself, or its ``model/`` (trainer layout)."""
    ckpt_dir = Path(ckpt_dir)
    if (ckpt_dir / "model" / "metadata.json").is_file():
        return ckpt_dir / "model"
    if (ckpt_dir / "metadata.json").is_file():
        return ckpt_dir
    raise ConversionError(f"no Megatron dist_checkpoint (metadata.json) in {ckpt_dir} or its model/")


def load_megatron_model(
    ckpt_dir: str | Path, parallel: ParallelConfig | None = None, **overrides
) -> tuple[torch.nn.Module, ModelConfig]:
    """Build this rank's model (pipeline stage of the current layout; ``init_distributed`` first) and load
    a converted or training dist_checkpoint into it (see :func:`read_model_config`)."""
    from megatron.core import parallel_state as mpu

    from megatron_r1.models import build_model

    cfg = dataclasses.replace(read_model_config(ckpt_dir), **overrides)
    parallel = parallel or ParallelConfig(
        tensor_parallel=mpu.get_tensor_model_parallel_world_size(),
        pipeline_parallel=mpu.get_pipeline_model_parallel_world_size(),
    )
    model = build_model(
        cfg,
        parallel,
        pre_process=mpu.is_pipeline_first_stage(),
        post_process=mpu.is_pipeline_last_stage(),
    )
    load_dist_checkpoint(model, dist_checkpoint_dir(ckpt_dir))
    return model, cfg


# --------------------------------------------------------------------------- directories


@contextmanager
def atomic_dir(out_dir: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; rename it to ``out_dir`` only if the block succeeds."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ConversionError(f"output directory {out} exists and is not empty")
    tmp = out.parent / f".{out.name}.incomplete-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        out.rmdir()
    tmp.rename(out)


def copy_tokenizer_files(src: str | Path, dst: str | Path) -> list[str]:
    """Copy the tokenizer (and generation config) files present in ``src``; their names."""
    copied = []
    for name in TOKENIZER_FILES:
        if (Path(src) / name).is_file():
            shutil.copy2(Path(src) / name, Path(dst) / name)
            copied.append(name)
    return copied


def _world_of_one() -> None:
    """A single-process distributed world (TP = PP = 1) for the offline conversion commands."""
    import torch.distributed as dist

    from megatron_r1.parallel import init_distributed

    if dist.is_initialized() and dist.get_world_size() > 1:
        raise ConversionError("the conversion commands run in a single process (no torchrun)")
    init_distributed(ParallelConfig())


# --------------------------------------------------------------------------- the two directions


def hf_to_megatron(
    hf_dir: str | Path, out_dir: str | Path, verify: bool = False, tolerance: float | None = None
) -> VerifyResult | None:
    """Convert a local HF model directory to a Megatron dist_checkpoint directory (see the module doc).

    With ``verify`` the saved checkpoint is loaded back into a fresh model and its logits on fixed random
    tokens are compared with transformers'; above ``tolerance`` (default: 1e-4 in float32, 5e-2 in bf16/fp16)
    nothing is written and :class:`ConversionError` is raised.
    """
    from megatron_r1.models import build_model
    from megatron_r1.models.hf import model_config_from_hf, read_hf_config

    cfg = model_config_from_hf(hf_dir)
    _world_of_one()
    model = build_model(cfg, ParallelConfig())
    load_hf_weights(model, hf_dir, cfg)
    result = None
    with atomic_dir(out_dir) as tmp:
        save_dist_checkpoint(model, tmp)
        del model
        (tmp / MODEL_CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
        (tmp / HF_CONFIG_FILE).write_text(json.dumps(read_hf_config(hf_dir), indent=2))
        copy_tokenizer_files(hf_dir, tmp)
        if verify:
            result = verify_against_hf(tmp, hf_dir, tolerance)
    logger.info("converted %s -> %s (%s)", hf_dir, out_dir, cfg.preset)
    return result


def megatron_to_hf(
    ckpt_dir: str | Path,
    out_dir: str | Path,
    hf_reference_dir: str | Path | None = None,
    max_shard_bytes: int = 2 * 1024**3,
) -> None:
    """Write a Megatron checkpoint (converted, or a training checkpoint ``RUN/checkpoints/step_N``) as a HF
    directory: safetensors shards, ``model.safetensors.index.json``, ``config.json`` and the tokenizer files.

    ``config.json`` comes from ``hf_reference_dir``, else the one stored at conversion, else the model's
    ``hf_path``, else it is generated from the ModelConfig (``hf_config.hf_config_from_model_config``: every
    preset, MoE / MLA included); tokenizer files come from the first of those directories that has them."""
    from megatron_r1.convert import get_adapter

    ref = [Path(hf_reference_dir)] if hf_reference_dir else []
    cfg = read_model_config(ckpt_dir)
    origin = [Path(cfg.hf_path)] if cfg.hf_path else []
    candidates = [d / "config.json" for d in ref] + [Path(ckpt_dir) / HF_CONFIG_FILE]
    candidates += [d / "config.json" for d in origin]
    config_file = next((c for c in candidates if c.is_file()), None)
    # Built before the model, so a preset transformers cannot express fails before any expensive work.
    config = None if config_file is not None else hf_config_from_model_config(cfg)
    _world_of_one()
    model, cfg = load_megatron_model(ckpt_dir, ParallelConfig())
    adapter = get_adapter(cfg.preset)
    # Megatron keeps some tensors (the local spec's norms) in float32 under bf16: export in the model dtype.
    dtype = getattr(torch, cfg.params_dtype)
    with atomic_dir(out_dir) as tmp:
        with torch.no_grad():
            named = (
                (hf_name, hf_tensor.to(dtype))
                for name, tensor in model_tensors(model).items()
                for hf_name, hf_tensor in adapter.to_hf(name, tensor.detach(), cfg)
            )
            write_safetensors_shards(named, tmp, max_shard_bytes)
        if config_file is not None:
            shutil.copy2(config_file, tmp / "config.json")
        else:
            (tmp / "config.json").write_text(json.dumps(config, indent=2))
        for src in [*ref, Path(ckpt_dir), *origin]:
            if copy_tokenizer_files(src, tmp):
                break
        else:
            logger.warning("no tokenizer files found for %s; config and weights only", ckpt_dir)
    logger.info("exported %s -> %s", ckpt_dir, out_dir)


def write_safetensors_shards(
    named: Iterator[tuple[str, torch.Tensor]], out_dir: Path, max_shard_bytes: int
) -> dict[str, str]:
    """Write (name, tensor) pairs into ``model-0000i-of-0000n.safetensors`` shards of at most
    ``max_shard_bytes`` (one tensor if larger) and the index; returns the weight map."""
    from safetensors.torch import save_file

    shards: list[list[str]] = []
    weight_map: dict[str, str] = {}
    bucket: dict[str, torch.Tensor] = {}
    size = total = 0

    def flush() -> None:
        nonlocal bucket, size
        if bucket:
            save_file(bucket, str(out_dir / f".shard-{len(shards)}"), metadata={"format": "pt"})
            shards.append(list(bucket))
            bucket, size = {}, 0

    for name, tensor in named:
        if name in weight_map or name in bucket:
            raise ConversionError(f"tensor {name!r} produced twice")
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and size + nbytes > max_shard_bytes:
            flush()
        bucket[name] = tensor.contiguous().clone()
        size += nbytes
        total += nbytes
    flush()
    for i, names in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        (out_dir / f".shard-{i}").rename(out_dir / file)
        (out_dir / file).chmod(0o644)  # safetensors writes 0600
        weight_map.update(dict.fromkeys(names, file))
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return weight_map


# --------------------------------------------------------------------------- verification


def megatron_logits(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary logits [b, s, vocab] of a single-stage model (vocab-parallel shards gathered)."""
    from megatron.core import parallel_state as mpu
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    positions = torch.arange(tokens.shape[1]).unsqueeze(0).expand_as(tokens)
    with torch.no_grad():
        logits = model(tokens, positions, attention_mask=None)
        if mpu.get_tensor_model_parallel_world_size() > 1 and logits.shape[-1] != model.vocab_size:
            logits = gather_from_tensor_model_parallel_region(logits)
    return logits.float()


def hf_logits(hf_dir: str | Path, tokens: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """transformers' logits [b, s, vocab] for ``tokens`` (local files only)."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=dtype, local_files_only=True)
    hf.eval()
    with torch.no_grad():
        return hf(tokens).logits.float()


def verify_against_hf(
    ckpt_dir: str | Path, hf_dir: str | Path, tolerance: float | None = None, seq_len: int = 16
) -> VerifyResult:
    """Load the Megatron checkpoint and the HF model, run the same random tokens through both, raise if
    the largest absolute logit difference exceeds the tolerance."""
    model, cfg = load_megatron_model(ckpt_dir, ParallelConfig())
    model.eval()
    dtype = getattr(torch, cfg.params_dtype)
    if tolerance is None:
        tolerance = 1e-4 if dtype is torch.float32 else 5e-2
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg.vocab_size, (2, seq_len), generator=gen)
    ours = megatron_logits(model, tokens)
    del model
    theirs = hf_logits(hf_dir, tokens, dtype)
    diff = (ours - theirs).abs().max().item()
    logger.info("verify: max |logit diff| = %.3g (tolerance %.3g)", diff, tolerance)
    if not diff <= tolerance:
        raise ConversionError(f"logits differ from transformers': max abs diff {diff:.3g} > {tolerance:.3g}")
    return VerifyResult(diff, tolerance)
