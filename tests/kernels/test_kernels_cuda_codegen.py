"""The kernels go through Triton's real compiler (PTX and a cubin for sm_90) with no GPU.

The interpreter runs kernel bodies as numpy and accepts things the compiler rejects (loop-carried
type changes, names scoped under constexpr branches); this catches those on CPU-only machines.
Triton's compiler is unusable in a process that imported Triton with TRITON_INTERPRET=1 (as this
suite does), so the compilation runs in a fresh process: this file executed as a script.
"""

import os
import subprocess
import sys

import pytest
import torch

from megatron_r1.kernels import triton_available

STATS_SIG = {
    "logits_ptr": "*bf16",
    "labels_ptr": "*i64",
    "max_ptr": "*fp32",
    "sumexp_ptr": "*fp32",
    "sumexpz_ptr": "*fp32",
    "target_ptr": "*fp32",
    "stride_row": "i64",
    "vocab_shard": "i32",
    "vocab_start": "i32",
    "inv_temp": "fp32",
    "WITH_ENTROPY": "constexpr",
    "BLOCK_V": "constexpr",
}
GRAD_SIG = {
    "logits_ptr": "*fp16",
    "labels_ptr": "*i64",
    "lse_ptr": "*fp32",
    "mean_z_ptr": "*fp32",
    "grad_logp_ptr": "*fp32",
    "grad_entropy_ptr": "*fp32",
    "grad_ptr": "*fp16",
    "stride_row": "i64",
    "grad_stride_row": "i64",
    "vocab_shard": "i32",
    "vocab_start": "i32",
    "inv_temp": "fp32",
    "HAS_ENTROPY_GRAD": "constexpr",
    "BLOCK_V": "constexpr",
}
GRPO_SIG = {
    "logp_ptr": "*bf16",
    "old_logp_ptr": "*fp32",
    "adv_ptr": "*fp32",
    "mask_ptr": "*u8",
    "ref_logp_ptr": "*fp32",
    "pg_weight_ptr": "*fp32",
    "loss_ptr": "*fp32",
    "dloss_ptr": "*fp32",
    "partial_ptr": "*fp32",
    "n_tokens": "i32",
    "seq_len": "i32",
    "clip_low": "fp32",
    "clip_high": "fp32",
    "beta": "fp32",
    "ADV_PER_TOKEN": "constexpr",
    "HAS_REF": "constexpr",
    "HAS_WEIGHT": "constexpr",
    "BLOCK": "constexpr",
}
KERNELS = [
    ("_logprob_stats", STATS_SIG, ("BLOCK_V", 4096)),
    ("_logprob_grad", GRAD_SIG, ("BLOCK_V", 4096)),
    ("_grpo_loss", GRPO_SIG, ("BLOCK", 1024)),
]


def compile_all() -> None:
    """Compile every kernel with its optional branches on, for an H100 (sm_90)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    from megatron_r1.kernels import _triton_kernels

    for name, signature, (block_name, block) in KERNELS:
        names = list(signature)
        flags = [n for n in names if signature[n] == "constexpr" and n != block_name]
        for flag in (True,):  # the superset: every constexpr branch taken
            constexprs = {(names.index(n),): flag for n in flags}
            constexprs[(names.index(block_name),)] = block
            fn = JITFunction(getattr(_triton_kernels, name))
            # A kernel that gained or lost an argument must have its signature here updated to match.
            assert list(signature) == fn.arg_names, (name, fn.arg_names)
            source = ASTSource(fn, signature, constexprs)
            compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32))
            assert compiled.asm["ptx"] and compiled.asm["cubin"], (name, flag)


@pytest.mark.skipif(not triton_available(), reason="triton is not installed")
@pytest.mark.skipif(torch.cuda.is_available(), reason="GPU machines compile in the gpu tests")
def test_kernels_compile_for_sm90(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # compile for real, not from a cache
    done = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=300)
    if done.returncode == 3:
        pytest.skip(f"this Triton cannot compile for CUDA without a GPU: {done.stderr[-500:]}")
    assert done.returncode == 0, done.stderr[-4000:]


if __name__ == "__main__":
    try:
        import triton  # noqa: F401
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.compiler import ASTSource  # noqa: F401
    except ImportError as exc:
        print(exc, file=sys.stderr)
        sys.exit(3)
    compile_all()
