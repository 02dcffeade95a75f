"""Checks of a run's and a conversion's inputs that cost milliseconds, made before anything expensive (process
groups, model building, weight loading) so bad input fails at once with one line naming the file or key.

:func:`check_train_inputs` runs every check of :data:`TRAIN_CHECKS` (a registry: add a check by appending a
function ``check(cfg) -> None`` that raises :class:`~megatron_r1.config.ConfigError`). The file-level helpers
(:func:`check_hf_dir`, :func:`check_safetensors`, :func:`check_output_path`) are shared with ``convert``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from megatron_r1.config import Config, ConfigError

_SAFETENSORS_HEADER_LIMIT = 100 * 2**20  # the format's own cap on the JSON header


def check_safetensors(path: str | Path) -> None:
    """A safetensors file whose header parses and whose tensors lie inside the file (a truncated download or
    copy fails here, not deep inside the loader). Reads only the header."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n < 0 or n > min(size - 8, _SAFETENSORS_HEADER_LIMIT):
                raise ConfigError(f"{path}: truncated or not a safetensors file ({size} bytes)")
            header = json.loads(f.read(n))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ConfigError(f"{path}: corrupt safetensors header") from None
    try:
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (KeyError, TypeError, IndexError):
        raise ConfigError(f"{path}: corrupt safetensors header") from None
    if 8 + n + end > size:
        raise ConfigError(f"{path}: truncated: its tensors need {8 + n + end} bytes, the file has {size}")


def read_json_file(path: str | Path, what: str) -> dict:
    """A JSON object from ``path``; a missing, unreadable or malformed file is one line naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: missing ({what})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: invalid JSON ({what}): {getattr(exc, 'msg', exc)}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object ({what})")
    return data


def check_hf_dir(hf_dir: str | Path, key: str = "model.hf_path") -> dict:
    """A local Hugging Face model directory: ``config.json`` parses, every safetensors file it needs is
    whole. Returns the parsed config.json."""
    hf_dir = Path(hf_dir)
    if not hf_dir.is_dir():
        raise ConfigError(f"{key}={hf_dir}: not a directory (expected a local Hugging Face model directory)")
    hf = read_json_file(hf_dir / "config.json", "the model's config.json")
    index = hf_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json_file(index, "the safetensors index").get("weight_map")
        if not isinstance(weight_map, dict):
            raise ConfigError(f"{index}: no 'weight_map' object")
        files = [hf_dir / name for name in sorted(set(weight_map.values()))]
    else:
        files = [hf_dir / "model.safetensors"]
    for path in files:
        if not path.is_file():
            raise ConfigError(f"{path}: missing (the weights of {key}={hf_dir})")
        check_safetensors(path)
    return hf


def check_output_path(path: str | Path, what: str) -> None:
    """An output directory that can be created: not an existing file, its nearest existing parent writable."""
    import os

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{path}: exists and is not a directory ({what})")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{path}: {parent} is not a directory ({what})")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{path}: {parent} is not writable ({what})")


# ------------------------------------------------------------------------------------------ train checks


def _check_hf_model(cfg: Config) -> None:
    if not cfg.model.hf_path:
        return
    hf = check_hf_dir(cfg.model.hf_path)
    max_pos = hf.get("max_position_embeddings")
    if isinstance(max_pos, int) and cfg.rollout.max_new_tokens >= max_pos:
        raise ConfigError(
            f"rollout.max_new_tokens={cfg.rollout.max_new_tokens} must be smaller than the model's "
            f"max_position_embeddings={max_pos} ({cfg.model.hf_path}/config.json)"
        )


def _check_rewards(cfg: Config) -> None:
    from megatron_r1 import rewards

    for name in [*cfg.reward.weights, cfg.reward.accuracy]:
        try:
            rewards.get(name)
        except KeyError as exc:
            key = "reward.accuracy" if name == cfg.reward.accuracy else "reward.weights"
            raise ConfigError(f"{key}: {exc.args[0]}") from None


def _check_jsonl_data(cfg: Config) -> None:
    if cfg.data.source != "jsonl":
        return
    from megatron_r1 import rewards
    from megatron_r1.data.jsonl import read_jsonl

    path = Path(cfg.data.path)
    if path.is_dir():
        raise ConfigError(f"data.path={path}: is a directory, not a JSONL file")
    if not path.is_file():
        raise ConfigError(f"data.path={path}: file not found")
    try:
        rows = read_jsonl(path)
    except UnicodeDecodeError:
        raise ConfigError(f"data.path={path}: not a UTF-8 text JSONL file") from None
    except OSError as exc:
        raise ConfigError(f"data.path={path}: cannot read ({exc.strerror})") from None
    if not rows:
        raise ConfigError(f"data.path={path}: no rows (the file is empty)")
    if len(rows) <= cfg.data.eval_size:
        raise ConfigError(
            f"data.path={path}: {len(rows)} rows, but data.eval_size={cfg.data.eval_size} are held out for "
            "evaluation and training needs the rest"
        )
    for name in dict.fromkeys([*cfg.reward.weights, cfg.reward.accuracy]):
        for i, row in enumerate(rows):
            missing = rewards.missing_fields(name, row)
            if missing:
                raise ConfigError(
                    f"data.path={path}: row {i + 1} has no {', '.join(repr(m) for m in missing)}, which the "
                    f"reward {name!r} needs"
                )


TRAIN_CHECKS: list[Callable[[Config], None]] = [_check_rewards, _check_hf_model, _check_jsonl_data]
"""Input checks of ``megatron-r1 train``, run in order before any setup."""


def check_train_inputs(cfg: Config) -> None:
    """Every check of :data:`TRAIN_CHECKS`; the first problem raises :class:`ConfigError`."""
    for check in TRAIN_CHECKS:
        check(cfg)
