# Two commands: `make demo` and `make test`. Both create/refresh .venv first (idempotent:
# the stamp file makes a second run install nothing unless a requirements file changed).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ivf-installed
REQS := requirements/runtime.txt requirements/dev.txt requirements/constraints.txt setup.py training/setup.py \
	ivf_perception_msgs/CMakeLists.txt ivf_perception_msgs/package.xml ivf_perception_msgs/msg/FusionStats.msg ivf_perception_msgs/msg/ClassInfo.msg \
	ivf_perception_msgs/install_into_venv.py ivf_perception/models/ops/csrc/selective_scan_cpu.cpp
export AMENT_PREFIX_PATH := $(CURDIR)/$(VENV)
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
export HF_HUB_OFFLINE := 1
PYTEST_ARGS ?=

.PHONY: demo test lint bench venv clean train-default gpu-check train-gpu-default

venv: $(STAMP)

# `pip install -e .` also compiles the fused CPU selective scan (setup.py, in place; optional: without a
# working g++ it prints one line and the models use the chunked scan). The last step builds the ROS
# interface package ivf_perception_msgs/ (FusionStats) with the pip ROS wheels into the venv (needs cmake and g++).
$(STAMP): $(REQS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip<26" "setuptools<80" wheel
	$(PY) -m pip install -q -r requirements/dev.txt -c requirements/constraints.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e . -e training
	$(PY) ivf_perception_msgs/install_into_venv.py --build-dir build/ivf_perception_msgs
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ivf-perception demo --out demo_output

# Both test trees: the robot package's test/ and the training package's training/test/
# (PYTEST_PATHS=test/io runs a part).
PYTEST_PATHS ?= test training/test
test: $(STAMP)
	$(PY) -m pytest $(PYTEST_PATHS) $(PYTEST_ARGS)

bench: $(STAMP)
	$(VENV)/bin/ivf-perception bench

# On a CUDA machine, with the Python that has torch (no .venv needed, installs nothing): gpu tests,
# Triton scan, ONNX Runtime CUDA / TensorRT when present, and the CUDA bench, within ~7 minutes.
# Results in results/gpu_check/<time>/ (git-ignored). GPU_CHECK_ARGS=--dry-run runs on a CPU.
GPU_CHECK_ARGS ?=
gpu-check:
	PYTHONPATH=$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} $(PYTHON) scripts/gpu_check.py $(GPU_CHECK_ARGS)

# ruff (lint + import order) over the whole tree, mypy over the library (settings in pyproject.toml).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# The offset calibration of the CPU default (train-default below): per-class logit offsets fitted
# for mIoU on generated seed 3 (neither a training seed nor a held-out one) and folded into the
# classifier's bias, about 1 minute (README "Bundled weights").
CALIBRATION := --dataset generated -o 'config={seed: 3}' -o count=200 --threads 2

# Reproduce the bundled CPU default (see README, "Bundled weights"): eight stages on 2 CPU cores,
# then the class-offset calibration, the held-out quality report into the sidecar and the contact
# sheet. The GPU default (weights table: s4fusion_gpu_default) is trained by train-gpu-default
# below on a CUDA machine, then copied into ivf_perception/weights/ and reported on here.
DEFAULT_STAGES := s4fusion_generated:s4fusion_default s4fusion_generated_finetune:s4fusion_default_ft \
	s4fusion_default_rare_classes:s4fusion_default_rare s4fusion_default_sharpen:s4fusion_default_sharpen \
	s4fusion_default_polish:s4fusion_default_polish s4fusion_default_fidelity:s4fusion_default_fidelity \
	s4fusion_default_balance:s4fusion_default_balance s4fusion_default_blend:s4fusion_default_blend
train-default: $(STAMP)
	set -e; for stage in $(DEFAULT_STAGES); do \
		$(VENV)/bin/ivf-train run training/recipes/$${stage%%:*}.yaml name=$${stage##*:}; done
	$(VENV)/bin/ivf-train export runs/s4fusion_default_blend --checkpoint last \
		--out ivf_perception/weights/s4fusion_tiny_default.safetensors
	$(VENV)/bin/ivf-train calibrate ivf_perception/weights/s4fusion_tiny_default.safetensors \
		--out ivf_perception/weights/s4fusion_tiny_default.safetensors $(CALIBRATION)
	$(PY) scripts/quality_report.py ivf_perception/weights/s4fusion_tiny_default.safetensors --write-sidecar
	$(PY) scripts/contact_sheet.py --weights ivf_perception/weights/s4fusion_tiny_default.safetensors \
		--out docs/llvip_contact_sheet.jpg

# The GPU default, on a CUDA machine with the Python that has torch (no .venv needed, installs
# nothing; README "GPU default: how to train it"): measures the time per step, trains
# training/recipes/s4fusion_gpu_default.yaml for what fits GPU_DEFAULT_ARGS' --minutes (default 8
# in all), exports float16 s4fusion_gpu_default.safetensors + sidecar to results/gpu_default/<time>/
# (or --out). GPU_DEFAULT_ARGS=--dry-run runs every step on a CPU in seconds.
GPU_DEFAULT_ARGS ?=
train-gpu-default:
	PYTHONPATH=$(CURDIR):$(CURDIR)/training$${PYTHONPATH:+:$$PYTHONPATH} $(PYTHON) scripts/train_gpu_default.py $(GPU_DEFAULT_ARGS)

clean:
	rm -rf $(VENV) demo_output build install log *.egg-info ivf_perception/models/ops/_cpu_scan*.so
