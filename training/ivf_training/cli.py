"""``ivf-train``: start, resume and export training runs.

::

    ivf-train run CONFIG.yaml [key=value ...] [--stop-at-step N]
    ivf-train resume RUN_DIR [--checkpoint last|prev] [--stop-at-step N]
    ivf-train export RUN_DIR --out FILE.safetensors [--checkpoint best|last|prev]

User errors (bad configuration, missing data, broken checkpoints) print one line and exit
with status 2; an interrupted run (Ctrl-C) exits with 130 and says how to continue.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (built on demand: nothing runs at import)."""
    parser = argparse.ArgumentParser(prog="ivf-train", description="Train ivf_perception fusion+segmentation models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="start a new run from a YAML recipe",
                         description="Start a new run. Overrides use dotted keys, e.g. optim.lr_peak=1e-3 "
                                     "data.generated.train_count=500 name=my_run.")
    run.add_argument("config", type=Path, help="recipe YAML (e.g. training/recipes/s4fusion_generated.yaml)")
    run.add_argument("overrides", nargs="*", metavar="key=value", help="dotted configuration overrides")
    run.add_argument("--stop-at-step", type=int, default=None, metavar="N",
                     help="checkpoint and stop after step N (continue later with `resume`)")

    resume = sub.add_parser("resume", help="continue a run from its checkpoint")
    resume.add_argument("run_dir", type=Path)
    resume.add_argument("--checkpoint", default="last", choices=("last", "prev"),
                        help="which checkpoint to continue from (prev: the one before last)")
    resume.add_argument("--stop-at-step", type=int, default=None, metavar="N",
                        help="checkpoint and stop after step N")

    export = sub.add_parser("export", help="write engine weights (.safetensors + .json sidecar)")
    export.add_argument("run_dir", type=Path, help="run directory, or a model file in its ckpt/ folder")
    export.add_argument("--out", type=Path, required=True, help="destination .safetensors file")
    export.add_argument("--checkpoint", default=None, choices=("best", "last", "prev"),
                        help="default: best if validated, else last")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``ivf-train``; returns the process exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # Imported here so `ivf-train --help` stays fast and import errors surface as messages.
    from ivf_perception.engine.weights import WeightsError
    from ivf_perception.io.errors import IVFIOError
    from ivf_perception.models.registry import UnknownModelError

    from ivf_training.checkpoint import CheckpointError
    from ivf_training.config import ConfigError, load_config
    from ivf_training.losses import PerceptionWeightsError
    from ivf_training.trainer import export_engine_weights, resume_run, start_run

    user_errors = (ConfigError, CheckpointError, WeightsError, PerceptionWeightsError, IVFIOError,
                   UnknownModelError, FileNotFoundError)
    trainer = None
    try:
        if args.command == "export":
            out = export_engine_weights(args.run_dir, args.out, checkpoint=args.checkpoint)
            print(f"wrote {out} and {out.with_suffix('.json').name}")
            return 0
        if args.command == "run":
            trainer = start_run(load_config(args.config, args.overrides), config_stem=args.config.stem)
            print(f"run directory: {trainer.run_dir}")
        else:
            trainer = resume_run(args.run_dir, args.checkpoint)
            print(f"resuming {trainer.run_dir} at step {trainer.step}")
        result = trainer.fit(stop_at_step=args.stop_at_step)
    except user_errors as exc:
        print(f"ivf-train: error: {exc}", file=sys.stderr)
        return 2
    except FloatingPointError as exc:  # divergence: actionable, but not a usage error
        print(f"ivf-train: training diverged: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if trainer is not None:
            print(f"\nivf-train: interrupted at step {trainer.step}; last checkpoint at step "
                  f"{trainer.last_ckpt_step}. Continue with: ivf-train resume {trainer.run_dir}", file=sys.stderr)
        return 130
    best = result["best_value"]
    best_text = f"best {result['best_metric']} {best:.4f} at step {result['best_step']}" if best is not None else "no validation"
    print(f"finished at step {result['step']}: {best_text}; export with: ivf-train export {trainer.run_dir} --out FILE.safetensors")
    return 0


if __name__ == "__main__":  # python -m ivf_training.cli
    sys.exit(main())
