"""``magiceraser train``: prompt-tune v* and LoRA on SD 1.5 Inpainting (docs/method.md part 2).

    magiceraser train --config configs/train/sd15_inpaint.yaml 'data.urls=[s3://bucket/olrd-{000000..000999}.tar]'
    magiceraser train --config configs/train/demo.yaml --resume          # continue from the newest checkpoint
    accelerate launch --config_file cluster/accelerate/single_node_8gpu.yaml -m magiceraser train --config ...
    magiceraser train --config ... --ray ray.num_workers=16 ray.use_gpu=true   # Ray Train TorchTrainer

One process trains as rank 0 of 1; under ``accelerate launch``/torchrun each process joins the
group from the environment; with ``--ray`` this process becomes the driver of a Ray Train run
whose workers execute the same loop.

Exit status: 0 when the run finished and exported; 2 for a user error (one line); 75
(``preemption.PREEMPTED_EXIT_CODE``) when a preemption signal made the run save a checkpoint and
leave: restart the same command and it continues (a launcher's restart does so by itself); 130
after Ctrl-C, which saves a checkpoint too (a second Ctrl-C leaves at once, keeping the newest
checkpoint there is). Either way one line says what was kept and the command that continues.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence

from magiceraser.cli_args import config_argparser, load_cli_config
from magiceraser.training.logs import setup_logging


def main(argv: Sequence[str] | None = None) -> int:
    from magiceraser.training.config import TrainConfig

    parser = config_argparser("train", __doc__.split("\n\n")[0])
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in out_dir/checkpoints")
    parser.add_argument("--overwrite", action="store_true", help="replace the run that out_dir holds (its checkpoints and export)")
    parser.add_argument("--allow-change", action="append", default=[], metavar="KEYS",
                        help="with --resume: settings (comma-separated dotted keys) that may differ from the checkpoint's")
    parser.add_argument("--ray", action="store_true", help="run under Ray Train's TorchTrainer (see the ray.* keys)")
    parser.epilog = ("exit status: 0 trained and exported; 2 a user error (one line); 75 a preemption signal "
                     "(preemption.signals) made it save a checkpoint and stop: restart the same command, or add --resume; "
                     "130 Ctrl-C: it saved a checkpoint (a second Ctrl-C: the newest one there is), continue with --resume")
    args = parser.parse_args(argv)
    if args.resume:
        args.overrides.append("resume=true")
    if args.overwrite:
        args.overrides.append("overwrite=true")
    allowed = [k.strip() for group in args.allow_change for k in group.split(",") if k.strip()]
    if allowed:
        args.overrides.append(f"resume_allow_changes=[{','.join(allowed)}]")
    if args.ray:
        args.overrides.append("ray.enabled=true")
    cfg = load_cli_config(TrainConfig, args)
    from magiceraser.errors import INTERRUPTED_EXIT_CODE
    from magiceraser.training.preemption import Preempted

    if cfg.ray.enabled:
        from magiceraser.training.ray_launch import run_on_ray

        setup_logging(0)
        try:
            run_on_ray(cfg)
        except Preempted as exc:
            _leaving()
            print(_preempted_line(exc, argv), file=sys.stderr, flush=True)
            return exc.exit_code
        except KeyboardInterrupt:
            print(_interrupted_line(cfg, argv), file=sys.stderr, flush=True)
            return INTERRUPTED_EXIT_CODE
        return 0
    from magiceraser.training.distributed import init_distributed, shutdown_distributed
    from magiceraser.training.loop import run_training

    ctx = init_distributed(cfg.device)
    setup_logging(ctx.rank)
    print(f"training process {ctx.rank} of {ctx.world_size} on {ctx.device} (pid {os.getpid()})", flush=True)
    try:
        result = run_training(cfg, ctx)
    except Preempted as exc:
        _leaving()
        if ctx.is_main:
            print(_preempted_line(exc, argv), file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:  # a second Ctrl-C, or one before the first step
        if ctx.is_main:
            print(_interrupted_line(cfg, argv), file=sys.stderr, flush=True)
        return INTERRUPTED_EXIT_CODE
    finally:
        shutdown_distributed()
    if ctx.is_main:
        print(f"trained {result.steps} steps on {result.world_size} process(es); exported to {result.out_dir}")
    return 0


def _leaving() -> None:
    """The run has saved and released its folders: a further Ctrl-C or SIGTERM cannot stop it sooner, and
    must not turn the closing line into a traceback."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)


def _resume_command(argv: Sequence[str] | None) -> str:
    """The command line that continues this run: the same one, with --resume and without --overwrite."""
    args = [a for a in (sys.argv[1:] if argv is None else argv) if a not in ("--overwrite", "overwrite=true")]
    if "--resume" not in args:
        args.append("--resume")
    return "magiceraser train " + " ".join(shlex.quote(a) for a in args)


def _preempted_line(exc, argv: Sequence[str] | None) -> str:
    """What a person reads after a preemption or Ctrl-C: what was kept and how to go on."""
    if exc.interrupted:
        return (f"magiceraser train: interrupted ({exc.signal_name}) after step {exc.step}; checkpoint {exc.checkpoint} "
                f"saved; to continue: {_resume_command(argv)}")
    return (f"magiceraser train: preempted ({exc.signal_name}) after step {exc.step}; checkpoint {exc.checkpoint} "
            f"saved; exit status 75 asks the launcher to restart it; to continue by hand: {_resume_command(argv)}")


def _interrupted_line(cfg, argv: Sequence[str] | None) -> str:
    """After a second Ctrl-C (or one before the first step): the newest checkpoint that exists."""
    from magiceraser.training.startup import checkpoint_store

    try:
        refs = checkpoint_store(cfg).list()
    except OSError:
        refs = []
    kept = f"the newest checkpoint, {refs[-1].url} (step {refs[-1].step}), is kept" if refs else "no checkpoint was saved yet"
    return f"magiceraser train: interrupted; {kept}; to continue: {_resume_command(argv)}"


if __name__ == "__main__":
    # `python -m magiceraser.training.train` is what torchrun and accelerate start on every process:
    # through the command line's dispatcher, so a user error is one line and exit 2 here too.
    from magiceraser.cli import main as cli_main

    raise SystemExit(cli_main(["train", *sys.argv[1:]]))
