"""``ivf-train``: start, resume, evaluate, export and benchmark training runs.

::

    ivf-train run CONFIG.yaml [key=value ...] [--stop-at-step N]
    ivf-train config CONFIG.yaml [key=value ...]          # the resolved configuration, as YAML
    ivf-train resume RUN_DIR [--checkpoint last|prev] [--stop-at-step N]
    ivf-train eval CHECKPOINT --dataset KIND [--root DIR] [--split S] [--out FILE.json]
    ivf-train export RUN_DIR --out FILE.safetensors [--checkpoint best|last|prev] [--onnx]
                     [--storage-dtype float32|float16]
    ivf-train calibrate WEIGHTS --out FILE.safetensors --dataset KIND [-o KEY=VALUE ...]
    ivf-train bench [--variants ...] [--preset small]
    ivf-train tesg-guidance (--dataset KIND --root DIR | --bag BAG) --out CACHE --blip DIR --diffusion DIR

    torchrun --standalone --nproc-per-node N -m ivf_training.cli run CONFIG.yaml   # data-parallel

User errors (bad configuration, missing data, broken checkpoints) print one line and exit
with status 2; an interrupted run (Ctrl-C) exits with 130 and says how to continue. Under
torchrun only rank 0 prints and logs.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ivf_perception.openmp import prefer_passive_waiting

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

    show = sub.add_parser("config", help="print a recipe's resolved configuration (its base: chain and overrides "
                                         "applied) as YAML, without training")
    show.add_argument("config", type=Path, help="recipe YAML")
    show.add_argument("overrides", nargs="*", metavar="key=value", help="dotted configuration overrides")

    resume = sub.add_parser("resume", help="continue a run from its checkpoint")
    resume.add_argument("run_dir", type=Path)
    resume.add_argument("--checkpoint", default="last", choices=("last", "prev"),
                        help="which checkpoint to continue from (prev: the one before last)")
    resume.add_argument("--stop-at-step", type=int, default=None, metavar="N",
                        help="checkpoint and stop after step N")

    export = sub.add_parser("export", help="write engine weights (.safetensors + .json sidecar) and optionally ONNX")
    export.add_argument("run_dir", type=Path, help="run directory, or a model file in its ckpt/ folder")
    export.add_argument("--out", type=Path, required=True, help="destination .safetensors file")
    export.add_argument("--checkpoint", default=None, choices=("best", "last", "prev"),
                        help="default: best if validated, else last")
    export.add_argument("--onnx", action="store_true",
                        help="also write FILE.onnx, checked against PyTorch with onnxruntime")
    export.add_argument("--storage-dtype", default="float32", choices=("float32", "float16"),
                        help="how the .safetensors file stores floating tensors: float16 halves the file "
                             "(recorded in the sidecar; the loader casts back to the model's dtypes)")
    export.add_argument("--onnx-size", type=_size, default=None, metavar="HxW",
                        help="the ONNX graph's fixed input size (default: the training crop)")

    evaluate = sub.add_parser("eval", help="full-size metrics of a trained model on a dataset",
                              description="mIoU, per-class IoU and all fusion metrics at full size, "
                                          "printed as a table and written as JSON.")
    evaluate.add_argument("checkpoint", type=Path,
                          help="engine weights (.safetensors with sidecar), a run directory or a file in its ckpt/")
    evaluate.add_argument("--dataset", required=True, metavar="KIND",
                          help="mfnet, msrs, pst900, fmb, folder, extract or generated (see training/DATASETS.md)")
    evaluate.add_argument("--root", type=Path, default=None, help="the dataset folder (not for generated)")
    evaluate.add_argument("--split", default=None,
                          help="default: the split training validates on (MFNet val; MSRS, PST900, FMB test)")
    evaluate.add_argument("--checkpoint-tag", default=None, choices=("best", "last", "prev"),
                          help="for a run directory: default best if validated, else last")
    evaluate.add_argument("--out", type=Path, default=None,
                          help="JSON report (default: RUN_DIR/eval/KIND-SPLIT.json, or ./STEM.eval-KIND-SPLIT.json)")
    evaluate.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    evaluate.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    evaluate.add_argument("--short-side", type=int, default=None,
                          help="resize so the shorter side has this many pixels")
    evaluate.add_argument("--max-pairs", type=int, default=None, help="evaluate only the first N samples")
    evaluate.add_argument("--num-workers", type=int, default=0)
    evaluate.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                          help="loader option (YAML value), e.g. thermal=thermal_raw or count=100 (repeatable)")

    calibrate = sub.add_parser(
        "calibrate", help="fit per-class logit offsets for mIoU on a labelled set and fold them into engine weights",
        description="Coordinate ascent of mIoU (classes 1..K-1) over per-class offsets added to the logits, "
                    "folded into the final classifier's bias; the sidecar's lineage records the set and the "
                    "offsets, and its quality report is cleared (rerun scripts/quality_report.py). Calibrate "
                    "on data the quality report does not hold out, e.g. generated scenes of seed 3.")
    calibrate.add_argument("weights", type=Path, help="engine weights (.safetensors with sidecar)")
    calibrate.add_argument("--out", type=Path, required=True, help="destination .safetensors (may be WEIGHTS)")
    calibrate.add_argument("--dataset", required=True, metavar="KIND", help="a labelled dataset kind, as for eval")
    calibrate.add_argument("--root", type=Path, default=None, help="the dataset folder (not for generated)")
    calibrate.add_argument("--split", default=None, help="default: the split training validates on")
    calibrate.add_argument("--max-pairs", type=int, default=None, help="use only the first N samples")
    calibrate.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    calibrate.add_argument("--sweeps", type=int, default=3, help="passes of coordinate ascent over the classes")
    calibrate.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                           help="loader option (YAML value), e.g. 'config={seed: 3}' count=200 (repeatable)")

    bench = sub.add_parser("bench", help="training throughput per variant and the data loader's share")
    bench.add_argument("--variants", nargs="+", default=None, help="default: every registered variant but test_*")
    bench.add_argument("--preset", default="small")
    bench.add_argument("--device", default="auto", help="auto: the CPU, plus CUDA when available")
    bench.add_argument("--batch-size", type=int, default=2)
    bench.add_argument("--crop", type=int, default=128)
    bench.add_argument("--steps", type=int, default=3, help="timed steps per variant")
    bench.add_argument("--warmup", type=int, default=1, help="untimed steps first (allocation, autotuning)")
    bench.add_argument("--num-workers", type=int, default=0)
    bench.add_argument("--out", type=Path, default=None, help="also write the table to this Markdown file")
    guidance = sub.add_parser(
        "tesg-guidance", help="TeSG guidance cache (caption, masks, text tokens) of a dataset or a bag",
        description="Run TeSG's Semantic Information Generator (BLIP caption, keyword removal, DiffEdit masks of "
                    "both images, text-encoder tokens) over every pair and write a guidance cache that training "
                    "(loss.guidance_cache) and replay read. Needs transformers and diffusers "
                    "(pip install 'ivf-perception-training[tesg-sig]') and local BLIP and Stable Diffusion folders.")
    source = guidance.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", metavar="KIND", help="folder, extract, mfnet, msrs, pst900 or fmb (with --root)")
    source.add_argument("--bag", type=Path, help="a rosbag2 folder or file (the node's pairing)")
    guidance.add_argument("--root", type=Path, default=None, help="the dataset folder")
    guidance.add_argument("--split", default=None, help="the dataset split (default: the root itself / all)")
    guidance.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                          help="dataset loader option (YAML value), repeatable")
    guidance.add_argument("--rgb-topic", default=None)
    guidance.add_argument("--thermal-topic", default=None)
    guidance.add_argument("--distro", default="kilted", help="ROS distribution of the bag's message types")
    guidance.add_argument("--out", type=Path, required=True, help="the cache folder (created or continued)")
    guidance.add_argument("--blip", type=Path, required=True, help="local BLIP captioning folder")
    guidance.add_argument("--diffusion", type=Path, required=True,
                          help="local Stable Diffusion folder (diffusers layout: vae, unet, text_encoder, ...)")
    guidance.add_argument("--settings", type=Path, default=None, help="SIG settings YAML (default: DiffEdit's)")
    guidance.add_argument("-s", "--set", action="append", default=[], metavar="KEY=VALUE",
                          help="SIG setting override (YAML value), e.g. num_maps_per_mask=10; repeatable")
    guidance.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    guidance.add_argument("--fp16", action="store_true", help="run the models in half precision (GPU)")
    guidance.add_argument("--max-pairs", type=int, default=None, help="only the first N pairs")
    guidance.add_argument("--overwrite", action="store_true", help="regenerate entries that exist")
    for command in (run, resume, evaluate, calibrate, bench):
        command.add_argument("--threads", type=int, default=0, metavar="N",
                             help="CPU threads of torch and OpenCV in the main process; 0 = auto (default): "
                                  "usable physical cores minus the data-loader workers (at least one left), "
                                  "1..4; each worker uses one thread")
    return parser


def _apply_threads(requested: int, num_workers: int) -> None:
    """Size the main process's thread pools next to ``num_workers`` single-threaded workers."""
    from ivf_perception.engine.threads import apply_threads

    apply_threads(requested, reserve=max(1, num_workers))


