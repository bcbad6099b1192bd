"""What `pip install` / `make` build: the package with the shapes world's checkpoints, quietly."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPES = Path("trl_rpo") / "shapes"


def test_building_ships_every_checkpoint_file_without_setuptools_warnings(tmp_path):
    # `build_py` is the step of every install that copies packages and their data (and where setuptools warns about
    # folders it "would ignore"); run into a temporary folder, it leaves the source tree as it was.
    result = subprocess.run([sys.executable, "setup.py", "build_py", "--build-lib", str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Warning" not in result.stdout + result.stderr, result.stderr[-3000:]

    def checkpoint_files(root: Path) -> set[str]:
        folders = [root / SHAPES / "checkpoint", root / SHAPES / "judge_checkpoint"]
        return {p.relative_to(root).as_posix() for folder in folders for p in folder.rglob("*") if p.is_file()}

    source = checkpoint_files(ROOT)
    assert any(name.endswith("diffusion_pytorch_model.safetensors") for name in source)
    assert checkpoint_files(tmp_path) == source
    assert (tmp_path / SHAPES / "pretrain.yaml").is_file()
