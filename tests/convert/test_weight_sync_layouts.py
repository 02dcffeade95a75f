"""Weight sync from sharded trainer layouts (TP = 2, PP = 2, EP = 2 on 2 gloo processes): what every rank
hands its rollout engine — whatever the rollout layout, each vLLM rank receives full HF-named tensors and
slices them itself — reassembles to exactly the HF checkpoint, in buckets no larger than the bucket size
(a bucket exceeds it only when it holds a single larger tensor)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "training"))
from dist_utils import run_workers  # noqa: E402

BUCKET_BYTES = 8192


def _sync_worker(rank: int, hf_dir: str, tp: int, pp: int, ep: int):
    from megatron_r1.config import ParallelConfig
    from megatron_r1.convert import get_adapter
    from megatron_r1.convert.checkpoint import iter_hf_tensors, load_hf_weights
    from megatron_r1.models import build_model
    from megatron_r1.models.hf import model_config_from_hf
    from megatron_r1.parallel import init_distributed
    from megatron_r1.rollout.reshard import hf_weight_buckets

    parallel = ParallelConfig(tensor_parallel=tp, pipeline_parallel=pp, expert_parallel=ep)
    state = init_distributed(parallel)
    cfg = model_config_from_hf(hf_dir)
    model = build_model(cfg, parallel, state.is_first_stage, state.is_last_stage)
    load_hf_weights(model, hf_dir, cfg)
    adapter = get_adapter(cfg.preset)
    synced, oversized, peak = {}, [], 0
    for bucket in hf_weight_buckets(model, state, lambda n, t: adapter.to_hf(n, t, cfg), BUCKET_BYTES):
        size = sum(t.numel() * t.element_size() for _, t in bucket)
        peak = max(peak, size)
        if size > BUCKET_BYTES and len(bucket) > 1:
            oversized.append([name for name, _ in bucket])
        for name, tensor in bucket:
            assert name not in synced, f"{name} sent twice"
            synced[name] = tensor.clone()
    original = dict(iter_hf_tensors(hf_dir))
    if cfg.tie_word_embeddings:
        original.pop("lm_head.weight", None)
    mismatched = sorted(set(original) ^ set(synced))
    mismatched += [
        n for n, t in original.items() if n in synced and not torch.equal(synced[n].to(t.dtype), t)
    ]
    largest = max(t.numel() * t.element_size() for t in original.values())
    return {"mismatched": mismatched, "oversized": oversized, "peak": peak, "largest": largest}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("case", "tp", "pp", "ep"),
    [("llama", 2, 1, 1), ("qwen2-tied", 1, 2, 1), ("qwen3_moe", 1, 1, 2)],
    ids=["tp2", "pp2", "ep2"],
)
def test_every_rank_receives_the_hf_checkpoint_in_bounded_buckets(hf_models, tmp_path, case, tp, pp, ep):
    results = run_workers(_sync_worker, 2, tmp_path, str(hf_models[case]), tp, pp, ep, timeout=600)
    for rank, r in enumerate(results):
        assert r["mismatched"] == [], (rank, r["mismatched"])
        assert r["oversized"] == [], (rank, r["oversized"])
        assert r["peak"] <= max(BUCKET_BYTES, r["largest"]), (rank, r)