def _portable(path: Path) -> str:
    """``path`` relative to the current directory when it lies inside it (``make`` runs from the
    project root), so exported sidecars name ``training/recipes/...`` and not one machine's path."""
    absolute, here = path.resolve(), Path.cwd().resolve()
    return str(absolute.relative_to(here)) if absolute.is_relative_to(here) else str(path)


def _size(text: str) -> tuple[int, int]:
    """``480x640`` → (480, 640)."""
    h, sep, w = text.lower().partition("x")
    if not sep or not h.isdigit() or not w.isdigit() or int(h) < 1 or int(w) < 1:
        raise argparse.ArgumentTypeError(f"expected HxW such as 480x640, got {text!r}")
    return int(h), int(w)


def _options(items: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` loader options; values are YAML (numbers, lists, mappings)."""
    import yaml

    from ivf_training.config import ConfigError

    options = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--option {item!r} is not of the form KEY=VALUE (e.g. thermal=thermal_raw)")
        try:
            options[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"--option {item!r}: the value is not valid YAML ({exc})") from exc
    return options


def _export(args: argparse.Namespace) -> int:
    from ivf_perception.engine.weights import save_weights
    from ivf_perception.export import export_onnx, onnx_metadata
    from ivf_training.export import load_run_weights

    run = load_run_weights(args.run_dir, checkpoint=args.checkpoint)
    if args.onnx:  # refuse a model that cannot be exported before writing anything
        height, width = args.onnx_size or run.info.input_size
        onnx_path = args.out.with_suffix(".onnx")
        meta = onnx_metadata(run.model, None, run.info.classes, run.info.palette)  # weights not written yet
        check = export_onnx(run.model, onnx_path, height=height, width=width, metadata=meta)
        diffs = ", ".join(f"{k} {v:.2g}" for k, v in check.max_abs_diff.items())
        print(f"wrote {onnx_path} ({height}x{width}; onnxruntime vs PyTorch max |diff|: {diffs})")
    run.info.storage_dtype = args.storage_dtype
    out = save_weights(run.model.state_dict(), args.out, run.info)
    print(f"wrote {out} and {out.with_suffix('.json').name} ({args.storage_dtype}, "
          f"{out.stat().st_size / 1e6:.2f} MB)")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from ivf_training.evaluate import default_output_path, evaluate, format_table, write_report

    result = evaluate(args.checkpoint, args.dataset, args.root, args.split, checkpoint=args.checkpoint_tag,
                      device=args.device, precision=args.precision, short_side=args.short_side,
                      max_pairs=args.max_pairs, num_workers=args.num_workers, options=_options(args.option),
                      progress=True)
    report = result.report
    data = report["dataset"]
    split = f" split {data['split']}" if data["split"] else ""
    title = (f"{report['model']['variant']}/{report['model']['preset']} ({report['weights']}) on {data['kind']}"
             f"{split} ({data['images']} images, full size, {report['precision']})")
    print(format_table(result.metrics, title))
    out = write_report(result, args.out or default_output_path(args.checkpoint, args.dataset, data["split"]))
    print(f"wrote {out}")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from ivf_training.calibrate import calibrate_weights

    result = calibrate_weights(args.weights, args.out, args.dataset, args.root, args.split,
                               options=_options(args.option), max_pairs=args.max_pairs, device=args.device,
                               sweeps=args.sweeps, progress=True)
    fit = result.fit
    print(f"offsets {[round(b, 3) for b in fit.biases]} folded into {result.layer}")
    print(f"calibration set mIoU {fit.miou_before:.4f} -> {fit.miou_after:.4f}; per-class IoU "
          + ", ".join(f"{'n/a' if a is None else f'{a:.3f}'}->{'n/a' if b is None else f'{b:.3f}'}"
                      for a, b in zip(fit.iou_before, fit.iou_after)))
    print(f"wrote {result.out} and {result.out.with_suffix('.json').name} (quality cleared: rerun "
          "scripts/quality_report.py on held-out data)")
    return 0


def _tesg_guidance(args: argparse.Namespace) -> int:
    import torch

    from ivf_perception.guidance import GuidanceCache
    from ivf_training.build import resolve_device
    from ivf_training.config import ConfigError
    from ivf_training.sig import SemanticInformationGenerator, load_sig_settings
    from ivf_training.sig.loaders import load_sig_components
    from ivf_training.tesg_guidance import bag_pairs, dataset_pairs, write_guidance

    if args.dataset is not None and args.root is None:
        raise ConfigError("tesg-guidance --dataset needs --root (the dataset folder)")
    settings = load_sig_settings(args.settings, _options(args.set))
    cache = GuidanceCache(args.out, settings.to_dict())  # refuses a folder made with other settings first
    device = resolve_device(args.device)
    components = load_sig_components(args.blip, args.diffusion, settings, device=device,
                                     dtype=torch.float16 if args.fp16 else torch.float32)
    sig = SemanticInformationGenerator(components, settings, device)
    if args.bag is not None:
        pairs = bag_pairs(args.bag, distro=args.distro, rgb_topic=args.rgb_topic, thermal_topic=args.thermal_topic,
                          max_pairs=args.max_pairs)
    else:
        pairs = dataset_pairs(args.dataset, args.root, args.split, max_pairs=args.max_pairs, **_options(args.option))
    summary = write_guidance(sig, cache, pairs, overwrite=args.overwrite, progress=True)
    for line in summary.lines():
        print(line)
    print(f"cache: {args.out} (settings hash {cache.settings_hash[:16]}; train with loss.guidance_cache={args.out})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``ivf-train``; returns the process exit status."""
    args = build_parser().parse_args(argv)
    prefer_passive_waiting()  # before torch is imported below
    main_rank = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 talks
    level = logging.DEBUG if args.verbose else logging.INFO if main_rank else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    say = print if main_rank else (lambda *a, **k: None)
    # Imported here so `ivf-train --help` stays fast and import errors surface as messages.
    from ivf_perception.errors import IvfPerceptionError
    from ivf_training.config import load_config
    from ivf_training.distributed import init_distributed, shutdown_distributed
    from ivf_training.run_dir import read_run_config
    from ivf_training.trainer import resume_run, start_run

    # the package's errors (configuration, checkpoints, weights, data, export) and missing files
    user_errors = (IvfPerceptionError, FileNotFoundError)
    trainer = None
    try:
        if args.command == "config":
            import yaml

            from ivf_training.config import config_to_dict

            print(yaml.safe_dump(config_to_dict(load_config(args.config, args.overrides)), sort_keys=False), end="")
            return 0
        if args.command == "export":
            return _export(args)
        if args.command == "eval":
            _apply_threads(args.threads, args.num_workers)
            return _eval(args)
        if args.command == "calibrate":
            _apply_threads(args.threads, 0)
            return _calibrate(args)
        if args.command == "tesg-guidance":
            return _tesg_guidance(args)
        if args.command == "bench":
            from ivf_training.bench import run_bench

            _apply_threads(args.threads, args.num_workers)
            print(run_bench(args))
            return 0
        if args.command == "run":
            cfg = load_config(args.config, args.overrides)
            _apply_threads(args.threads, cfg.num_workers)
            init_distributed(cfg.device)
            origin = {"recipe": _portable(args.config), "overrides": list(args.overrides)}
            trainer = start_run(cfg, config_stem=args.config.stem, origin=origin)
            say(f"run directory: {trainer.run_dir}")
        else:
            run_cfg = read_run_config(args.run_dir)
            _apply_threads(args.threads, run_cfg.num_workers)
            init_distributed(run_cfg.device)
            trainer = resume_run(args.run_dir, args.checkpoint)
            say(f"resuming {trainer.run_dir} at step {trainer.step}")
        result = trainer.fit(stop_at_step=args.stop_at_step)
    except user_errors as exc:
        print(f"ivf-train: error: {exc}", file=sys.stderr)
        return 2
    except FloatingPointError as exc:  # divergence: actionable, but not a usage error
        print(f"ivf-train: training diverged: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if trainer is not None and main_rank:
            print(f"\nivf-train: interrupted at step {trainer.step}; last checkpoint at step "
                  f"{trainer.last_ckpt_step}. Continue with: ivf-train resume {trainer.run_dir}", file=sys.stderr)
        return 130
    finally:
        shutdown_distributed()
    best = result["best_value"]
    best_text = (f"best {result['best_metric']} {best:.4f} at step {result['best_step']}" if best is not None
                 else "no validation")
    start, end = result["start_val"], result["last_val"]
    compared = [k for k in (result["best_metric"], "mIoU", "fusion/Qabf", "loss/total")
                if isinstance(start.get(k), float) and isinstance(end.get(k), float)]
    if compared:  # a fine-tune: did it help?
        say("validation at step 0 -> end: " + ", ".join(
            f"{k} {start[k]:.4f} -> {end[k]:.4f}" for k in dict.fromkeys(compared)))
    say(f"finished at step {result['step']}: {best_text}; "
        f"export with: ivf-train export {trainer.run_dir} --out FILE.safetensors")
    return 0


if __name__ == "__main__":  # python -m ivf_training.cli
    sys.exit(main())
