"""``megatron-r1 pipeline PIPELINE.yaml --run-dir D [--resume]``: the R1 recipe as named, resumable stages.

PIPELINE.yaml::

    defaults:            # config sections every stage starts from (or ``defaults_file: base.yaml``)
      model: {num_layers: 2}
    stages:
      - name: cold_start
        kind: sft          # sft | grpo | rejection_sample | distill | eval  (pipeline/stages.py)
        config: {sft: {steps: 200}}      # this stage's overrides (sections of megatron_r1.config)
      - name: reasoning_rl
        kind: grpo
        from: cold_start   # its weights (latest checkpoint) and its model section
      - name: samples
        kind: rejection_sample
        from: reasoning_rl
      - name: sft
        kind: sft
        data: samples      # train on that stage's JSONL
      - name: eval
        kind: eval
        from: sft

Every stage runs in ``D/<name>``; it is marked done by ``D/<name>/DONE.json`` (written atomically, with its
outputs) only once it has completed. A rerun with ``--resume`` skips done stages and resumes the one that
was interrupted from its own checkpoints. Every stage's config is built and validated before any runs.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from megatron_r1.config import Config, ConfigError, apply_dict, load_yaml, validate
from megatron_r1.data.atomic import write_text_atomic
from megatron_r1.pipeline.stages import STAGES

log = logging.getLogger(__name__)

STAGE_KEYS = ("name", "kind", "config", "from", "data", "eval_data", "limit")
MARKER = "DONE.json"


@dataclass
class Stage:
    name: str
    kind: str
    cfg: Config
    options: dict = field(default_factory=dict)


def _stage_config(defaults: dict, overrides: dict, where: str, source: Stage | None) -> Config:
    """Defaults ← (the model section of the stage whose weights it starts from) ← the stage's own."""
    cfg = Config()
    apply_dict(cfg, defaults, where + " defaults")
    if source is not None:
        cfg.model = copy.deepcopy(source.cfg.model)
    apply_dict(cfg, overrides, where)
    return cfg


def load_pipeline(path: str | Path, run_dir: str | Path) -> list[Stage]:
    """Stages of a pipeline file with their configs (inputs wired to earlier stages' outputs under
    ``run_dir``), validated; every error names the file and stage."""
    path, run_dir = Path(path), Path(run_dir)
    spec = load_yaml(path)
    unknown = set(spec) - {"defaults", "defaults_file", "stages"}
    if unknown:
        raise ConfigError(
            f"{path}: unknown top-level key {sorted(unknown)[0]!r} (defaults, defaults_file, stages)"
        )
    defaults: dict = {}
    if "defaults_file" in spec:
        defaults = load_yaml(path.parent / spec["defaults_file"])
    for section, values in (spec.get("defaults") or {}).items():
        defaults[section] = {**defaults.get(section, {}), **values}
    raw = spec.get("stages")
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{path}: 'stages' must be a non-empty list")
    stages: list[Stage] = []
    for i, entry in enumerate(raw):
        where = f"{path}: stages[{i}]"
        if not isinstance(entry, dict) or "name" not in entry or "kind" not in entry:
            raise ConfigError(f"{where}: a stage needs 'name' and 'kind'")
        where = f"{path}: stage {entry['name']!r}"
        bad = [k for k in entry if k not in STAGE_KEYS]
        if bad:
            raise ConfigError(f"{where}: unknown key {bad[0]!r} (one of {', '.join(STAGE_KEYS)})")
        if entry["kind"] not in STAGES:
            raise ConfigError(f"{where}: unknown kind {entry['kind']!r} (one of {', '.join(sorted(STAGES))})")
        if any(s.name == entry["name"] for s in stages) or "/" in str(entry["name"]):
            raise ConfigError(f"{where}: stage names must be unique and contain no '/'")
        earlier = {s.name: s for s in stages}
        for key in ("from", "data"):
            if key in entry and entry[key] not in earlier:
                raise ConfigError(f"{where}: {key}: {entry[key]!r} is not an earlier stage")
        source = earlier[entry["from"]] if "from" in entry else None
        cfg = _stage_config(defaults, entry.get("config") or {}, where, source)
        if "from" in entry:
            cfg.model.checkpoint = str(run_dir / entry["from"])
        if "data" in entry:
            if earlier[entry["data"]].kind != "rejection_sample":
                raise ConfigError(f"{where}: data: {entry['data']!r} is not a rejection_sample stage")
            cfg.sft.data = str(run_dir / entry["data"] / "data.jsonl")
        try:
            validate(cfg)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        options = {k: entry[k] for k in ("eval_data", "limit") if k in entry}
        stages.append(Stage(entry["name"], entry["kind"], cfg, options))
    return stages


def run_pipeline(path: str | Path, run_dir: str | Path, resume: bool = False) -> dict[str, dict]:
    """Run (or, with ``resume``, finish) every stage; returns {stage name: its DONE record}."""
    run_dir = Path(run_dir)
    stages = load_pipeline(path, run_dir)
    started = [s.name for s in stages if (run_dir / s.name).exists()]
    if started and not resume:
        raise ConfigError(
            f"{run_dir}: stages {started} already started; rerun with --resume or use a new run dir"
        )
    main = int(os.environ.get("RANK", "0")) == 0  # under torchrun every rank runs the stages; one writes
    run_dir.mkdir(parents=True, exist_ok=True)
    saved, text = run_dir / "pipeline.yaml", Path(path).read_text()
    if resume and saved.is_file() and saved.read_text() != text:
        log.warning(
            "pipeline: %s differs from the file this run started with (%s); done stages stay", path, saved
        )
    if main:
        write_text_atomic(saved, text)
    records: dict[str, dict] = {}
    for stage in stages:
        stage_dir = run_dir / stage.name
        marker = stage_dir / MARKER
        if marker.is_file():
            records[stage.name] = json.loads(marker.read_text())
            log.info("pipeline: stage %s done, skipped", stage.name)
            continue
        again = stage_dir.exists()
        log.info("pipeline: stage %s (%s)%s", stage.name, stage.kind, " resumed" if again else "")
        t0 = time.monotonic()
        outputs = STAGES[stage.kind](stage.cfg, stage_dir, again, stage.options)
        record = {"kind": stage.kind, "outputs": outputs, "seconds": time.monotonic() - t0}
        if main:
            write_text_atomic(marker, json.dumps(record, indent=2))
        records[stage.name] = record
    if main:
        write_text_atomic(run_dir / "pipeline.json", json.dumps(records, indent=2))
    return records
