"""``ivf-perception convert-upfusion``: the released UP-Fusion ``Fuse.pth`` as engine weights.

The authors' checkpoint (Google Drive / Baidu links in github.com/ixilai/UP-Fusion) holds
``{'AWF': state_dict}`` with ``module.`` prefixes, the ConvNeXt-B tensors and a dead third
encoder. This command reads it with ``torch.load(weights_only=True)``, maps it strictly onto the
``upfusion`` model (fusion only: the release has no segmentation head), adds the CLIP embedding
of the fixed prompt and the four channel permutations it induces, and writes ``.safetensors``
plus the JSON sidecar the Engine reads.

The embedding comes from an open_clip ViT-B-32-quickgelu checkpoint of OpenAI's weights
(``--clip-weights``) or a file holding it (``--text-embedding``). The authors computed it with
OpenAI's ``clip`` in fp16 on CUDA; the command prints the smallest gap between sorted text
scores per module, so a near-tie that another precision could flip is visible.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from ivf_perception.cli._common import setup_logging, user_errors
from ivf_perception.engine.weights import WeightsInfo, save_weights
from ivf_perception.models.upfusion import PRESET_ARGS, upfusion
from ivf_perception.models.upfusion.convert import load_released_into
from ivf_perception.models.upfusion.text import load_text_embedding, prompt_embedding

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ivf-perception convert-upfusion", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="the released Fuse.pth")
    text = p.add_mutually_exclusive_group(required=True)
    text.add_argument("--clip-weights", help="open_clip ViT-B-32-quickgelu checkpoint of OpenAI's weights")
    text.add_argument("--text-embedding", help="a file holding the prompt's 512-d embedding")
    p.add_argument("--preset", default="paper", choices=sorted(PRESET_ARGS),
                   help="configuration the checkpoint was trained with (the release: paper)")
    p.add_argument("--out", required=True, help="output .safetensors (the .json sidecar is written beside it)")
    return p


@user_errors("ivf-perception convert-upfusion")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    text = load_text_embedding(args.text_embedding) if args.text_embedding else prompt_embedding(args.clip_weights)
    model = upfusion(preset=args.preset, num_classes=0)
    margins = load_released_into(model, args.checkpoint, text)
    info = WeightsInfo(
        variant="upfusion", preset=args.preset, num_classes=0, model_args=model.config()["model_args"],
        data={"source": "released UP-Fusion checkpoint (github.com/ixilai/UP-Fusion)",
              "checkpoint": Path(args.checkpoint).name,
              "text_embedding": args.text_embedding or f"open_clip ViT-B-32-quickgelu {Path(args.clip_weights).name}"},
        metrics={"permutation_margins": margins},
    )
    path = save_weights(model.state_dict(), args.out, info)
    print(f"wrote {path}: upfusion/{args.preset}, fusion only; smallest text-score gap per TCPM "
          f"{', '.join(f'{m:.2e}' for m in margins)}")
    return 0
