"""Optimiser and its parameter groups (which parameters get weight decay).

Why not timm's ``param_groups_weight_decay``: it exempts 1-D parameters, biases and names on a
list, which is most of this rule, but our groups must also exempt parameters flagged
``_no_weight_decay`` whatever their shape (Mamba's 2-D ``A_log``) and every parameter of a norm
layer, and keep the decay group first (the order the optimiser state in existing checkpoints
was saved in).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ivf_training.config import ConfigError

__all__ = ["param_groups", "build_optimizer"]

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Optimiser groups: decay for weights; none for norms, biases, 1-D and flagged parameters.

    Parameters carrying ``_no_weight_decay = True`` (Mamba's ``A_log`` and ``D``) must not be
    pulled towards zero: ``A_log`` parameterises the state decay and ``D`` the skip path.
    """
    no_decay_ids = {
        id(p) for m in model.modules() if isinstance(m, _NORM_TYPES) for p in m.parameters(recurse=False)
    }
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if getattr(p, "_no_weight_decay", False) or p.ndim <= 1 or name.endswith(".bias") or id(p) in no_decay_ids:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(name: str, groups: list[dict[str, Any]], lr: float, *, betas: tuple[float, float] = (0.9, 0.999),
                    eps: float = 1e-8, momentum: float = 0.9) -> torch.optim.Optimizer:
    """The optimiser ``name`` (``optim.name``: ``adamw`` or ``sgd``) over parameter ``groups``
    (:func:`param_groups`, which carry the weight decay).

    SGD's weight decay is the classic L2 penalty (coupled with the gradient), AdamW's the
    decoupled decay; both skip the no-decay group.
    """
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)
    raise ConfigError(f"optim.name '{name}' is not an optimiser; use adamw or sgd")
