"""UP-Fusion: text-guided channel perturbation and ConvNeXt-guided channel pruning (AAAI 2026).

``model`` wires the network and registers the variants; ``scpm`` is the semantic-aware channel
pruning with ``semantic``'s frozen torchvision ConvNeXt, ``gam`` the geometric affine modulation,
``tcpm`` the text-guided channel perturbation with its top-m cross-attention, ``selection`` the
hard top-k helpers and their fp32 guard, ``text`` the fixed CLIP prompt, ``convert`` the released
checkpoint's mapping.
"""

from ivf_perception.models.upfusion.model import PRESET_ARGS, UPFusion, UPFusionFeatures, test_upfusion, upfusion

__all__ = ["PRESET_ARGS", "UPFusion", "UPFusionFeatures", "test_upfusion", "upfusion"]
