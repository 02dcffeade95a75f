"""Benchmark the fused token log-prob kernel against the torch reference (eager and compiled) and Liger.

For tokens x vocab shapes of bf16 logits, times forward and forward+backward of
``token_logprobs`` (Triton kernel, eager reference, ``torch.compile`` of the reference, and
Liger's fused cross-entropy where ``liger_kernel`` is installed), reports peak extra memory,
achieved bandwidth against the device's measured copy bandwidth and the largest |error| of the
log-probs against a float64 reference, and prints a Markdown table. Also times the fused GRPO
loss against its reference.

    python tools/bench_kernels.py                 # CUDA: tokens {4k,16k,64k} x vocab {32k,152k}
    python tools/bench_kernels.py --quick         # CUDA: 2 shapes, fewer repeats (< ~1 min)
    python tools/bench_kernels.py --cpu-small     # CPU, small shapes, Triton interpreter

``torch.compile`` is rebuilt for every shape after ``torch._dynamo.reset()``: compiled once for
all shapes, the 12 (shape, pass) variants exceeded Dynamo's recompile limit and the largest
shapes silently ran eager. Liger's peer is ``LigerCrossEntropyLoss``'s function
(``liger_cross_entropy``, reduction "none", log-probs = -loss): per-token values from given
logits, like ``token_logprobs`` (``LigerFusedLinearCrossEntropy`` also does the output
projection, so it is not comparable). It has no entropy and no temperature; it writes the
gradient into the logits during the forward, so it runs last on each (shape, pass) and the
logits are redrawn before the next.

CPU figures (interpreter for the kernel) say nothing about GPU performance and are labelled so.
Bytes counted are the unavoidable ones: the forward reads the logits once; forward+backward
reads them twice and writes the gradient once.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from collections.abc import Callable

GPU_TOKENS = [4096, 16384, 65536]
GPU_VOCABS = [32000, 151936]
QUICK_SHAPES = [(4096, 32000), (16384, 151936)]
CPU_TOKENS = [16, 64]
CPU_VOCABS = [4096, 32000]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-small", action="store_true", help="run on CPU with small shapes")
    parser.add_argument("--tokens", type=int, nargs="+", help="override the token counts")
    parser.add_argument("--vocab", type=int, nargs="+", help="override the vocabulary sizes")
    parser.add_argument("--repeats", type=int, default=None, help="timed repetitions")
    parser.add_argument("--entropy", action="store_true", help="also compute the entropy")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--quick", action="store_true", help="CUDA: 2 shapes and 5 repeats")
    return parser.parse_args()


args = parse_args()
if args.cpu_small:
    # Must precede the first kernel launch; the kernel runs on CPU only through the interpreter.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

from megatron_r1.kernels import (  # noqa: E402
    grpo_loss,
    grpo_loss_reference,
    token_logprobs,
    token_logprobs_reference,
    triton_available,
)


class Device:
    """Timing and memory accounting on CUDA (events, allocator stats) or CPU (wall clock)."""

    def __init__(self, name: str):
        self.name = name
        self.cuda = name == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def time(self, fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
        """Median seconds per call."""
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            self.sync()
            start = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - start)
        return sorted(times)[len(times) // 2]

    def peak_extra_bytes(self, fn: Callable[[], object]) -> int | None:
        """Peak allocation above what was allocated before ``fn`` (CUDA only)."""
        if not self.cuda:
            return None
        self.sync()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        self.sync()
        return torch.cuda.max_memory_allocated() - base

    def copy_bandwidth(self) -> float:
        """Bytes/s of a large device-to-device copy (read + write counted)."""
        numel = (1 << 28) if self.cuda else (1 << 25)  # 1 GiB / 128 MiB of fp32
        src = torch.empty(numel, device=self.name)
        dst = torch.empty_like(src)
        seconds = self.time(lambda: dst.copy_(src), repeats=10 if self.cuda else 3)
        return 2 * src.numel() * src.element_size() / seconds


def _liger_cross_entropy() -> Callable | None:
    try:
        from liger_kernel.transformers.functional import liger_cross_entropy
    except ImportError:
        return None
    return liger_cross_entropy


def logprob_cases(entropy: bool, compile_ref: bool) -> dict[str, Callable]:
    """The implementations for one shape; ``torch.compile`` is fresh (Dynamo reset) every call."""

    def kernel(x, y):
        return token_logprobs(x, y, return_entropy=entropy, impl="triton")

    def reference(x, y):
        return token_logprobs_reference(x, y, return_entropy=entropy)

    cases = {"triton kernel": kernel, "torch eager": reference}
    if compile_ref:
        torch._dynamo.reset()
        cases["torch.compile(ref)"] = torch.compile(reference, dynamic=False)
    liger = _liger_cross_entropy()
    if liger is not None and not entropy:
        cases["liger CE (none)"] = lambda x, y: -liger(x, y, reduction="none")
    return cases


def max_error(fn: Callable, logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Largest |log-prob - float64 reference| over all tokens (forward only, on a copy of the logits)."""
    out = fn(logits.clone(), labels)
    out = out[0] if isinstance(out, tuple) else out
    worst = 0.0
    for start in range(0, logits.shape[0], 1024):  # float64 in row chunks: bounded memory
        rows = slice(start, start + 1024)
        exact = torch.log_softmax(logits[rows].double(), dim=-1).gather(-1, labels[rows, None]).squeeze(-1)
        worst = max(worst, (out[rows].double() - exact).abs().max().item())
    return worst


