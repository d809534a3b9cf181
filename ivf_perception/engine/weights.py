"""Engine weight files: ``NAME.safetensors`` plus a ``NAME.json`` sidecar.

Why this format: safetensors cannot execute code on load (a pickled ``.pt`` can), and the
sidecar keeps everything needed to rebuild and interpret the model next to the tensors:
variant, preset, constructor arguments, class names, palette, input size, the training recipe,
the data it saw and its validation metrics. Pickled checkpoints are refused by name.

:func:`build_model_from_weights` is the one way to turn such a file back into a model: the
Engine, the training teacher and the tools that need a bare ``nn.Module`` all call it, so the
sidecar is interpreted and the tensors are checked in one place.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from ivf_perception.errors import IvfPerceptionError
from ivf_perception.io.classes import palette_to_array
from ivf_perception.io.tensor_files import TensorFileError, TensorFileNotFoundError, read_safetensors
from ivf_perception.models import build_model
from ivf_perception.models.registry import UnknownModelError, with_legacy_args, without_pretrained_files

__all__ = [
    "WEIGHTS_FORMAT",
    "STORAGE_DTYPES",
    "WeightsError",
    "WeightsInfo",
    "build_model_from_weights",
    "check_expected",
    "save_weights",
    "write_sidecar",
    "load_weights",
    "read_sidecar",
    "sidecar_path",
    "TRAINING_DOMAINS",
    "training_domain",
]

WEIGHTS_FORMAT = "ivf_perception.weights/1"
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16}
"""How a file stores its floating tensors (sidecar ``storage_dtype``). float16 halves the file (the
GPU default must ship in 8 MB); the loader casts such tensors back to the model's own dtypes."""
_PICKLE_SUFFIXES = {".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle", ".tar"}
TRAINING_DOMAINS = ("generated scenes", "real unlabelled pairs", "labelled datasets")
"""What a model's labels can be trusted on depends on what it saw: synthetic scenes only teach
synthetic classes, unlabelled real pairs only train fusion, labelled datasets train labels on
real images. The sidecar's ``training_domain`` lists these, in this order."""


class WeightsError(IvfPerceptionError, ValueError):
    """A weight file is missing, corrupt, pickled, or does not fit the requested model."""


@dataclass
class WeightsInfo:
    """The sidecar's content.

    Attributes:
        variant: registry name of the model family (e.g. ``"s4fusion"``).
        preset: size preset the weights were trained with.
        num_classes: segmentation classes (0 for fusion-only weights).
        model_args: extra constructor overrides used at training time.
        classes: class names, index = class id.
        palette: one 0xRRGGBB colour per class.
        input_size: (H, W) the model was trained/validated at, informational.
        recipe: the resolved training configuration.
        data: what the model was trained and validated on.
        metrics: validation metrics.
        training_domain: the kinds of training data (:data:`TRAINING_DOMAINS`), empty when
            unknown (sidecars written before it was recorded).
        quality: measured quality on data the training never saw (held-out real pairs, held-out
            generated seeds) and how it was measured; written by ``scripts/quality_report.py``
            for the bundled weights, empty otherwise. Validation ``metrics`` are not this: they
            were used to pick the checkpoint.
        storage_dtype: how the floating tensors are stored (:data:`STORAGE_DTYPES`);
            ``save_weights`` casts them to it and the loader casts float16 back to the model's
            dtypes. Sidecars written before it was recorded mean ``float32``.
        lineage: the training runs that made these weights, first to last (a model trained in
            stages starts each from the one before through ``model.init_from``): one JSON object
            per run or starting file, written by the training package's export. ``recipe`` is
            only the last run's configuration; this says how to reproduce the whole chain.
    """

    variant: str
    preset: str
    num_classes: int
    model_args: dict[str, Any] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)
    palette: list[int] = field(default_factory=list)
    input_size: list[int] | None = None
    recipe: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    training_domain: list[str] = field(default_factory=list)
    quality: dict[str, Any] = field(default_factory=dict)
    storage_dtype: str = "float32"
    lineage: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"format": WEIGHTS_FORMAT, **self.__dict__}

    @classmethod
    def from_json(cls, obj: Any, source: Path) -> WeightsInfo:
        """Validate a parsed sidecar field by field; a bad one is a :class:`WeightsError` naming
        ``source`` and the field, never a ``TypeError`` deep in the model or the palette code."""
        if not isinstance(obj, Mapping):
            raise WeightsError(f"{source}: sidecar must be a JSON object, got {type(obj).__name__}")
        if obj.get("format") != WEIGHTS_FORMAT:
            raise WeightsError(
                f"{source}: sidecar format is {obj.get('format')!r}, expected {WEIGHTS_FORMAT!r}"
            )
        missing = [k for k in ("variant", "preset", "num_classes") if k not in obj]
        if missing:
            raise WeightsError(f"{source}: sidecar lacks required keys {missing}")
        known = {k: obj[k] for k in cls.__dataclass_fields__ if k in obj}
        for key, value in known.items():
            problem = _FIELD_CHECKS[key](value)
            if problem:
                raise WeightsError(f"{source}: sidecar field '{key}' {problem}, got {value!r:.200}")
        return cls(**known)


