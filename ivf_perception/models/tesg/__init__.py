"""TeSG: textual semantic guidance for infrared and visible image fusion (reconstruction).

``model`` wires the network and registers the variants; ``fusion`` holds MGCA (mask-split
cross-attention, eqs. 4–6) and TDAF (text-driven attentional fusion, eqs. 7–10); ``attention``
the two attention types; ``seg_head`` our segmentation head. The guidance the network reads
(mask and text tokens) is :class:`ivf_perception.guidance.Guidance`.
"""

from ivf_perception.models.tesg.model import PRESET_ARGS, TeSG, TeSGEncoder, TeSGFeatures, tesg, test_tesg

__all__ = ["PRESET_ARGS", "TeSG", "TeSGEncoder", "TeSGFeatures", "tesg", "test_tesg"]
