"""Weight sync (trainer → rollout engine): the HF-named tensors streamed out of a Megatron model equal the HF
checkpoint it was loaded from, for every family — MoE experts and the router's expert bias included."""

import pytest
import torch

from megatron_r1.config import ParallelConfig
from megatron_r1.convert import get_adapter
from megatron_r1.convert.checkpoint import iter_hf_tensors, load_hf_weights
from megatron_r1.models import build_model
from megatron_r1.models.hf import model_config_from_hf
from megatron_r1.rollout.reshard import hf_weight_buckets


@pytest.mark.parametrize("case", ["llama", "qwen2-tied", "qwen3", "qwen3_moe", "deepseek_v3"])
def test_synced_weights_equal_the_hf_checkpoint(case, hf_models, world):
    hf_dir = hf_models[case]
    cfg = model_config_from_hf(hf_dir)
    model = build_model(cfg, ParallelConfig())
    load_hf_weights(model, hf_dir, cfg)
    adapter = get_adapter(cfg.preset)
    buckets = list(hf_weight_buckets(model, world, lambda n, t: adapter.to_hf(n, t, cfg), 4096))
    assert len(buckets) > 1  # small buckets: the stream is split
    synced = {name: t for bucket in buckets for name, t in bucket}
    original = dict(iter_hf_tensors(hf_dir))
    if cfg.tie_word_embeddings:
        original.pop("lm_head.weight", None)
    assert set(synced) == set(original)
    for name, tensor in original.items():
        torch.testing.assert_close(synced[name].to(tensor.dtype), tensor, rtol=0, atol=0, msg=name)
