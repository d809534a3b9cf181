"""``ivf-perception eval-fusion``: fusion metrics of fused images against their two sources.

Usage::

    ivf-perception eval-fusion --ir DIR --vi DIR --fused DIR [--json FILE]

Images are matched by file stem across the three folders (``ir/0001.jpg``, ``vi/0001.png``,
``fused/0001.png``; png, jpg, jpeg, bmp, tif, tiff). Every image is prepared as DESIGN.md §6
says (8-bit, BT.601 gray, rounded; see :func:`ivf_perception.metrics.prepare.prepare_for_metrics`) and scored
with :func:`ivf_perception.metrics.fusion_metrics`. Stems missing from a folder, unreadable
files and size mismatches are reported and skipped; the table shows the mean over the images
that were scored. Exit code 0 on success, 2 when a folder is missing or no image could be
scored.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ivf_perception.io.image_files import IMAGE_EXTENSIONS, read_image
from ivf_perception.metrics.fusion import FUSION_METRIC_NAMES, FusionMetricAccumulator, fusion_metrics
from ivf_perception.metrics.prepare import prepare_for_metrics

__all__ = ["EvalResult", "evaluate_folders", "build_parser", "main"]

_ROLES = ("ir", "vi", "fused")
_PROG = "ivf-perception eval-fusion"


@dataclass
class EvalResult:
    """Outcome of :func:`evaluate_folders`.

    Attributes:
        per_image: ``{stem: {metric: value}}`` for every scored image, sorted by stem.
        mean: ``{metric: mean over per_image}``; empty when nothing was scored.
        missing: ``{stem: [roles]}`` for stems absent from some folder (roles among
            ``"ir"``, ``"vi"``, ``"fused"``); these were skipped.
        errors: ``{stem: reason}`` for matched stems that could not be scored (unreadable file,
            size mismatch, duplicate stem in a folder); these were skipped.
    """

    per_image: dict[str, dict[str, float]] = field(default_factory=dict)
    mean: dict[str, float] = field(default_factory=dict)
    missing: dict[str, list[str]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def num_images(self) -> int:
        """Number of scored images."""
        return len(self.per_image)

    def to_json(self) -> dict[str, dict]:
        """``{"mean": {metric: value}, "per_image": {stem: {metric: value}}}``."""
        return {"mean": dict(self.mean), "per_image": {k: dict(v) for k, v in self.per_image.items()}}


def _index_folder(folder: Path) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    """Images directly inside ``folder``: ``({stem: path}, {stem: [paths]} for duplicated stems)``."""
    found: dict[str, list[Path]] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or not entry.is_file():
            continue
        if entry.suffix.lower() in IMAGE_EXTENSIONS:
            found.setdefault(entry.stem, []).append(entry)
    unique = {stem: paths[0] for stem, paths in found.items() if len(paths) == 1}
    duplicated = {stem: paths for stem, paths in found.items() if len(paths) > 1}
    return unique, duplicated


def _size(image: np.ndarray) -> str:
    return f"{image.shape[1]}x{image.shape[0]}"


def evaluate_folders(
    ir_dir: str | os.PathLike[str],
    vi_dir: str | os.PathLike[str],
    fused_dir: str | os.PathLike[str],
    *,
    reader: Callable[[Path], np.ndarray] = read_image,
) -> EvalResult:
    """Score every fused image against its infrared and visible sources.

    Args:
        ir_dir: folder of infrared (thermal) images.
        vi_dir: folder of visible images.
        fused_dir: folder of fused images.
        reader: reads one file as stored (default :func:`ivf_perception.io.image_files.read_image`).

    Returns:
        An :class:`EvalResult`; problems with single images are recorded in it, not raised.
        ``per_image`` is empty when no stem is present in all three folders.

    Raises:
        FileNotFoundError: a folder does not exist (NotADirectoryError: it is a file).
    """
    folders = {"ir": Path(ir_dir), "vi": Path(vi_dir), "fused": Path(fused_dir)}
    for role, folder in folders.items():
        if not folder.exists():
            raise FileNotFoundError(f"--{role} folder does not exist: {folder}")
        if not folder.is_dir():
            raise NotADirectoryError(f"--{role} is not a folder: {folder}")

    indexed = {role: _index_folder(folder) for role, folder in folders.items()}
    all_stems: set[str] = set()
    for unique, duplicated in indexed.values():
        all_stems |= unique.keys() | duplicated.keys()

    result = EvalResult()
    acc = FusionMetricAccumulator()
    for stem in sorted(all_stems):
        absent = [r for r in _ROLES if stem not in indexed[r][0] and stem not in indexed[r][1]]
        if absent:
            result.missing[stem] = absent
            continue
        dups = [f"{r}: {', '.join(p.name for p in indexed[r][1][stem])}" for r in _ROLES if stem in indexed[r][1]]
        if dups:
            result.errors[stem] = f"several files share this stem ({'; '.join(dups)}); keep one"
            continue
        try:
            images = {r: prepare_for_metrics(reader(indexed[r][0][stem]), r) for r in _ROLES}
        except (OSError, ValueError, TypeError) as exc:
            result.errors[stem] = f"cannot read: {exc}"
            continue
        ir, vi, fused = images["ir"], images["vi"], images["fused"]
        if ir.shape != vi.shape:
            result.errors[stem] = (
                f"the sources differ in size (ir {_size(ir)}, vi {_size(vi)}); register them first"
            )
            continue
        if fused.shape != ir.shape:
            result.errors[stem] = f"fused image is {_size(fused)} but the sources are {_size(ir)}"
            continue
        try:
            metrics = fusion_metrics(fused, ir, vi, prepare=False)
        except ValueError as exc:  # e.g. smaller than SSIM's 7x7 window
            result.errors[stem] = str(exc)
            continue
        result.per_image[stem] = metrics
        acc.update(metrics)
    if acc.count:
        result.mean = acc.compute()
    return result


def _format_table(result: EvalResult) -> str:
    names = list(FUSION_METRIC_NAMES)
    width = 9
    header = "mean of".ljust(10) + "".join(n.rjust(width) for n in names)
    row = f"{result.num_images} images".ljust(10) + "".join(f"{result.mean[n]:{width}.4f}" for n in names)
    return f"{header}\n{row}"


def _report_skipped(result: EvalResult, limit: int = 20) -> None:
    if result.missing:
        print(f"{_PROG}: skipped {len(result.missing)} stem(s) missing from a folder:", file=sys.stderr)
        for i, (stem, roles) in enumerate(result.missing.items()):
            if i == limit:
                print(f"  ... and {len(result.missing) - limit} more", file=sys.stderr)
                break
            print(f"  {stem}: no {', '.join(roles)} image", file=sys.stderr)
    for stem, reason in result.errors.items():
        print(f"{_PROG}: error: {stem}: {reason}; skipped", file=sys.stderr)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The command's parser (or add its options to ``parser``, e.g. a subcommand parser)."""
    if parser is None:
        parser = argparse.ArgumentParser(
            prog=_PROG,
            description="Fusion metrics (EN SD SF AG MI CC PSNR SCD VIF Qabf SSIM, computed as the "
                        "CDDFuse evaluator does) of fused images against their infrared and visible "
                        "sources, matched by file stem.",
        )
    parser.add_argument("--ir", required=True, metavar="DIR", help="folder of infrared (thermal) images")
    parser.add_argument("--vi", required=True, metavar="DIR", help="folder of visible images")
    parser.add_argument("--fused", required=True, metavar="DIR", help="folder of fused images")
    parser.add_argument("--json", default=None, metavar="FILE",
                        help='also write {"mean": {...}, "per_image": {stem: {...}}} to FILE')
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit code (0 ok, 1 output not written, 2 nothing to score)."""
    args = build_parser().parse_args(argv)
    try:
        result = evaluate_folders(args.ir, args.vi, args.fused)
    except (FileNotFoundError, NotADirectoryError) as exc:
        print(f"{_PROG}: error: {exc}", file=sys.stderr)
        return 2
    _report_skipped(result)
    if not result.per_image:
        if result.errors:
            print(f"{_PROG}: error: none of the {len(result.errors)} matched image(s) could be scored",
                  file=sys.stderr)
        else:
            print(
                f"{_PROG}: error: no image stem is present in all three folders "
                f"(--ir {args.ir}, --vi {args.vi}, --fused {args.fused}); files are matched by name "
                "without extension",
                file=sys.stderr,
            )
        return 2
    print(_format_table(result))
    if args.json:
        out = Path(args.json)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result.to_json(), indent=2, allow_nan=False) + "\n")
        except OSError as exc:
            print(f"{_PROG}: error: cannot write {out}: {exc}", file=sys.stderr)
            return 1
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
