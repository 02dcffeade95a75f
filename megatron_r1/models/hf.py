"""Read a local Hugging Face model directory's ``config.json`` into a :class:`ModelConfig`.

The ``architectures`` entry picks the family (``family_for_architecture``); the family's ``from_hf_config``
reads the sizes. Nothing is downloaded: the directory must exist locally.
"""

from __future__ import annotations

import json
from pathlib import Path

from megatron_r1.config import ConfigError, ModelConfig
from megatron_r1.models import family_for_architecture


def read_hf_config(hf_dir: str | Path) -> dict:
    """The ``config.json`` of a local HF model directory as a dict."""
    path = Path(hf_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"no config.json in {hf_dir} (expected a local Hugging Face model directory)")
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: invalid JSON: {getattr(exc, 'msg', exc)}") from None


def check_supported_features(hf: dict, hf_dir: str | Path) -> None:
    """Refuse config.json features the presets do not model (rather than converting to wrong logits)."""
    rope = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
    rope_type = rope.get("rope_type", rope.get("type")) or "default"
    allowed_rope = ("default", "yarn") if hf.get("kv_lora_rank") else ("default",)
    problems = []
    if rope_type not in allowed_rope:
        problems.append(f"rope scaling {rope_type!r}")
    if hf.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act {hf['hidden_act']!r}")
    if hf.get("mlp_bias"):
        problems.append("mlp_bias")
    if hf.get("attention_bias") and hf.get("model_type") not in ("qwen2",):
        problems.append("attention_bias (on the output projection too)")
    if hf.get("use_sliding_window"):
        problems.append("sliding-window attention")
    if problems:
        raise ConfigError(f"{hf_dir}/config.json: unsupported {', '.join(problems)}")


def model_config_from_hf(hf_dir: str | Path, **overrides) -> ModelConfig:
    """A ModelConfig (preset chosen from ``architectures``) for the HF model in ``hf_dir``."""
    hf = read_hf_config(hf_dir)
    architectures = hf.get("architectures") or []
    if not architectures:
        raise ConfigError(f"{hf_dir}/config.json has no 'architectures' entry")
    family = family_for_architecture(architectures[0])
    check_supported_features(hf, hf_dir)
    fields = family.from_hf_config(hf) if family.from_hf_config else {}
    dtype = str(hf.get("torch_dtype") or hf.get("dtype") or "float32")
    fields.setdefault("params_dtype", dtype if dtype in ("float32", "bfloat16", "float16") else "float32")
    return ModelConfig(preset=family.name, hf_path=str(hf_dir), **(fields | overrides))
