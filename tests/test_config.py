"""Configuration: YAML + overrides, typed coercion, unknown keys with suggestions, validation."""

import pytest

from megatron_r1.config import Config, ConfigError, load_config, parse_override, validate


def test_defaults_are_the_demo_and_valid():
    cfg = load_config()
    assert cfg.model.preset == "tiny" and cfg.data.source == "arithmetic"
    validate(cfg, world_size=1)


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 3.0e-6\n  steps: 5\nalgorithm:\n  kl_coef: 0.001\n")
    cfg = load_config(path, ["train.steps=7", "reward.weights={math: 1.0, format: 1.0}"])
    assert cfg.train.lr == 3e-6 and cfg.train.steps == 7 and cfg.algorithm.kl_coef == 0.001
    assert cfg.reward.weights == {"math": 1.0, "format": 1.0}


def test_int_is_accepted_for_float_and_types_are_checked():
    assert load_config(None, ["train.lr=1"]).train.lr == 1.0
    with pytest.raises(ConfigError, match=r"train\.steps: expected int"):
        load_config(None, ["train.steps=abc"])


def test_unknown_key_suggests_nearest():
    with pytest.raises(ConfigError, match=r"unknown key 'stpes'.*did you mean 'steps'"):
        load_config(None, ["train.stpes=3"])
    with pytest.raises(ConfigError, match=r"unknown section 'trian'.*'train'"):
        load_config(None, ["trian.steps=3"])


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  steps: 3\n  lr: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+: invalid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["parallel.tensor_parallel=3"], "tensor_parallel=3 must divide model.num_attention_heads"),
        (["model.num_query_groups=3"], "num_query_groups=3 must divide"),
        (["parallel.pipeline_parallel=4", "model.num_layers=2"], "pipeline_parallel=4 must divide"),
        (["algorithm.loss_agg=sum"], "expected one of token-mean"),
        (["rollout.temperature=0"], "temperature must be > 0"),
        (["rollout.dtype=fp8"], r"rollout\.dtype='fp8': expected one of float32"),
        (["algorithm.tis_clip=-1"], r"algorithm\.tis_clip=-1\.0 must be >= 0"),
    ],
)
def test_impossible_settings_fail_early(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_world_size_must_divide():
    cfg = Config()
    cfg.parallel.tensor_parallel = 2
    with pytest.raises(ConfigError, match="world size 3 is not divisible"):
        validate(cfg, world_size=3)


def test_parse_override_rejects_malformed():
    with pytest.raises(ConfigError, match="expected section.key=value"):
        parse_override("steps=3")


def test_float_fields_accept_exponent_notation_and_reject_junk():
    assert load_config(None, ["train.lr=1e-3"]).train.lr == 1e-3
    with pytest.raises(ConfigError, match=r"train\.lr: expected float"):
        load_config(None, ["train.lr=fast"])


def test_expert_parallel_must_divide_dp_and_experts():
    cfg = Config()
    cfg.parallel.expert_parallel = 2
    with pytest.raises(ConfigError, match="must divide model.num_experts=0"):
        validate(cfg)
    cfg.model.num_experts = 4
    validate(cfg, world_size=2)
    cfg.data.prompts_per_step = 3
    with pytest.raises(ConfigError, match="expert_parallel=2 must divide the data-parallel size 3"):
        validate(cfg, world_size=3)


def test_prompts_per_step_must_split_over_data_parallel_ranks():
    cfg = Config()
    cfg.data.prompts_per_step = 6
    validate(cfg, world_size=2)
    with pytest.raises(ConfigError, match="prompts_per_step=6 must be divisible by the data-parallel size 4"):
        validate(cfg, world_size=4)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["model.num_experts=4", "parallel.tensor_parallel=2"],
            "num_experts=4 with parallel.tensor_parallel=2 needs parallel.sequence_parallel=true",
        ),
        (
            ["model.num_experts=4", "model.moe_router_topk=5"],
            r"moe_router_topk=5 must be in \[1, model.num_experts=4\]",
        ),
        (
            ["model.num_experts=6", "model.moe_router_num_groups=4", "model.moe_router_group_topk=1"],
            "moe_router_num_groups=4 must divide model.num_experts=6",
        ),
        (
            ["model.num_experts=8", "model.moe_router_num_groups=2", "model.moe_router_group_topk=3"],
            r"moe_router_group_topk=3 must be in \[1, model.moe_router_num_groups=2\]",
        ),
        (
            [
                "model.num_experts=8",
                "model.moe_router_topk=6",
                "model.moe_router_num_groups=4",
                "model.moe_router_group_topk=2",
            ],
            "moe_router_topk=6 exceeds the experts of model.moe_router_group_topk=2 groups of 2",
        ),
        (
            ["model.num_experts=8", "model.moe_router_num_groups=2"],
            "moe_router_num_groups and model.moe_router_group_topk go together",
        ),
        (
            ["model.num_experts=4", "model.moe_router_enable_expert_bias=true"],
            "needs model.moe_router_score_function=sigmoid",
        ),
        (
            ["model.num_experts=4", "model.moe_first_k_dense=2"],
            r"moe_first_k_dense=2 must be in \[0, model.num_layers=2\)",
        ),
        (
            ["model.multi_latent_attention=true"],
            "multi_latent_attention=true needs model.num_query_groups=2 == model.num_attention_heads=4",
        ),
        (
            ["model.multi_latent_attention=true", "model.num_query_groups=4", "model.kv_channels=16"],
            "kv_channels is not used with model.multi_latent_attention=true",
        ),
        (
            ["model.multi_latent_attention=true", "model.num_query_groups=4", "model.qk_pos_emb_head_dim=7"],
            "qk_pos_emb_head_dim=7 must be even",
        ),
        (["parallel.context_parallel=0"], "parallel.context_parallel must be >= 1"),
    ],
)
def test_model_and_parallel_fields_that_cannot_go_together(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_moe_and_mla_combinations_that_go_together():
    """The DeepSeek-V3 shape in miniature: MLA (hidden size need not split over the heads), 8 experts in 2
    groups, top-2 of 1 group, expert bias, TP = 2 with sequence parallelism."""
    overrides = [
        "model.preset=deepseek_v3",
        "model.multi_latent_attention=true",
        "model.num_query_groups=4",
        "model.hidden_size=60",
        "model.num_experts=8",
        "model.moe_router_num_groups=2",
        "model.moe_router_group_topk=1",
        "model.moe_router_score_function=sigmoid",
        "model.moe_router_enable_expert_bias=true",
        "model.moe_first_k_dense=1",
        "parallel.tensor_parallel=2",
        "parallel.sequence_parallel=true",
    ]
    load_config(None, overrides)


def test_world_size_counts_context_parallel():
    cfg = Config()
    cfg.parallel.context_parallel = 2
    cfg.parallel.tensor_parallel = 2
    with pytest.raises(
        ConfigError, match="tensor_parallel × pipeline_parallel × context_parallel = 2 × 1 × 2"
    ):
        validate(cfg, world_size=6)
    validate(cfg, world_size=8)  # DP = 2


def test_context_parallel_is_refused_only_on_cuda_without_transformer_engine(monkeypatch):
    """CPU (gloo) runs CP through the attention patch of parallel/cpu.py; on CUDA only Transformer Engine's
    attention takes the CP group, so without transformer_engine the run stops before any work."""
    import builtins

    from megatron_r1.config import ParallelConfig
    from megatron_r1.parallel import check_context_parallel

    check_context_parallel(ParallelConfig(context_parallel=2), use_cuda=False)
    check_context_parallel(ParallelConfig(), use_cuda=True)
    real_import = builtins.__import__

    def no_te(name, *args, **kwargs):
        if name.startswith("transformer_engine"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_te)
    with pytest.raises(ConfigError, match="context_parallel=2 on CUDA needs Transformer Engine's attention"):
        check_context_parallel(ParallelConfig(context_parallel=2), use_cuda=True)


def test_world_size_is_checked_against_the_layout_and_the_launcher():
    cfg = load_config(
        None, ["parallel.world_size=4", "parallel.tensor_parallel=2", "data.prompts_per_step=2"]
    )
    validate(cfg, world_size=4)
    with pytest.raises(ConfigError, match=r"parallel.world_size=4 but the launcher started 2 processes"):
        validate(cfg, world_size=2)
    with pytest.raises(
        ConfigError, match=r"world size 6 is not divisible by tensor_parallel × pipeline_parallel"
    ):
        load_config(None, ["parallel.world_size=6", "parallel.tensor_parallel=4", "model.num_query_groups=4"])
    with pytest.raises(ConfigError, match=r"expert_parallel=2 must divide the data-parallel size 1"):
        load_config(
            None, ["parallel.world_size=2", "parallel.tensor_parallel=2", "parallel.expert_parallel=2"]
        )
    with pytest.raises(ConfigError, match=r"rollout.tensor_parallel=4 must divide the world size 2"):
        load_config(None, ["parallel.world_size=2", "rollout.tensor_parallel=4"])
    # The prompts' split over DP is a property of the launched run, checked at start.
    with pytest.raises(
        ConfigError, match=r"prompts_per_step=2 must be divisible by the data-parallel size 4"
    ):
        validate(load_config(None, ["data.prompts_per_step=2"]), world_size=4)


def test_fp8_and_recompute_choices():
    assert load_config(None, ["model.fp8=hybrid", "model.fp8_recipe=blockwise"]).model.fp8 == "hybrid"
    with pytest.raises(ConfigError, match=r"model.fp8='e5m2': expected one of off, hybrid, e4m3"):
        load_config(None, ["model.fp8=e5m2"])
    with pytest.raises(ConfigError, match=r"train.recompute='selective': expected one of none, full"):
        load_config(None, ["train.recompute=selective"])
