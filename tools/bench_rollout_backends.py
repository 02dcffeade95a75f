"""Tokens/s of the in-process rollout backends and transformers' ``generate`` on one model, in one run.

    python tools/bench_rollout_backends.py [--shape smollm2|deepseek_v3_tiny] [--prompts 4] [--n 8]
        [--new-tokens 64] [--repeats 2] [--threads N]

A random model of the chosen shape (SmolLM2-135M's dense Llama shape, fp32, or a small DeepSeek-V3 MoE/MLA
shape), identical weights in every contestant, ``prompts × n`` rows sampled at temperature 1 for exactly
``new_tokens`` tokens (no stop token). Prints the best of ``repeats`` for each and the ratios. This is the
measurement behind the per-family backend choice in ``megatron_r1/rollout/backends.py``.
"""

from __future__ import annotations

import argparse
import time

import torch

from megatron_r1.rollout.engine import SamplingParams
from megatron_r1.rollout.hf_model import HFModelEngine

SHAPES = {
    "smollm2": dict(
        model_type="llama",
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
    ),
    "deepseek_v3_tiny": dict(
        model_type="deepseek_v3",
        vocab_size=4096,
        hidden_size=256,
        intermediate_size=512,
        moe_intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=8,
        n_routed_experts=8,
        num_experts_per_tok=2,
        n_group=2,
        topk_group=1,
        n_shared_experts=1,
        first_k_dense_replace=1,
        q_lora_rank=64,
        kv_lora_rank=32,
        qk_nope_head_dim=32,
        qk_rope_head_dim=16,
        v_head_dim=32,
        max_position_embeddings=512,
    ),
}


class _Tok:
    def decode(self, ids: list[int]) -> str:
        return ""


def _time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", choices=sorted(SHAPES), default="smollm2")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import transformers

    torch.manual_seed(0)
    hf_config = dict(SHAPES[args.shape], bos_token_id=None, eos_token_id=None, pad_token_id=None)
    reference = transformers.AutoModelForCausalLM.from_config(
        transformers.AutoConfig.for_model(**hf_config), attn_implementation="sdpa"
    ).eval()
    hf_engine = HFModelEngine(hf_config, _Tok(), max_batch_size=256)
    weights = list(_checkpoint_tensors(reference))
    hf_engine.update_weights(weights)
    contestants = {"hf_model backend": hf_engine}
    if args.shape == "smollm2":
        from megatron_r1.rollout.native import NativeEngine

        native = NativeEngine(hf_config, _Tok(), max_batch_size=256)
        native.update_weights(weights)
        contestants = {"native backend": native, **contestants}

    g = torch.Generator().manual_seed(1)
    vocab = hf_config["vocab_size"]
    prompts = [torch.randint(0, vocab, (args.prompt_len,), generator=g).tolist() for _ in range(args.prompts)]
    sampling = SamplingParams(n=args.n, temperature=1.0, max_new_tokens=args.new_tokens, seed=0)
    rows = args.prompts * args.n
    tokens = rows * args.new_tokens
    seconds = {
        name: _time(lambda e=e: e.generate(prompts, sampling), args.repeats)
        for name, e in contestants.items()
    }

    ids = torch.tensor(prompts).repeat_interleave(args.n, dim=0)

    def hf_generate() -> None:
        with torch.inference_mode():
            out = reference.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=True,
                max_new_tokens=args.new_tokens,
                min_new_tokens=args.new_tokens,
                top_k=0,
            )
        assert out.shape[1] == args.prompt_len + args.new_tokens

    seconds["transformers generate"] = _time(hf_generate, args.repeats)
    print(f"{args.shape}: {rows} rows x {args.new_tokens} tokens, fp32, {torch.get_num_threads()} threads")
    for name, s in seconds.items():
        print(f"  {name:22s} {tokens / s:8.1f} tokens/s  ({s:.2f} s)")
    base = seconds["transformers generate"]
    for name, s in seconds.items():
        if name != "transformers generate":
            print(f"  {name} / transformers generate: {base / s:.2f}x")


def _checkpoint_tensors(model):
    """The reference model's weights under checkpoint names (per-expert)."""
    from megatron_r1.rollout.hf_model import checkpoint_views

    return ((name, t.clone()) for name, t in checkpoint_views(model).items())


if __name__ == "__main__":
    main()
