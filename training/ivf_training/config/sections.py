"""The plain sections of the training configuration: model, data and optimiser settings.

Every key is declared once with its type and default, so a typo fails at start-up (naming the
key and listing the valid ones) instead of silently being ignored hours into a run. The loss
settings, one class per ``loss.kind``, are in :mod:`ivf_training.config.losses`; the run as a
whole in :mod:`ivf_training.config.train`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ivf_training.config.schema import ConfigError

__all__ = ["ModelConfig", "GeneratedDataConfig", "DataConfig", "OptimConfig"]


@dataclass
class ModelConfig:
    """Which network to build (``build_model(variant, preset=..., num_classes=..., **overrides)``).

    Attributes:
        variant: registry name, e.g. ``"s4fusion"``.
        preset: size preset (``paper``, ``small``, ``tiny``).
        num_classes: segmentation classes; 0 trains a fusion-only model.
        overrides: extra constructor arguments of the variant (e.g. ``{"drop_path": 0.0}``).
        init_from: weights to start from instead of a random initialisation: engine weights
            (``.safetensors`` with sidecar) or a run's checkpoint ``.safetensors``. Used for
            fine-tuning stages and stage hand-overs; must fit the model exactly. ``default``
            names the package's bundled weights (``s4fusion`` ``tiny`` with 9 MFNet classes), the
            ones the node runs without a ``weights`` parameter: fine-tune those on your own data.
        reinit: submodules (state-dict prefixes such as ``fusion_head``) that keep their fresh
            initialisation instead of taking ``init_from``'s tensors: a head whose meaning a
            switch in ``overrides`` changes (S4Fusion's ``fusion_base``) restarts while the rest
            of the network carries on. Every name must be a submodule of the model, and every
            other tensor must still fit exactly.
        freeze_seg_head: keep the segmentation head as it is: its parameters get no gradient and
            no weight decay, and its BatchNorm statistics stay fixed. Use it when the training
            data has no labels (an extracted bag without a label topic): the fusion losses then
            adapt the shared encoder/decoder, and without freezing, weight decay and BatchNorm
            statistics would still drift the head that no loss is training.
        text_features: for text-guided models (CMFS): a CLIP text feature file of the class
            prompts (``ivf-perception clip-text-features`` writes one).
        clip_weights: for text-guided models: an open_clip ViT-B/32 checkpoint file to compute
            the text features from (cached in the run directory), or ``random`` for a randomly
            initialised text tower (tests and CPU learning checks: no real CLIP guidance).
    """

    variant: str = "s4fusion"
    preset: str = "tiny"
    num_classes: int = 9
    overrides: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None
    reinit: list[str] = field(default_factory=list)
    freeze_seg_head: bool = False
    text_features: str | None = None
    clip_weights: str | None = None


@dataclass
class GeneratedDataConfig:
    """Generated scenes (``ivf_perception.scenes``): the only labelled data available here.

    Attributes:
        train_count: scenes used for training (indices ``train_start`` ..).
        val_count: scenes used for validation (indices ``val_start`` ..).
        train_start: first scene index for training.
        val_start: first scene index for validation; far from the training range so the two
            sets never overlap.
        scene: fields of ``SceneConfig`` (size, night ratio, noise, and the opt-in variety:
            ``night_glare``, ``thermal_crossover``, ``vignetting``, ``misregistration_jitter_px``;
            ``ivf_perception.scenes.VARIETY`` is one moderate setting of them). Used for the
            training and the validation scenes alike.
    """

    train_count: int = 0
    val_count: int = 0
    train_start: int = 0
    val_start: int = 1_000_000
    scene: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    """Training and validation data.

    Attributes:
        generated: generated scenes (labelled).
        kind: the layout of ``train_folders`` and ``val_folders`` (see training/DATASETS.md):
            ``folder`` (``vi/``, ``ir/``, optional ``labels/``), ``extract`` (written by
            ``ivf-perception extract``), ``mfnet``, ``msrs``, ``pst900`` or ``fmb``.
        train_folders: dataset roots of layout ``kind`` to train on.
        train_split: split of ``train_folders`` (benchmarks: a split name, default ``train``;
            ``folder``/``extract``: an optional subfolder).
        train_real: unlabelled pair folders with ``vi/`` and ``ir/`` (e.g. LLVIP train).
        real_repeat: how often each folder/real set appears in the training mix; small real sets
            next to thousands of generated scenes would otherwise hardly be seen.
        real_short_side: resize real images so their shorter side has this many pixels before
            augmentation (LLVIP is 1280×1024; crops of 128 px would show only texture); ``None``
            keeps the original size.
        val_folders: dataset roots of layout ``kind`` for validation (labelled or not).
        val_split: split of ``val_folders``; ``None`` → ``val`` for MFNet, ``test`` for MSRS,
            PST900 and FMB (they ship no validation split), the root itself for folder kinds.
        loader_options: extra arguments of the ``kind``'s loader, e.g. ``{thermal: thermal_raw}``
            for PST900's 16-bit thermal (unknown ones are errors when the data is built).
        val_real: unlabelled pair folders for fusion-metric validation (never RoadScene/TNO,
            which are held out for reporting).
        val_max_pairs: at most this many pairs per unlabelled validation folder (fusion metrics
            on full-size images are slow on a CPU); ``None`` uses all.
        class_names: one name per class; empty → the MFNet names when ``num_classes`` is 9,
            otherwise ``class_0`` ...
        palette: one 0xRRGGBB colour per class; empty → MFNet palette or a generated one.
        scale_range: random scale factor range of the joint augmentation.
        hflip: random horizontal flip.
        rot90: random rotation by a multiple of 90° (MAFS); needs a square crop (``crop_width``
            unset or equal to ``crop``), since a quarter turn swaps height and width.
    """

    generated: GeneratedDataConfig = field(default_factory=GeneratedDataConfig)
    kind: Literal["folder", "extract", "mfnet", "msrs", "pst900", "fmb"] = "folder"
    train_folders: list[str] = field(default_factory=list)
    train_split: str | None = None
    train_real: list[str] = field(default_factory=list)
    real_repeat: int = 1
    real_short_side: int | None = None
    val_folders: list[str] = field(default_factory=list)
    val_split: str | None = None
    loader_options: dict[str, Any] = field(default_factory=dict)
    val_real: list[str] = field(default_factory=list)
    val_max_pairs: int | None = None
    class_names: list[str] = field(default_factory=list)
    palette: list[int] = field(default_factory=list)
    scale_range: tuple[float, float] = (0.75, 1.5)
    hflip: bool = True
    rot90: bool = False

    def __post_init__(self) -> None:
        """Single-field checks: split names are names (``train``, ``test_night``), never paths such as
        ``../x``; loader options do not shadow what the trainer passes to ``build_dataset`` itself."""
        for name in ("train_split", "val_split"):
            split = getattr(self, name)
            if split is not None and (not split.strip() or split in (".", "..") or any(c in split for c in "/\\")):
                raise ConfigError(
                    f"data.{name} must be a split name such as 'train' or 'test' (no path separators), got {split!r}"
                )
        reserved = sorted(set(self.loader_options) & {"root", "split", "num_classes", "short_side", "max_pairs"})
        if reserved:
            raise ConfigError(
                f"data.loader_options cannot set {', '.join(reserved)}: they come from data.train_folders/val_folders, "
                "the splits, model.num_classes, data.real_short_side and data.val_max_pairs"
            )


@dataclass
class OptimConfig:
    """AdamW (or SGD) with a linear warm-up followed by a cosine, polynomial or exponential decay.

    S4Fusion trains with warm-up cosine 3e-4 → 1.5e-3 → 6e-4: the learning rate rises linearly
    from ``lr_start`` to ``lr_peak`` during the first ``warmup_fraction`` of the steps, then
    follows half a cosine down to ``lr_end``. CMFS uses ``schedule: poly``: after the warm-up,
    ``lr_end + (lr_peak − lr_end)·(1 − t)^power`` with t the fraction of the decay done. MAFS
    uses SGD (momentum 0.9, lr 1e-3) with ``schedule: exp``: after the warm-up,
    ``lr_peak·gamma_decay^e`` with e the (fractional) number of epochs since the warm-up ended;
    ``lr_end`` plays no part in it.

    Attributes:
        lr_start: learning rate at step 0.
        lr_peak: learning rate at the end of the warm-up.
        lr_end: learning rate at the last step.
        warmup_fraction: fraction of all steps spent warming up, in [0, 1).
        weight_decay: AdamW decoupled weight decay (not applied to norms, biases and parameters
            flagged ``_no_weight_decay`` such as Mamba's ``A_log`` and ``D``).
        betas: AdamW betas.
        eps: AdamW epsilon.
        grad_clip: maximum global gradient norm; ``None`` disables clipping.
        schedule: ``warmup_cosine``, ``poly`` or ``exp``.
        power: exponent of the ``poly`` decay.
        name: ``adamw`` or ``sgd`` (momentum SGD, whose ``weight_decay`` is the classic L2
            penalty; betas and eps are AdamW's only).
        momentum: SGD momentum.
        gamma_decay: learning-rate factor per epoch of the ``exp`` decay, in (0, 1].
    """

    lr_start: float = 3e-4
    lr_peak: float = 1.5e-3
    lr_end: float = 6e-4
    warmup_fraction: float = 0.05
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float | None = 1.0
    schedule: Literal["warmup_cosine", "poly", "exp"] = "warmup_cosine"
    power: float = 0.9
    name: Literal["adamw", "sgd"] = "adamw"
    momentum: float = 0.9
    gamma_decay: float = 0.99
