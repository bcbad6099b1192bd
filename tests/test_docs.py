"""The documentation builds and documents every configuration field."""

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from trl_rpo import BaseDiffusionConfig, DiffusionDPOConfig, DiffusionGRPOConfig, DiffusionNFTConfig, TailorPOConfig

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _own_fields(config_class, base) -> list[str]:
    inherited = {f.name for f in dataclasses.fields(base)}
    return [f.name for f in dataclasses.fields(config_class) if f.name not in inherited or f.name == "learning_rate"]


@pytest.mark.parametrize(
    ("config_class", "base", "page"),
    [
        (BaseDiffusionConfig, BaseDiffusionConfig.__mro__[1], "diffusion_dpo_trainer.md"),
        (DiffusionDPOConfig, BaseDiffusionConfig, "diffusion_dpo_trainer.md"),
        (TailorPOConfig, BaseDiffusionConfig, "tailorpo_trainer.md"),
        (DiffusionGRPOConfig, BaseDiffusionConfig, "grpo_trainer.md"),
        (DiffusionNFTConfig, BaseDiffusionConfig, "nft_trainer.md"),
    ],
)
def test_every_config_field_is_documented_on_its_page(config_class, base, page):
    text = (DOCS / page).read_text()
    missing = [name for name in _own_fields(config_class, base) if f"`{name}`" not in text]
    assert not missing, f"{page} does not document {missing}"


def test_docs_build_without_warnings(tmp_path):
    pytest.importorskip("mkdocs")
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent))
    cmd = [mkdocs] if mkdocs else [sys.executable, "-m", "mkdocs"]
    result = subprocess.run(
        [*cmd, "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,  # mkdocstrings reads every documented module
    )
    assert result.returncode == 0, result.stderr[-3000:]
