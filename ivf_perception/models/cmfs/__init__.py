"""CMFS: CLIP-guided VMamba fusion and segmentation (IJCAI 2025), one concept per module.

``model`` wires the network and registers the variants; ``backbone`` holds the VMamba branches
and the ImageNet checkpoint mapping, ``mia`` the BiMamba + MMFI interaction with the CLIP region
map, ``fsc`` the frequency-spatial collaboration, ``mmfe`` the mixture-of-experts fusion,
``heads`` the segmentation and fusion heads and ``text_features`` the CLIP prompt features.
"""

from ivf_perception.models.cmfs.model import ABLATIONS, CMFS, PRESET_ARGS, CMFSFeatures, cmfs, test_cmfs

__all__ = ["ABLATIONS", "CMFS", "CMFSFeatures", "PRESET_ARGS", "cmfs", "test_cmfs"]