def _text(value: Any) -> str:
    return "" if isinstance(value, str) and value.strip() else "must be a non-empty string"


def _count(value: Any) -> str:
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 256
    return "" if ok else "must be an integer in [0, 256]"


def _object(value: Any) -> str:
    return "" if isinstance(value, dict) and all(isinstance(k, str) for k in value) else "must be a JSON object"


def _objects(value: Any) -> str:
    ok = isinstance(value, list) and not any(_object(v) for v in value)
    return "" if ok else "must be a list of JSON objects"


def _names(value: Any) -> str:
    ok = isinstance(value, list) and all(isinstance(v, str) and v.strip() for v in value)
    return "" if ok else "must be a list of non-empty names"


def _palette(value: Any) -> str:
    if not isinstance(value, list):
        return "must be a list of 0xRRGGBB integers"
    try:
        palette_to_array(value)
    except ValueError as exc:
        return f"is invalid ({exc})"
    return ""


def _input_size(value: Any) -> str:
    ok = value is None or (isinstance(value, list) and len(value) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value))
    return "" if ok else "must be null or [height, width] positive integers"


def _storage_dtype(value: Any) -> str:
    return "" if value in STORAGE_DTYPES else f"must be one of {', '.join(repr(d) for d in STORAGE_DTYPES)}"


def _domain(value: Any) -> str:
    ok = isinstance(value, list) and all(v in TRAINING_DOMAINS for v in value)
    return "" if ok else f"must be a list of {', '.join(repr(d) for d in TRAINING_DOMAINS)}"


_FIELD_CHECKS: dict[str, Callable[[Any], str]] = {
    "variant": _text, "preset": _text, "num_classes": _count, "model_args": _object, "classes": _names,
    "palette": _palette, "input_size": _input_size, "recipe": _object, "data": _object, "metrics": _object,
    "training_domain": _domain, "quality": _object, "storage_dtype": _storage_dtype, "lineage": _objects,
}
"""One check per :class:`WeightsInfo` field: the problem in words, or "" when the value is fine."""


def training_domain(data: Mapping[str, Any]) -> list[str]:
    """The :data:`TRAINING_DOMAINS` a run's ``data.json`` description (its ``train`` part) covers.

    Generated scenes are ``kind: generated``; folders of pairs count as labelled only when some
    pair has a label file; the named public datasets (MFNet, FMB, ...) are labelled.
    """
    found: set[str] = set()

    def visit(part: Any) -> None:
        if not isinstance(part, Mapping):
            return
        kind = part.get("kind")
        if kind == "mix":
            for sub in part.get("parts", []):
                visit(sub)
        elif kind == "generated":
            found.add("generated scenes")
        elif kind in ("real_pairs", "folder", "extract"):
            folders = part.get("folders", [part])
            labelled = sum(int(f.get("labelled", 0) or 0) for f in folders if isinstance(f, Mapping))
            found.add("labelled datasets" if labelled else "real unlabelled pairs")
        elif kind is not None:
            found.add("labelled datasets")

    visit(data.get("train", {}))
    return [d for d in TRAINING_DOMAINS if d in found]


def sidecar_path(weights_path: str | Path) -> Path:
    """The JSON sidecar that belongs to a ``.safetensors`` file."""
    return Path(weights_path).with_suffix(".json")


