"""ivf-perception-training: the offline training package of ivf_perception (``ivf-train``)."""

from setuptools import find_packages, setup

setup(
    name="ivf-perception-training",
    version="0.1.0",
    description="Training, checkpoints and weight export for the ivf_perception fusion+segmentation models",
    packages=find_packages(include=["ivf_training", "ivf_training.*"]),
    python_requires=">=3.10",
    install_requires=[
        "ivf_perception",
        "torch>=2.4",
        "torchvision",
        "timm",  # schedulers and the weight average (ivf_training.schedules, ivf_training.ema)
        "numpy",
        "safetensors",
        "opencv-python-headless",
        "pyyaml",
        "tqdm",
    ],
    extras_require={
        "test": ["pytest"],
        "tensorboard": ["tensorboard"],  # optional: training logs to log.jsonl without it
        "onnx": ["onnx", "onnxscript", "onnxruntime"],  # ivf-train export --onnx
        # ivf-train tesg-guidance: TeSG's Semantic Information Generator (BLIP + Stable Diffusion)
        "tesg-sig": ["transformers", "diffusers"],
    },
    entry_points={"console_scripts": ["ivf-train = ivf_training.cli:main"]},
)
