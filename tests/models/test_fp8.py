"""FP8 maps onto Megatron's TransformerConfig fields; refused in one line without Transformer Engine."""

from __future__ import annotations

import pytest

from megatron_r1.config import ConfigError, ModelConfig, ParallelConfig
from megatron_r1.models import get_family
from megatron_r1.models.dense import fp8_kwargs, transformer_engine_importable


@pytest.mark.skipif(transformer_engine_importable(), reason="Transformer Engine is importable here")
@pytest.mark.parametrize("preset", ["qwen2", "qwen3_moe"])
def test_fp8_is_refused_without_transformer_engine(preset):
    cfg = ModelConfig(
        preset=preset, fp8="hybrid", fp8_recipe="blockwise", num_experts=4 if "moe" in preset else 0
    )
    with pytest.raises(ConfigError, match=r"^model.fp8=hybrid needs Transformer Engine") as info:
        get_family(preset).transformer_config(cfg, ParallelConfig())
    assert "\n" not in str(info.value)


def test_fp8_fields_are_megatrons():
    from dataclasses import fields

    from megatron.core.transformer import TransformerConfig

    names = {f.name for f in fields(TransformerConfig)}
    assert {"fp8", "fp8_recipe"} <= names
    assert fp8_kwargs(ModelConfig(), gpu=False) == {}
    if transformer_engine_importable():
        kwargs = fp8_kwargs(ModelConfig(fp8="e4m3", fp8_recipe="tensorwise"), gpu=True)
        tcfg = get_family("llama").transformer_config(
            ModelConfig(fp8="e4m3", fp8_recipe="tensorwise"), ParallelConfig()
        )
        assert (tcfg.fp8, tcfg.fp8_recipe) == (kwargs["fp8"], kwargs["fp8_recipe"]) == ("e4m3", "tensorwise")
