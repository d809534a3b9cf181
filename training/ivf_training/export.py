"""Export: a trained model out of its run directory, as engine weights (``.safetensors`` + sidecar).

What the sidecar records comes from the run directory (:mod:`ivf_training.run_dir`): the
resolved configuration as ``recipe``, ``data.json`` as ``data``, the validation metrics of
the checkpoint exported, and the runs it was trained in, followed back through
``model.init_from``, as ``lineage`` (:mod:`ivf_training.lineage`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ivf_perception.engine.weights import WeightsInfo, save_weights, training_domain
from ivf_perception.io.tensor_files import TensorFileError, read_safetensors
from ivf_perception.models import build_model
from ivf_perception.models.registry import pinned_args, without_pretrained_files
from ivf_training.build import resolve_classes
from ivf_training.checkpoint import CheckpointError, load_checkpoint
from ivf_training.config import config_to_dict
from ivf_training.lineage import run_lineage
from ivf_training.objectives import objective_class
from ivf_training.run_dir import read_run_config

__all__ = ["RunWeights", "load_run_weights", "export_engine_weights"]


@dataclass
class RunWeights:
    """A trained model taken out of a run directory, with what its engine-weights sidecar records.

    Attributes:
        model: built from the run's configuration with the checkpoint's weights, on the CPU.
        info: variant, preset, classes, palette, input size, recipe, data, metrics and lineage.
        model_file: the checkpoint file the weights came from.
    """

    model: nn.Module
    info: WeightsInfo
    model_file: Path


def load_run_weights(source: str | Path, *, checkpoint: str | None = None) -> RunWeights:
    """The model of a run directory or checkpoint file, ready to export or evaluate.

    Args:
        source: a run directory, or a model file inside its ``ckpt/`` folder.
        checkpoint: ``best``, ``last`` or ``prev`` when ``source`` is a run directory; default
            ``best`` if it exists, else ``last``.

    With ``ema_decay`` set, ``best`` already holds the averaged weights and ``last``/``prev``
    carry them in their state file: the averaged weights are what this returns. ``info.metrics``
    holds the validation metrics of the checkpoint's best, or its last validation.

    Raises:
        ConfigError: ``source`` is not a run directory.
        CheckpointError: the model file is missing, corrupt, or does not fit the configured model.
    """
    source = Path(source)
    if source.is_file():
        model_file, run_dir = source, source.parent.parent
    else:
        run_dir = source
        tag = checkpoint or ("best" if (run_dir / "ckpt" / "best.safetensors").exists() else "last")
        model_file = run_dir / "ckpt" / f"{tag}.safetensors"
    cfg = read_run_config(run_dir)
    if not model_file.is_file():
        raise CheckpointError(f"no model file {model_file}; train first or choose --checkpoint last")
    if model_file.name.startswith(("last", "prev")):
        model_state, state = load_checkpoint(model_file.parent, model_file.name.split(".")[0])
        if "ema" in state:
            model_state = state["ema"]["weights"]
        metrics = {"step": state["step"], **state["last_val"]}
    else:
        try:
            model_state = read_safetensors(model_file, what="checkpoint model file")
        except TensorFileError as exc:
            raise CheckpointError(str(exc)) from exc
        best_json = model_file.with_suffix(".json")
        best = json.loads(best_json.read_text()) if best_json.is_file() else {}
        metrics = {"step": best.get("step"), **best.get("metrics", {})}
    m = cfg.model
    model_args = without_pretrained_files(m.overrides)  # the trained tensors replace ImageNet files
    model = build_model(m.variant, preset=m.preset, num_classes=m.num_classes, **model_args)
    # Record the architecture switches the family added later, so the weight loader never gives
    # this file the legacy values it gives sidecars written before the switches existed.
    model_args.update(pinned_args(m.variant, model))
    try:
        model.load_state_dict(model_state)  # refuse to export tensors the engine could not load
    except RuntimeError as exc:
        raise CheckpointError(f"{model_file} does not fit {m.variant}/{m.preset}: {exc}") from exc
    classes, palette = resolve_classes(m.num_classes, cfg.data.class_names, cfg.data.palette, cfg.data.kind)
    data_json = run_dir / "data.json"
    data = json.loads(data_json.read_text()) if data_json.is_file() else {}
    info = WeightsInfo(
        variant=m.variant, preset=m.preset, num_classes=m.num_classes, model_args=model_args,
        classes=classes if m.num_classes else [], palette=palette if m.num_classes else [],
        input_size=[cfg.crop, cfg.crop_width or cfg.crop], recipe=config_to_dict(cfg),
        data=data, metrics={"checkpoint": model_file.name, "best_metric": cfg.best_metric, **metrics},
        training_domain=training_domain(data), lineage=run_lineage(run_dir),
    )
    return RunWeights(model.eval(), info, model_file)


def export_engine_weights(source: str | Path, out_path: str | Path, *, checkpoint: str | None = None,
                          storage_dtype: str = "float32") -> Path:
    """Write engine weights (``.safetensors`` + sidecar) from a run directory or checkpoint file.

    Args:
        source: a run directory, or a model file inside its ``ckpt/`` folder.
        out_path: destination ``.safetensors``.
        checkpoint: ``best``, ``last`` or ``prev`` when ``source`` is a run directory; default
            ``best`` if it exists, else ``last``.
        storage_dtype: ``float32`` or ``float16`` (half the file; the loader casts back).

    The sidecar records the variant, preset, classes and palette, ``input_size`` (the training
    crop), ``recipe`` (the resolved configuration), ``data`` (data.json), ``training_domain``
    (its kinds of data), ``storage_dtype``, ``lineage`` (the runs behind it) and ``metrics``
    (see :func:`load_run_weights`, which also says which weights an EMA run exports).

    Raises:
        CheckpointError: besides :func:`load_run_weights`' cases, a run whose objective refuses
            export (:attr:`~ivf_training.objectives.Objective.export_refusal`: MAFS stage I, whose
            fusion and segmentation heads were never trained; export its stage-II run instead).
    """
    run = load_run_weights(source, checkpoint=checkpoint)
    refusal = objective_class(run.info.recipe["loss"]["kind"]).export_refusal
    if refusal:
        raise CheckpointError(f"{source}: {refusal}")
    run.info.storage_dtype = storage_dtype
    return save_weights(run.model.state_dict(), out_path, run.info)
