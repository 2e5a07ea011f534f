"""score_jax: score-based generative modeling with SDEs in JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name="score_jax",
    version="0.1.0",
    description="Score-based generative modeling through SDEs in JAX/Flax: SDEs, losses, samplers, training.",
    packages=find_packages(include=["score_jax", "score_jax.*", "configs", "configs.*"]),  # configs: loadable anywhere
    python_requires=">=3.10",
    # Lower bounds are the versions this code was tested with (CPU, Python 3.11).
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "chex>=0.1.92",
        "numpy>=2.0",
        "absl-py>=2.1",
        "ml-collections>=1.1.0",
        "diffrax>=0.7.2",
        "tqdm>=4.66",
        "tensorboardX>=2.6",  # TensorBoard event files without TensorFlow
        "pillow>=10.0",
        "matplotlib>=3.8",
        "scikit-learn>=1.4",  # ships the embedded 8x8 digits dataset
    ],
    extras_require={
        "test": ["pytest>=8.0", "pytest-xdist>=3.5", "scipy>=1.12", "tensorflow-datasets>=4.9.10", "safetensors>=0.4"],
        # Reading diffusers .safetensors files (score_jax.pretrained); 0.5 MB, no dependencies.
        "pretrained": ["safetensors>=0.4"],
        # data kind "tfds": random access to array_record data via tfds.data_source; no TensorFlow
        # (it brings array-record on Linux, and pyarrow, dm-tree, tensorflow-metadata, ...).
        "tfds": ["tensorflow-datasets>=4.9.10"],
    },
)
