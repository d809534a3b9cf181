"""``torch.compile`` backend: the eager backend's call, compiled by Inductor (CUDA graphs on GPU).

Why: the SSM families run thousands of small kernels per frame; Inductor fuses the elementwise
ones and, on CUDA, ``mode="reduce-overhead"`` replays the whole step as a CUDA graph, removing
the per-kernel launch cost that dominates a 480×640 frame. On the CPU the default mode is used
(CUDA graphs do not exist there; ``max-autotune`` only multiplies compile time).

Warm-up and recompiles: nothing is compiled at construction. The first batch of each input
shape (and precision) compiles, which takes seconds for the test models and minutes for
paper presets on a CPU; the node compiles at ``configure`` through its warm-up frames at
``warmup_size``, so set that to the camera size. Shapes are compiled statically
(``dynamic=False``): a camera stream has one size, and static shapes are what CUDA graphs
replay. Each new size compiles once more; after ``torch._dynamo.config.recompile_limit``
sizes (8 by default) torch falls back to eager for new ones, with a warning. Compile
artefacts live in torch's own cache (``TORCHINDUCTOR_CACHE_DIR``), so a restarted process
recompiles faster but not instantly.

Options: ``compile_mode`` overrides the mode (any ``torch.compile`` mode name);
``compile_backend`` replaces Inductor (e.g. ``aot_eager``: graph capture without code
generation, which the CPU tests use because Inductor needs minutes of C++ compilation for
even the micro test model on a 2-core machine).
"""

from __future__ import annotations

from typing import Any

import torch

from ivf_perception.engine.backends.base import BackendContext, BackendError, BackendOutput
from ivf_perception.engine.backends.torch_eager import TorchBackend

__all__ = ["CompileBackend"]


class CompileBackend(TorchBackend):
    """:class:`TorchBackend` (inference mode, autocast, float32 outputs) around ``torch.compile``."""

    name = "compile"

    def __init__(self, context: BackendContext) -> None:
        super().__init__(context)
        self.mode = str(context.options.get("compile_mode")
                        or ("reduce-overhead" if self.device.type == "cuda" else "default"))
        self.compiler = str(context.options.get("compile_backend") or "inductor")
        try:
            self.forward = torch.compile(self.model, backend=self.compiler,
                                         mode=self.mode if self.compiler == "inductor" else None, dynamic=False)
        except (RuntimeError, ValueError) as exc:  # an unknown mode, or no compiler support here
            raise BackendError(f"torch.compile(mode='{self.mode}') is not usable here: {exc}") from exc
        self._cuda_graphs = (self.device.type == "cuda" and self.compiler == "inductor"
                             and "reduce-overhead" in self.mode)

    def run(self, rgb: torch.Tensor, thermal: torch.Tensor) -> BackendOutput:
        if self._cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # each call is a new step: replay, not a rerun
        try:
            out = super().run(rgb, thermal)
        except torch._dynamo.exc.TorchDynamoException as exc:  # compile failures surface at the first call
            raise BackendError(f"torch.compile could not compile {type(self.model).__name__} at "
                               f"{tuple(rgb.shape[-2:])} ({type(exc).__name__}: {str(exc).splitlines()[0][:300]}); "
                               "use backend torch") from exc
        if self._cuda_graphs:
            # CUDA-graph outputs live in memory the next replay overwrites; callers may keep results
            out = BackendOutput(out.fused.clone(), None if out.logits is None else out.logits.clone())
        return out

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "compile_mode": self.mode, "compiler": self.compiler}
