"""``ivf-train eval``: the numbers equal the trainer's validation, for runs and engine weights."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from ivf_training.cli import main
from ivf_training.config import TrainConfig
from ivf_training.evaluate import default_output_path, evaluate
from ivf_training.export import export_engine_weights
from ivf_training.trainer import start_run
from ivf_training.validation import FUSION_EVAL_METRICS

MakeConfig = Callable[..., TrainConfig]
# the validation scenes of make_config: 4 generated 64x80 scenes from index 1 000 000
GENERATED_VAL = ["--dataset", "generated", "-o", "count=4", "-o", "start=1000000",
                 "-o", "config={height: 64, width: 80}"]


@pytest.fixture
def trained(make_config: MakeConfig):  # noqa: ANN201 - a Trainer
    trainer = start_run(make_config("max_steps=3", "val_every=0", "tensorboard=false"))
    trainer.fit()  # validated once, at the end: best == last
    return trainer


def _comparable(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.startswith("loss/")}


def test_eval_cli_equals_training_validation(trained, tmp_path: Path,  # noqa: ANN001
                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "eval.json"
    assert main(["eval", str(trained.run_dir), *GENERATED_VAL, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| mIoU |" in printed and "| IoU car |" in printed and "| VIF |" in printed and f"wrote {out}" in printed
    report = json.loads(out.read_text())
    expected = _comparable(trained.last_val)
    assert {k: report["metrics"][k] for k in expected} == pytest.approx(expected, rel=1e-12)
    assert {f"fusion/{m}" for m in FUSION_EVAL_METRICS} <= set(report["metrics"])  # all eleven at evaluation
    assert report["dataset"]["images"] == 4 and report["weights"].endswith("best.safetensors")
    assert report["model"]["variant"] == "test_training_standin"

    weights = export_engine_weights(trained.run_dir, tmp_path / "w" / "standin.safetensors")
    from_weights = evaluate(weights, "generated", options={"count": 4, "start": 1_000_000,
                                                           "config": {"height": 64, "width": 80}})
    assert _comparable(from_weights.metrics) == report["metrics"]


def test_default_report_paths(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").touch()
    (run / "ckpt").mkdir()
    assert default_output_path(run, "mfnet", "test") == run / "eval" / "mfnet-test.json"
    in_ckpt = run / "ckpt" / "last.safetensors"
    assert default_output_path(in_ckpt, "msrs", "test") == run / "eval" / "last-msrs-test.json"
    assert default_output_path(tmp_path / "w.safetensors", "folder", None) == Path.cwd() / "w.eval-folder.json"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--dataset", "nosuch", "--root", "{tmp}"], "unknown dataset kind 'nosuch'"),
        (["--dataset", "mfnet", "--root", "{tmp}/missing"], "missing does not exist"),
        (["--dataset", "mfnet"], "dataset kind 'mfnet' needs a root folder"),
        (["--dataset", "generated", "-o", "count"], "is not of the form KEY=VALUE"),
    ],
)
def test_eval_user_errors_are_one_line(trained, tmp_path: Path, capsys: pytest.CaptureFixture[str],  # noqa: ANN001
                                       extra: list[str], expected: str) -> None:
    assert main(["eval", str(trained.run_dir), *[a.format(tmp=tmp_path) for a in extra]]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ivf-train: error: ") and expected in err and "\n" not in err
