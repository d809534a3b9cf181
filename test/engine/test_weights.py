"""Engine weight files: round trip, refusal of pickles, mismatches named, corrupt files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ivf_perception.engine import Engine, WeightsError, WeightsInfo, save_weights
from ivf_perception.engine.weights import (
    build_model_from_weights,
    load_weights,
    read_sidecar,
    sidecar_path,
    write_sidecar,
)
from ivf_perception.models import build_model


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    model = build_model("test_s4fusion", num_classes=9)
    for p in model.fusion_head.parameters():
        p.data.normal_(0, 0.3)
    info = WeightsInfo(variant="test_s4fusion", preset="test", num_classes=9,
                       model_args=model.config()["model_args"], classes=[f"c{i}" for i in range(9)],
                       palette=[0x112233] * 9, metrics={"mIoU": 0.5})
    return save_weights(model.state_dict(), tmp_path / "m.safetensors", info)


def test_engine_loads_weights_and_sidecar(weights: Path) -> None:
    eng = Engine("auto", weights=weights, device="cpu")
    assert eng.num_classes == 9 and eng.preset == "test"
    assert eng.class_names[0] == "c0" and eng.palette[0] == 0x112233
    state, _ = load_weights(weights)
    for k, v in eng.model.state_dict().items():
        torch.testing.assert_close(v, state[k])


def test_wrong_variant_is_named(weights: Path) -> None:
    with pytest.raises(WeightsError, match="variant 'test_s4fusion' but variant 's4fusion' was requested"):
        Engine("s4fusion", weights=weights, device="cpu")


def test_wrong_class_count_is_named(weights: Path) -> None:
    with pytest.raises(WeightsError, match="trained for 9 classes but num_classes=5"):
        Engine("auto", weights=weights, num_classes=5, device="cpu")


def test_pickles_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.pth"
    torch.save({"a": torch.zeros(1)}, path)
    with pytest.raises(WeightsError, match="pickled checkpoints"):
        Engine("auto", weights=path, device="cpu")


def test_corrupt_file_is_reported(weights: Path) -> None:
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="corrupt or truncated"):
        Engine("auto", weights=weights, device="cpu")


def test_missing_sidecar_and_bad_format(weights: Path) -> None:
    side = sidecar_path(weights)
    obj = json.loads(side.read_text())
    side.write_text(json.dumps({**obj, "format": "other/9"}))
    with pytest.raises(WeightsError, match="sidecar format"):
        load_weights(weights)
    side.unlink()
    with pytest.raises(WeightsError, match="sidecar m.json not found"):
        load_weights(weights)


def test_state_of_another_shape_is_reported(tmp_path: Path) -> None:
    model = build_model("test_s4fusion", num_classes=9)
    info = WeightsInfo(variant="test_s4fusion", preset="test", num_classes=9,
                       model_args={**model.config()["model_args"], "dims": [16, 32, 64]})
    path = save_weights(model.state_dict(), tmp_path / "x.safetensors", info)
    with pytest.raises(WeightsError, match="does not fit test_s4fusion/test"):
        Engine("auto", weights=path, device="cpu")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="not found"):
        Engine("auto", weights=tmp_path / "none.safetensors", device="cpu")


def test_build_model_from_weights_without_an_engine(weights: Path) -> None:
    model, info = build_model_from_weights(weights)
    assert info.variant == "test_s4fusion" and info.classes[0] == "c0"
    assert model.preset == "test" and model.num_classes == 9 and not model.training
    state, _ = load_weights(weights)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, state[k])
    engine = Engine("auto", weights=weights, device="cpu")
    rgb = torch.rand(1, 3, 32, 32)
    thermal = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(rgb, thermal).fused, engine.model(rgb, thermal).fused)


def test_build_model_from_weights_checks_expectations(weights: Path) -> None:
    with pytest.raises(WeightsError, match="variant 'test_s4fusion' but variant 's4fusion' was requested"):
        build_model_from_weights(weights, variant="s4fusion")
    with pytest.raises(WeightsError, match="holds preset 'test' weights but preset 'small' was requested"):
        build_model_from_weights(weights, preset="small")
    with pytest.raises(WeightsError, match="trained for 9 classes but num_classes=3"):
        build_model_from_weights(weights, num_classes=3)


def test_build_model_from_weights_loads_into_a_given_model(tmp_path: Path) -> None:
    source = build_model("test_s4fusion", num_classes=9)
    info = WeightsInfo(variant=source.variant, preset="test", num_classes=9, model_args=source.config()["model_args"])
    path = save_weights(source.state_dict(), tmp_path / "family.safetensors", info)
    target = build_model("test_s4fusion", num_classes=9)
    model, _ = build_model_from_weights(path, model=target)
    assert model is target
    for k, v in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[k], v)
    with pytest.raises(WeightsError, match="but variant 'cmfs' was requested"):
        build_model_from_weights(path, model=build_model("test_cmfs"))


def test_build_model_from_weights_refuses_pickles_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save({"a": torch.zeros(1)}, path)
    with pytest.raises(WeightsError, match="pickled checkpoints"):
        build_model_from_weights(path)
    with pytest.raises(WeightsError, match="not found"):
        build_model_from_weights(tmp_path / "none.safetensors")


@pytest.mark.parametrize(("data", "expected"), [
    ({"train": {"kind": "generated", "count": 4}}, ["generated scenes"]),
    ({"train": {"kind": "mix", "parts": [
        {"kind": "real_pairs", "folders": [{"labelled": 0, "pairs": 3}], "pairs": 3},
        {"kind": "generated", "count": 4}]}}, ["generated scenes", "real unlabelled pairs"]),
    ({"train": {"kind": "folder", "labelled": 5, "pairs": 5}}, ["labelled datasets"]),
    ({"train": {"kind": "mfnet", "samples": 10}}, ["labelled datasets"]),
    ({}, []),
])
def test_training_domain_names_the_kinds_of_data(data, expected) -> None:
    from ivf_perception.engine.weights import training_domain

    assert training_domain(data) == expected


def test_engine_says_what_the_weights_were_trained_on(tmp_path: Path) -> None:
    model = build_model("test_s4fusion")
    info = WeightsInfo(variant="test_s4fusion", preset="test", num_classes=9,
                       training_domain=["generated scenes", "real unlabelled pairs"])
    path = save_weights(model.state_dict(), tmp_path / "w.safetensors", info)
    engine = Engine("auto", weights=path, device="cpu")
    assert engine.training_domain() == ("generated scenes + real unlabelled pairs; "
                                        "class labels were learnt from synthetic scenes only")
    assert engine.describe()["weights"]["training_domain"] == ["generated scenes", "real unlabelled pairs"]
    assert "random initialisation" in Engine("test_s4fusion", device="cpu").training_domain()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_naming_file_and_tensor(weights: Path, bad: float) -> None:
    state, info = load_weights(weights)
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = state[name].clone()
    state[name].view(-1)[0] = bad
    broken = save_weights(state, weights.with_name("broken.safetensors"), info)
    with pytest.raises(WeightsError, match=rf"broken.safetensors: tensor '{name}' holds 1 NaN or infinite values"):
        Engine("auto", weights=broken, device="cpu")


@pytest.mark.parametrize("dtype", [torch.float64, torch.int32])
def test_weights_of_another_dtype_are_refused_naming_file_and_tensor(weights: Path, dtype: torch.dtype) -> None:
    state, info = load_weights(weights)
    name = next(k for k, v in state.items() if v.dtype == torch.float32)
    state[name] = state[name].to(dtype)
    other = save_weights(state, weights.with_name("other.safetensors"), info)
    expected = str(dtype).removeprefix("torch.")
    with pytest.raises(WeightsError, match=rf"other.safetensors: tensor '{name}' is {expected} but the model "
                                           "expects float32"):
        Engine("auto", weights=other, device="cpu")


@pytest.mark.parametrize(("edit", "field", "problem"), [
    (lambda d: [d], None, "sidecar must be a JSON object, got list"),
    (lambda d: None, None, "sidecar must be a JSON object, got NoneType"),
    (lambda d: {**d, "num_classes": "9"}, "num_classes", "must be an integer in [0, 256]"),
    (lambda d: {**d, "num_classes": True}, "num_classes", "must be an integer in [0, 256]"),
    (lambda d: {**d, "variant": 3}, "variant", "must be a non-empty string"),
    (lambda d: {**d, "preset": None}, "preset", "must be a non-empty string"),
    (lambda d: {**d, "classes": "car"}, "classes", "must be a list of non-empty names"),
    (lambda d: {**d, "model_args": [1]}, "model_args", "must be a JSON object"),
    (lambda d: {**d, "palette": [0x1000000] * 9}, "palette", "palette entry 0 must be an integer 0xRRGGBB"),
    (lambda d: {**d, "palette": "red"}, "palette", "must be a list of 0xRRGGBB integers"),
    (lambda d: {**d, "input_size": [128]}, "input_size", "must be null or [height, width]"),
    (lambda d: {**d, "training_domain": ["the internet"]}, "training_domain", "must be a list of"),
    (lambda d: {**d, "metrics": 0.5}, "metrics", "must be a JSON object"),
    (lambda d: {**d, "quality": [0.7]}, "quality", "must be a JSON object"),
    (lambda d: {**d, "storage_dtype": "bfloat16"}, "storage_dtype", "must be one of 'float32', 'float16'"),
    (lambda d: {**d, "lineage": {"run": "a"}}, "lineage", "must be a list of JSON objects"),
    (lambda d: {**d, "lineage": [{"run": "a"}, "b"]}, "lineage", "must be a list of JSON objects"),
])
def test_malformed_sidecar_is_refused_naming_file_and_field(weights: Path, edit, field, problem) -> None:
    side = sidecar_path(weights)
    side.write_text(json.dumps(edit(json.loads(side.read_text()))))
    with pytest.raises(WeightsError) as err:
        Engine("auto", weights=weights, device="cpu")
    text = str(err.value)
    assert text.startswith(f"{side}: ") and problem in text
    if field is not None:
        assert f"sidecar field '{field}'" in text


def test_unknown_model_arguments_in_the_sidecar_are_refused_naming_the_field(weights: Path) -> None:
    side = sidecar_path(weights)
    doc = json.loads(side.read_text())
    side.write_text(json.dumps({**doc, "model_args": {**doc["model_args"], "no_such_argument": 1}}))
    with pytest.raises(WeightsError, match=r"m.json: sidecar fields 'preset'/'model_args' do not fit "
                                           r"test_s4fusion: .*no_such_argument"):
        Engine("auto", weights=weights, device="cpu")


def test_write_sidecar_round_trips_and_refuses_what_a_reader_would(weights: Path) -> None:
    info = read_sidecar(weights)
    info.quality = {"held_out": {"mIoU": 0.6}}
    info.input_size = (64, 96)  # type: ignore[assignment]  # a tuple is written as the reader's list
    assert write_sidecar(weights, info) == sidecar_path(weights)
    again = read_sidecar(weights)
    assert again.quality == {"held_out": {"mIoU": 0.6}} and again.input_size == [64, 96]
    assert again.classes == info.classes and again.metrics == {"mIoU": 0.5}
    before = sidecar_path(weights).read_text()
    info.num_classes = -1
    with pytest.raises(WeightsError, match=r"m.json: sidecar field 'num_classes' must be an integer"):
        write_sidecar(weights, info)
    assert sidecar_path(weights).read_text() == before  # the old sidecar is untouched
    assert not list(weights.parent.glob("*.tmp"))


def test_save_weights_with_an_invalid_sidecar_writes_nothing(tmp_path: Path) -> None:
    model = build_model("test_s4fusion", num_classes=9)
    info = WeightsInfo(variant="test_s4fusion", preset="test", num_classes=9, training_domain=["the internet"])
    with pytest.raises(WeightsError, match="sidecar field 'training_domain'"):
        save_weights(model.state_dict(), tmp_path / "w.safetensors", info)
    assert list(tmp_path.iterdir()) == []


def test_quality_report_writes_the_sidecar_through_write_sidecar(weights: Path, monkeypatch) -> None:
    import quality_report as module

    import ivf_perception.engine.weights as weights_module

    calls: list[Path] = []
    monkeypatch.setattr(module, "write_sidecar",
                        lambda path, info: calls.append(Path(path)) or weights_module.write_sidecar(path, info))
    module._write_quality(weights, {"device": "cpu", "held_out_generated": {"mIoU": 0.61}})
    assert calls == [weights]
    info = read_sidecar(weights)
    assert info.quality == {"device": "cpu", "held_out_generated": {"mIoU": 0.61}}
    assert info.metrics == {"mIoU": 0.5} and info.palette == [0x112233] * 9  # every other field kept


def test_float16_storage_halves_the_file_and_loads_into_the_float32_model(weights: Path) -> None:
    state, info = load_weights(weights)
    info.storage_dtype = "float16"
    half = save_weights(state, weights.with_name("half.safetensors"), info)
    assert read_sidecar(half).storage_dtype == "float16" and read_sidecar(weights).storage_dtype == "float32"
    stored, _ = load_weights(half)
    assert {v.dtype for v in stored.values() if v.is_floating_point()} == {torch.float16}
    assert 0.45 < half.stat().st_size / weights.stat().st_size < 0.6
    model, _ = build_model_from_weights(half)
    for k, v in model.state_dict().items():
        assert v.dtype == state[k].dtype
        torch.testing.assert_close(v, state[k], atol=1e-7, rtol=2**-10)  # float16 rounding (subnormals: atol)


def test_float16_tensors_without_storage_dtype_are_refused(weights: Path) -> None:
    state, info = load_weights(weights)
    name = next(k for k, v in state.items() if v.dtype == torch.float32)
    state[name] = state[name].half()
    edited = save_weights(state, weights.with_name("edited.safetensors"), info)  # sidecar: float32 storage
    with pytest.raises(WeightsError, match=rf"edited.safetensors: tensor '{name}' is float16 but the model expects "
                                           r"float32 \(sidecar storage_dtype float32\)"):
        build_model_from_weights(edited)


def test_old_sidecars_without_storage_dtype_mean_float32(weights: Path) -> None:
    side = sidecar_path(weights)
    doc = json.loads(side.read_text())
    del doc["storage_dtype"]
    side.write_text(json.dumps(doc))
    assert read_sidecar(weights).storage_dtype == "float32"
    build_model_from_weights(weights)


def test_bad_storage_dtype_is_refused_naming_the_file(weights: Path) -> None:
    state, info = load_weights(weights)
    info.storage_dtype = "int8"
    with pytest.raises(WeightsError, match=r"q.json: sidecar field 'storage_dtype' must be one of 'float32', "
                                           r"'float16', got 'int8'"):
        save_weights(state, weights.with_name("q.safetensors"), info)
    assert not weights.with_name("q.safetensors").exists()


def test_values_beyond_float16_are_refused_at_save(weights: Path) -> None:
    state, info = load_weights(weights)
    name = next(k for k, v in state.items() if v.dtype == torch.float32)
    state[name] = state[name].clone()
    state[name].view(-1)[0] = 1e6
    info.storage_dtype = "float16"
    with pytest.raises(WeightsError, match=rf"big.safetensors: tensor '{name}' holds values beyond the float16 range"):
        save_weights(state, weights.with_name("big.safetensors"), info)
