"""The fusion node with a deliberately slow test-only model (the slow-engine test runs this file).

The only stand-in in the node tests: ``test_slow_s4fusion`` is the registered micro S4Fusion
whose forward first sleeps ``IVF_TEST_ENGINE_DELAY_S`` seconds (default 0.25), registered
through the real registry so the node builds it by name (``-p variant:=test_slow_s4fusion``).
Everything else (node, pairing, slot, DDS) is the production code.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from ivf_perception.models import build_model
from ivf_perception.models.registry import register_model
from ivf_perception.nodes.fusion_node import main

DELAY_S = float(os.environ.get("IVF_TEST_ENGINE_DELAY_S", "0.25"))


@register_model
def test_slow_s4fusion(preset: str = "test", **kwargs: Any) -> Any:
    """Micro S4Fusion whose every forward takes at least DELAY_S longer."""
    model = build_model("test_s4fusion", preset=preset, **kwargs)
    forward = model.forward

    def slow_forward(*args: Any, **kw: Any) -> Any:
        time.sleep(DELAY_S)
        return forward(*args, **kw)

    model.forward = slow_forward
    return model


if __name__ == "__main__":
    sys.exit(main(sys.argv))
