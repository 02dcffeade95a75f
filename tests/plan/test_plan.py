"""`megatron-r1 plan`: every example config fits its declared GPUs; the flagship's numbers are those of a
671B model; a layout that cannot fit exits 1 saying why; FP8 and recompute move the memory they should."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from megatron_r1.cli import main
from megatron_r1.config import load_config
from megatron_r1.plan import make_plan

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "examples" / "configs").glob("*.yaml")) + sorted(
    (ROOT / "examples" / "scaling").glob("*.yaml")
)
FLAGSHIP = ROOT / "examples" / "configs" / "deepseek_v3_671b_r1.yaml"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_example_config_declares_its_gpus_and_fits(path):
    cfg = load_config(path)
    assert cfg.parallel.world_size > 0, f"{path.name}: parallel.world_size is not declared"
    gpu = "H800" if "h800" in path.name else "H100"
    plan = make_plan(cfg, gpu=gpu)
    assert plan.fits, f"{path.name}: {plan.reasons}"
    assert plan.layout.world == cfg.parallel.world_size
    assert plan.peak_gib <= plan.gpu.memory_gib <= 80


def test_flagship_fits_with_every_part_nonzero_and_671b(capsys):
    assert main(["plan", str(FLAGSHIP), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["fits"] and out["gpus"] == 1024 and out["gpu_memory_gib"] <= 80
    parts = out["per_gpu_gib"]
    for part in ("weights", "grads", "optimizer", "activations", "kv_cache", "engine_weights"):
        assert parts[part] > 0, part
    assert parts["total"] <= out["gpu_memory_gib"] and out["step_seconds"] > 0
    total, active = out["params"]["total"], out["params"]["active"]
    assert 670e9 < total < 672e9 and 36e9 < active < 38e9  # DeepSeek-V3: 671B total, 37B active
    # Weights in bf16: the trainer's share of 671B × 2 bytes over TP 16 × EP 64 (dense part over TP), plus
    # what Megatron keeps whole on every TP rank (norms, router, MLA's down-projections).
    lay = out["layout"]
    expert_share = out["params"]["experts"] / (lay["ep"] * lay["etp"])
    dense_share = (total - out["params"]["experts"]) / lay["tp"]
    replicated = sum(layer.replicated for layer in make_plan(load_config(FLAGSHIP)).params.layers)
    split_bytes = 2 * (expert_share + dense_share)
    assert split_bytes / 2**30 < parts["weights"] < (split_bytes + 2 * replicated) / 2**30
    assert parts["engine_weights"] == pytest.approx(2 * total / lay["rollout_tp"] / 2**30, rel=1e-3)


def test_flagship_without_model_parallelism_exits_1_saying_why(capsys):
    overrides = ["parallel.tensor_parallel=1", "parallel.pipeline_parallel=1", "parallel.expert_parallel=1"]
    assert main(["plan", str(FLAGSHIP), *overrides]) == 1
    captured = capsys.readouterr()
    reason = captured.err.strip()
    assert len(reason.splitlines()) == 1
    assert "does not fit" in reason and "GiB per GPU" in reason
    assert captured.out.rstrip().endswith(reason.removeprefix("megatron-r1 plan: "))


def test_fp8_keeps_weight_copies_and_halves_gemm_inputs():
    cfg = load_config(ROOT / "examples" / "configs" / "qwen2.5_7b_r1_zero_paper.yaml")
    bf16 = make_plan(cfg)
    fp8 = make_plan(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, fp8="hybrid")))
    assert fp8.train_phase["weights"] > bf16.train_phase["weights"]
    assert fp8.train_phase["activations"] < bf16.train_phase["activations"]
    assert fp8.time.train < bf16.time.train


def test_recompute_and_more_gpus_reduce_memory():
    cfg = load_config(ROOT / "examples" / "configs" / "qwen2.5_7b_r1_zero_paper.yaml")
    full = make_plan(cfg)
    none = make_plan(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, recompute="none")))
    assert full.train_phase["activations"] < none.train_phase["activations"]
    assert not none.fits and "activations" in none.reasons[0]
    wider = make_plan(cfg, gpus=16)
    assert wider.train_phase["optimizer"] == pytest.approx(full.train_phase["optimizer"] / 2)


@pytest.mark.parametrize("tied", [False, True])
def test_pipeline_stages_hold_every_parameter_once(tied):
    """Stages of TP 1 × PP 4 (× EP 4 for experts) partition the model; tied embeddings add the last stage's
    copy of the output layer, as Megatron builds it."""
    from megatron_r1.plan.layout import make_layout
    from megatron_r1.plan.memory import stage_params
    from megatron_r1.plan.params import model_params

    overrides = [
        "model.preset=qwen3_moe",
        "model.num_layers=8",
        "model.num_experts=8",
        "model.vocab_size=128",
        f"model.tie_word_embeddings={str(tied).lower()}",
        "parallel.pipeline_parallel=4",
        "parallel.expert_parallel=4",
        "parallel.world_size=16",
    ]
    cfg = load_config(None, overrides)
    layout = make_layout(cfg)
    params = model_params(cfg.model)
    stages = [stage_params(params, cfg.model, layout, s) for s in range(layout.pp)]
    assert sum(s.experts for s in stages) * layout.ep == params.experts
    extra = params.embedding if tied else 0
    assert sum(s.dense for s in stages) + params.experts == params.total + extra
    assert stages[0].dense > stages[1].dense and stages[-1].dense > stages[1].dense  # embedding / output


def test_architecture_comes_from_hf_config_json_when_present(tmp_path):
    """With hf_path's config.json on this machine the planner reads it (as training does), not the YAML's
    architecture fields; the plan of the flagship is then the same."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("families", ROOT / "tests" / "models" / "test_families.py")
    families = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(families)
    (tmp_path / "config.json").write_text(json.dumps(families.DEEPSEEK_V3_671B))
    cfg = load_config(FLAGSHIP, [f"model.hf_path={tmp_path}", "model.num_layers=2"])
    plan = make_plan(cfg)
    assert plan.model_source == f"{tmp_path}/config.json"
    assert plan.model.num_layers == 61 and plan.model.params_dtype == "bfloat16"
    assert plan.params.total == make_plan(load_config(FLAGSHIP)).params.total


def test_text_report_prints_every_assumption_and_the_hardware_source(capsys):
    from dataclasses import fields

    from megatron_r1.plan import Assumptions

    assert main(["plan", str(ROOT / "examples" / "configs" / "tiny_cpu_demo.yaml"), "--gpu", "h800"]) == 0
    out = capsys.readouterr().out
    for f in fields(Assumptions):
        assert f"{f.name} = " in out, f.name
    assert "DeepSeek-V3 technical report" in out and out.rstrip().endswith("fits")
