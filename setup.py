"""trl-rpo: preference optimization for text-to-image diffusion models, in the style of TRL."""

import re
from pathlib import Path

from setuptools import find_namespace_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "trl_rpo" / "__init__.py").read_text()).group(1)

# torch is deliberately a floor, not a pin: install the build that fits your hardware first
# (`make` installs torch==$(TORCH_VERSION) only when `.venv` has no torch: install another build into `.venv`
# first, e.g. `pip install torch --index-url https://download.pytorch.org/whl/cpu`, and make keeps it).
INSTALL_REQUIRES = [
    "torch>=2.4",
    "trl>=1.16",
    "transformers>=5.19",
    "diffusers>=0.42",
    "peft>=0.21",
    "accelerate>=1.15",
    "datasets>=5.2",
    "huggingface_hub>=1.0",
    "safetensors>=0.4",
    "Pillow>=10",
    "numpy>=1.26",
    "pyyaml>=6",
    "scipy>=1.11",  # paired statistics (bootstrap, t-tests) in trl_rpo.evaluation
    "matplotlib>=3.8",  # training curves and gain charts (evaluation.plot_curves / plot_gains, the demo)
    "requests>=2.31",  # RemoteReward's client: pooled connections, urllib3's retry policy (diffusers needs it too)
]

# Extras: what each job needs on top of the runtime. `make demo` installs `demo` only, `make test` installs `dev`.
EXTRAS = {
    "demo": [],  # the shapes-world demo runs on the runtime alone (CPU, offline); the extra names the job
    "openai": ["openai>=2"],  # OpenAICompatibleCritic
    "editors": ["opencv-python-headless>=4.9"],  # canny edges of the ControlNet editor
    "deepspeed": ["deepspeed>=0.19"],
    "bnb": ["bitsandbytes>=0.50"],
    "docs": ["mkdocs>=1.6", "mkdocs-material>=9.5", "mkdocstrings[python]>=0.26"],
    "test": ["pytest>=8"],
    "quality": ["ruff>=0.6"],
}
# dev: every optional part, so the whole suite runs (the optional backends are tested too).
EXTRAS["dev"] = sorted({req for name, reqs in EXTRAS.items() if name != "demo" for req in reqs})

# The shapes world's base model and its independent judge ship with the package, with the configs that made them.
# Their folders hold data only; Python can still import them (as namespace packages), so setuptools wants them listed
# as packages with their files as those packages' data, and warns "Package would be ignored" otherwise.
PACKAGES = find_namespace_packages(include=["trl_rpo", "trl_rpo.*"], exclude=["*.__pycache__"])
CHECKPOINTS = [name for name in PACKAGES if name.startswith(("trl_rpo.shapes.checkpoint", "trl_rpo.shapes.judge_"))]
PACKAGE_DATA = {"trl_rpo.shapes": ["pretrain.yaml"], **{name: ["*"] for name in CHECKPOINTS}}


setup(
    name="trl-rpo",
    version=VERSION,
    description="Rich Preference Optimization, Diffusion-DPO and TailorPO for text-to-image diffusion models",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=PACKAGES,
    include_package_data=True,
    package_data=PACKAGE_DATA,
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["trl-rpo=trl_rpo.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