def run_once(fn: Callable, logits: torch.Tensor, labels: torch.Tensor, backward: bool) -> None:
    x = logits.requires_grad_(backward)
    out = fn(x, labels)
    if backward:
        loss = sum(o.sum() for o in out) if isinstance(out, tuple) else out.sum()
        loss.backward()
        x.grad = None


def fmt_bytes(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def bench_shape(
    dev: Device, opts: argparse.Namespace, shape: tuple[int, int], repeats: int, bandwidth: float
) -> list[str]:
    """Table rows for one (tokens, vocab) shape: fwd and fwd+bwd for every implementation."""
    n_tokens, vocab = shape
    cases = logprob_cases(opts.entropy, not opts.no_compile)
    logits = torch.empty(n_tokens, vocab, device=dev.name, dtype=torch.bfloat16)
    labels = torch.randint(0, vocab, (n_tokens,), device=dev.name)
    rows = []
    for backward in (False, True):
        logits.normal_()  # Liger overwrote them with its gradient on the previous pass
        moved = logits.numel() * logits.element_size() * (3 if backward else 1)
        for impl, fn in cases.items():
            call = functools.partial(run_once, fn, logits, labels, backward)
            try:
                error = "" if backward else f"{max_error(fn, logits, labels):.1e}"
                seconds = dev.time(call, repeats)
                peak = dev.peak_extra_bytes(call)
                rate = moved / seconds
                figures = (
                    f"{seconds * 1e3:.2f} | {fmt_bytes(peak)} | {rate / 1e9:.2f}"
                    f" | {100 * rate / bandwidth:.1f}% | {error}"
                )
            except torch.OutOfMemoryError:
                figures = "OOM | | | |"
            except Exception as exc:  # report it, keep benchmarking the other cases
                figures = f"failed: {type(exc).__name__} | | | |"
            finally:
                logits.grad = None
                if dev.cuda:
                    torch.cuda.empty_cache()
            pass_name = "fwd+bwd" if backward else "fwd"
            rows.append(f"| {n_tokens} | {vocab} | {pass_name} | {impl} | {figures} |")
    return rows


def bench_logprobs(dev: Device, opts: argparse.Namespace, bandwidth: float) -> list[str]:
    if opts.quick and dev.cuda and not (opts.tokens or opts.vocab):
        shapes = QUICK_SHAPES
    else:
        tokens = opts.tokens or (CPU_TOKENS if not dev.cuda else GPU_TOKENS)
        vocabs = opts.vocab or (CPU_VOCABS if not dev.cuda else GPU_VOCABS)
        shapes = [(t, v) for t in tokens for v in vocabs]
    repeats = opts.repeats or (3 if not dev.cuda else 5 if opts.quick else 10)
    rows = [
        "| tokens | vocab | pass | impl | time (ms) | peak extra mem | GB/s | % of copy BW | max abs err |",
        "|---:|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for shape in shapes:
        rows += bench_shape(dev, opts, shape, repeats, bandwidth)
    return rows


def grpo_step(fn: Callable, logprobs: torch.Tensor, *rest: torch.Tensor, **kwargs) -> None:
    x = logprobs.detach().requires_grad_()
    fn(x, *rest, beta=0.04, **kwargs)[0].sum().backward()


def bench_grpo(dev: Device, opts: argparse.Namespace) -> list[str]:
    tokens = opts.tokens or (CPU_TOKENS if not dev.cuda else GPU_TOKENS[:2] if opts.quick else GPU_TOKENS)
    repeats = opts.repeats or (3 if not dev.cuda else 5 if opts.quick else 10)
    rows = ["| tokens | impl | fwd+bwd time (ms) |", "|---:|---|---:|"]
    for n_tokens in tokens:
        batch = 8
        shape = (batch, n_tokens // batch)
        logprobs = torch.randn(shape, device=dev.name) - 1
        old, ref = logprobs + 0.1, logprobs - 0.1
        adv = torch.randn(batch, device=dev.name)
        mask = torch.ones(shape, dtype=torch.bool, device=dev.name)
        for impl, fn in (("triton kernel", grpo_loss), ("torch eager", grpo_loss_reference)):
            kwargs = {"impl": "triton"} if fn is grpo_loss else {}
            call = functools.partial(grpo_step, fn, logprobs, old, adv, mask, ref, **kwargs)
            rows.append(f"| {n_tokens} | {impl} | {dev.time(call, repeats) * 1e3:.3f} |")
    return rows


def main() -> None:
    if args.cpu_small:
        dev = Device("cpu")
    elif torch.cuda.is_available():
        dev = Device("cuda")
    else:
        sys.exit("no CUDA device: run with --cpu-small for a (CPU-labelled) small run")
    if not triton_available():
        sys.exit("triton is not installed")
    torch.manual_seed(0)
    bandwidth = dev.copy_bandwidth()
    if dev.cuda:
        where = f"CUDA: {torch.cuda.get_device_name()}"
    else:
        where = "CPU (kernel under the Triton interpreter: NOT representative of GPU speed)"
    print(f"## token_logprobs, bf16 logits, {where}\n")
    print(f"torch {torch.__version__}; measured copy bandwidth {bandwidth / 1e9:.1f} GB/s; ")
    print(
        f"entropy {'on' if args.entropy else 'off'}; median of repeats; max abs err: fwd log-probs vs float64"
    )
    if _liger_cross_entropy() is None:
        print("liger_kernel is not installed: no Liger row")
    print()
    print("\n".join(bench_logprobs(dev, args, bandwidth)))
    print(f"\n## grpo_loss, fp32 log-probs, beta > 0, {where}\n")
    print("\n".join(bench_grpo(dev, args)))


if __name__ == "__main__":
    main()