def _sidecar_text(side: Path, info: WeightsInfo) -> str:
    """The sidecar's JSON text, checked as :func:`read_sidecar` will check it (tuples become lists)."""
    text = json.dumps(info.to_json(), indent=2, sort_keys=True) + "\n"
    WeightsInfo.from_json(json.loads(text), side)
    return text


def write_sidecar(path: str | Path, info: WeightsInfo) -> Path:
    """Write the sidecar of weights file ``path`` atomically (temp file + rename).

    The one writer of sidecars (``save_weights`` and ``scripts/quality_report.py`` both come
    here): ``info`` is checked with the reader's field checks first, so a sidecar that
    :func:`read_sidecar` would refuse is never written.

    Returns:
        The path of the sidecar.

    Raises:
        WeightsError: a field of ``info`` is invalid (naming the sidecar and the field).
    """
    side = sidecar_path(path)
    text = _sidecar_text(side, info)
    side.parent.mkdir(parents=True, exist_ok=True)
    tmp = side.with_name(side.name + ".tmp")
    tmp.write_text(text)
    tmp.chmod(0o644)  # temp files are private; weights are shipped and shared
    tmp.replace(side)
    return side


def _stored(path: Path, state_dict: Mapping[str, torch.Tensor], storage_dtype: str) -> dict[str, torch.Tensor]:
    """The tensors as written: on the CPU, floating ones cast to ``storage_dtype`` when it is
    float16. A value float16 cannot hold is refused here, not found as an inf at load time."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    if storage_dtype == "float32":
        return tensors
    dtype = STORAGE_DTYPES[storage_dtype]
    for name, tensor in tensors.items():
        if tensor.is_floating_point():
            cast = tensor.to(dtype)
            if not bool(torch.isfinite(cast).all()) and bool(torch.isfinite(tensor).all()):
                raise WeightsError(f"{path}: tensor '{name}' holds values beyond the {storage_dtype} range "
                                   f"(max |x| {float(tensor.abs().max()):.3g}); store it as float32")
            tensors[name] = cast
    return tensors


def save_weights(state_dict: Mapping[str, torch.Tensor], path: str | Path, info: WeightsInfo) -> Path:
    """Write ``path`` (.safetensors) and its sidecar, each atomically (temp file + rename).

    Floating tensors are stored as ``info.storage_dtype`` (float16 halves the file; integer
    tensors such as BatchNorm counters are stored as they are).

    Returns:
        The path of the safetensors file.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise WeightsError(f"{path}: engine weights must use the .safetensors suffix")
    _sidecar_text(sidecar_path(path), info)  # refuse a bad sidecar before writing anything
    tensors = _stored(path, state_dict, info.storage_dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": WEIGHTS_FORMAT, "variant": info.variant})
    tmp.chmod(0o644)  # temp files are private; weights are shipped and shared
    write_sidecar(path, info)
    tmp.replace(path)
    return path


def read_sidecar(path: str | Path) -> WeightsInfo:
    """Read and validate the sidecar of a weights file."""
    side = sidecar_path(path)
    if not side.is_file():
        raise WeightsError(
            f"{path}: sidecar {side.name} not found next to the weights; it records the variant, "
            "preset and classes. Export weights with `ivf-train export` or `save_weights`."
        )
    try:
        obj = json.loads(side.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{side}: unreadable sidecar ({exc})") from exc
    return WeightsInfo.from_json(obj, side)


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], WeightsInfo]:
    """Load tensors and sidecar; refuses pickles and reports corrupt files clearly."""
    path = Path(path)
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        raise WeightsError(
            f"{path}: pickled checkpoints ({path.suffix}) are refused because unpickling can run "
            "arbitrary code; convert it to .safetensors with `ivf-train export`."
        )
    try:
        state = read_safetensors(path, what="engine weights")
    except TensorFileNotFoundError as exc:
        raise WeightsError(f"{path}: weights file not found") from exc
    except TensorFileError as exc:
        raise WeightsError(str(exc)) from exc
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise WeightsError(f"{path}: tensor '{name}' holds {bad} NaN or infinite values (a diverged "
                               "training run or a damaged file); these weights would output garbage")
    return state, read_sidecar(path)


