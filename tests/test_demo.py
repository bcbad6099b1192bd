"""`trl-rpo demo`: every method on the shapes world's base model, end to end."""

import json
import subprocess
import sys

import pytest
from PIL import Image

from trl_rpo.cli import demo_arguments_class
from trl_rpo.shapes.demo import METHODS, DemoConfig, format_table, pair_efficacy, run_demo


def _parse(*argv):
    from trl import TrlParser

    (args,) = TrlParser((demo_arguments_class(),)).parse_args_and_config(args=list(argv))
    return args


def test_quick_preset_keeps_explicit_overrides():
    args = _parse("--quick", "--dpo_steps", "50", "--eval_seeds", "3", "4")
    assert args.quick and args.dpo_steps == 50 and args.eval_seeds == [3, 4] and args.image_budget is None
    config = DemoConfig.quick(dpo_steps=args.dpo_steps, eval_seeds=args.eval_seeds)
    assert config.dpo_steps == 50 and config.eval_seeds == (3, 4)
    assert config.image_budget == DemoConfig.quick().image_budget


def test_demo_help_lists_every_field_with_both_presets(capsys):
    from trl_rpo.cli import main

    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = capsys.readouterr().out
    for name in DemoConfig.__dataclass_fields__:
        assert f"--{name}" in text
    assert "preset: 512; 64 with --quick" in text


def test_bad_budget_is_refused_before_any_model_loads():
    with pytest.raises(ValueError, match="image_budget"):
        DemoConfig(image_budget=1)


def test_demo_refuses_an_output_dir_that_holds_files(tmp_path):
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(FileExistsError, match="not empty"):
        run_demo(DemoConfig.quick(), tmp_path, progress=False)
    assert (tmp_path / "results.json").read_text() == "{}"


def test_pair_efficacy_is_gain_per_pair_and_undefined_without_pairs():
    assert pair_efficacy(0.6, 0.5, 20) == pytest.approx(0.005)
    assert pair_efficacy(0.6, 0.5, 0) is None


def test_table_reports_every_row_and_the_efficacy_ratio():
    rows = [{"method": m, "alignment": 0.5, "alignment_ci": None, "pairs": 1, "seconds": 1.0} for m in METHODS]
    rows[1].update(gain=0.1, distinguishable_from_base=True)
    text = format_table({"rows": rows, "pair_efficacy": {"dpo_reward_pairs": 0.01, "dpo_rpo_pairs": 0.02,
                                                         "rpo_vs_reward_percent": 100.0}})  # fmt: skip
    assert all(m in text for m in METHODS) and "+100.0%" in text and "n/a" in text
    assert "+0.100*" in text


@pytest.mark.slow
def test_trl_rpo_demo_quick_runs_end_to_end_and_writes_results_grid_and_curves(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run([sys.executable, "-m", "trl_rpo.cli", "demo", "--quick", "--output-dir", str(out)],
                            capture_output=True, text=True, timeout=900)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert [row["method"] for row in results["rows"]] == list(METHODS)
    for row in results["rows"]:
        assert 0.0 <= row["alignment"] <= 1.0
        assert row["alignment_ci"] is None or row["alignment_ci"] >= 0
        assert isinstance(row["pairs"], int) and row["seconds"] >= 0
    assert results["rows"][0]["pairs"] == 0
    assert all(row["pairs"] > 0 for row in results["rows"][1:]), results["rows"]
    assert "pair efficacy" in result.stdout and "dpo_rpo_pairs" in result.stdout
    config = DemoConfig.quick()
    grid = Image.open(out / "grid.png")
    assert grid.size[1] >= len(METHODS) * 96 and grid.size[0] >= config.grid_prompts * 96
    assert Image.open(out / "curves.png").size[0] > 0
    assert (out / "rpo_pairs" / "manifest.json").is_file() and (out / "reward_pairs").is_dir()
