"""Contact sheet of real LLVIP test pairs through engine weights: RGB, thermal, fused, overlay.

Why: the numbers in the quality report do not show what a user sees on a real night street
(the first thing a new user tries). One row per pair, held out from training (LLVIP *test*);
each pair is shrunk to ``--width`` first, the working size the CPU default was trained at
(LLVIP's 1280×1024 shrunk to a 256-pixel short side), then run through the engine.

    python scripts/contact_sheet.py --weights ivf_perception/weights/s4fusion_tiny_default.safetensors \\
        --pairs ../shared/data/llvip/test --out docs/llvip_contact_sheet.jpg [--rows 4]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from ivf_perception.engine import Engine
from ivf_perception.io.image_files import find_pairs, read_image, read_rgb

_COLUMNS = ("RGB", "thermal", "fused", "labels over RGB")
_TITLE_PX = 22


def _shrink(image: np.ndarray, width: int) -> np.ndarray:
    height = round(image.shape[0] * width / image.shape[1])
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]


def _titled(tile: np.ndarray, title: str) -> np.ndarray:
    bar = np.full((_TITLE_PX, tile.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, title, (4, _TITLE_PX - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([bar, tile], axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="default", help="engine weights (default: the bundled CPU default)")
    parser.add_argument("--pairs", type=Path, default=Path("../shared/data/llvip/test"), help="folder with ir/ and vi/")
    parser.add_argument("--out", type=Path, required=True, help="image to write (.jpg or .png)")
    parser.add_argument("--rows", type=int, default=4, help="pairs to show (evenly spaced over the folder)")
    parser.add_argument("--width", type=int, default=320, help="width of each tile and of the engine input")
    args = parser.parse_args()

    pairs = list(find_pairs(args.pairs / "ir", args.pairs / "vi"))
    if not pairs:
        raise SystemExit(f"contact_sheet: no ir/vi pairs under {args.pairs}")
    picks = [pairs[i] for i in np.linspace(0, len(pairs) - 1, min(args.rows, len(pairs))).round().astype(int)]
    engine = Engine(weights=args.weights, device="cpu")
    rows = []
    for pair in picks:
        rgb = _shrink(read_rgb(pair.vi_path), args.width)
        thermal = _shrink(read_image(pair.ir_path), args.width)
        result = engine.infer(rgb, thermal)
        overlay = result.overlay()
        tiles = [rgb, _as_rgb(thermal), result.fused, overlay if overlay is not None else result.fused]
        rows.append(np.concatenate(tiles, axis=1))
    sheet = np.concatenate(rows, axis=0)
    header = np.concatenate([_titled(np.zeros((0, args.width, 3), np.uint8), t) for t in _COLUMNS], axis=1)
    sheet = np.concatenate([header, sheet], axis=0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(args.out), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 88]):
        raise SystemExit(f"contact_sheet: could not write {args.out}")
    print(f"wrote {args.out} ({len(picks)} pairs from {args.pairs})")


if __name__ == "__main__":
    main()