def check_expected(path: Path, info: WeightsInfo, *, variant: str | None = None, preset: str | None = None,
                   num_classes: int | None = None) -> None:
    """Raise unless a weights file (``.safetensors`` sidecar or ONNX metadata) is what the caller
    asked for; None (or an empty variant) accepts the file's value.

    Raises:
        WeightsError: naming the file, what it holds and what was requested.
    """
    if variant and variant != info.variant:
        raise WeightsError(
            f"{path} holds weights of variant '{info.variant}' but variant '{variant}' was requested; "
            f"use --variant {info.variant}, weights trained for {variant}, or weights 'none' to run {variant} at "
            "random initialisation (meaningless outputs)"
        )
    if num_classes is not None and num_classes != info.num_classes:
        raise WeightsError(
            f"{path} was trained for {info.num_classes} classes but num_classes={num_classes} was requested"
        )
    if preset is not None and preset != info.preset:
        raise WeightsError(f"{path} holds preset '{info.preset}' weights but preset '{preset}' was requested")


def _check_dtypes(path: Path, state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor],
                  storage_dtype: str) -> dict[str, torch.Tensor]:
    """The tensors to load, in the model's dtypes.

    A file whose sidecar says ``storage_dtype: float16`` had its floating tensors cast down on
    purpose; those are cast back up here. Any other dtype that differs from the model's is
    refused: ``load_state_dict`` would cast it silently (float16 where the sidecar does not say
    so is a file someone edited, and integer weights truncate everything).
    """
    loadable = dict(state)
    for name, tensor in state.items():
        want = expected.get(name)
        if want is None or tensor.dtype == want.dtype:
            continue
        if storage_dtype == "float16" and tensor.dtype == torch.float16 and want.is_floating_point():
            loadable[name] = tensor.to(want.dtype)
            continue
        raise WeightsError(f"{path}: tensor '{name}' is {str(tensor.dtype).removeprefix('torch.')} but the "
                           f"model expects {str(want.dtype).removeprefix('torch.')} (sidecar storage_dtype "
                           f"{storage_dtype}); re-export the weights with `ivf-train export` (it writes the "
                           "model's own dtypes, or float16 with --storage-dtype float16)")
    return loadable


def build_model_from_weights(path: str | Path, *, variant: str | None = None, preset: str | None = None,
                             num_classes: int | None = None, model: nn.Module | None = None,
                             device: str | torch.device = "cpu", **overrides: Any
                             ) -> tuple[nn.Module, WeightsInfo]:
    """The registered model that engine weights hold, with its tensors loaded strictly.

    The variant, preset, class count and constructor arguments come from the sidecar; the
    ImageNet files a model was first initialised from are not needed (the tensors replace them).
    Switches a sidecar predates get the values its weights were built with
    (:func:`~ivf_perception.models.registry.with_legacy_args`).

    Args:
        path: engine weights (``.safetensors`` with its ``.json`` sidecar).
        variant, preset, num_classes: what the caller expects; None accepts the sidecar's. A
            sidecar that says otherwise is an error naming both.
        model: an already built model to load into instead of building one (its ``variant``
            attribute must match the sidecar's).
        device: where the returned model lives (the caller owns the choice).
        **overrides: constructor arguments over the sidecar's that do not change the tensors
            (e.g. ``scan_backend``).

    Returns:
        The model in eval mode and the sidecar.

    Raises:
        WeightsError: the file or sidecar is missing, corrupt or pickled, disagrees with the
            expectations, or its tensors do not fit the model.
    """
    path = Path(path)
    state, info = load_weights(path)
    check_expected(path, info, variant=getattr(model, "variant", None) if model is not None else variant,
                   preset=preset, num_classes=num_classes)
    try:
        net = model if model is not None else build_model(
            info.variant, preset=info.preset, num_classes=info.num_classes,
            **{**with_legacy_args(info.variant, info.preset, without_pretrained_files(info.model_args)),
               **overrides})
    except UnknownModelError as exc:
        raise WeightsError(f"{sidecar_path(path)}: sidecar field 'variant': {exc}") from exc
    except (TypeError, ValueError) as exc:  # an argument or preset the model's constructor refuses
        raise WeightsError(f"{sidecar_path(path)}: sidecar fields 'preset'/'model_args' do not fit "
                           f"{info.variant}: {exc}") from exc
    state = _check_dtypes(path, state, net.state_dict(), info.storage_dtype)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{path} does not fit {info.variant}/{info.preset}: {exc}") from exc
    return net.to(device).eval(), info
