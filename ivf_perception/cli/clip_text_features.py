"""``ivf-perception clip-text-features``: CLIP text features of a class list, for CMFS.

CMFS's region map compares image regions with the CLIP embeddings of "the photo of a {class}".
This command computes them once (open_clip ViT-B/32 text tower) and writes a small safetensors
file to give to training (``model.text_features=FILE``) on machines without the CLIP checkpoint;
the trained engine weights then carry the features, so robots need neither.

Class 0 (unlabelled/background) has no prompt: the list is the dataset's classes 1..K-1.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ivf_perception.cli._common import setup_logging, user_errors
from ivf_perception.io.classes import CLASS_TABLES, class_table
from ivf_perception.models.cmfs.text_features import compute_text_features, prompts_for, save_text_features

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ivf-perception clip-text-features", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", choices=sorted(CLASS_TABLES), help="use this benchmark's class table")
    source.add_argument("--classes", nargs="+", help="class names 1..K-1 (class 0 gets no prompt)")
    p.add_argument("--clip-weights", required=True,
                   help="open_clip ViT-B-32 checkpoint (.safetensors or a state dict .bin/.pt), or 'random'")
    p.add_argument("--out", required=True, help="output .safetensors file")
    return p


@user_errors("ivf-perception clip-text-features")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    names = list(class_table(args.dataset).classes[1:]) if args.dataset else list(args.classes)
    features = compute_text_features(names, args.clip_weights)
    path = save_text_features(args.out, features, names, source=str(args.clip_weights))
    print(f"wrote {path}: {features.shape[0]} prompts ({', '.join(prompts_for(names))})")
    return 0
