"""`trl-rpo study`'s reports: the plain-text summary of its comparisons and its two figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["ENDPOINTS", "format_summary", "write_figures"]

# Scored per image; the first is the primary endpoint.
ENDPOINTS = ("alignment_score", "judge_alignment", "judge_strict")


def format_summary(study: dict[str, Any]) -> str:
    """The comparisons of every endpoint as plain-text lines, primary first."""
    lines = []
    for endpoint, rows in study["comparisons"].items():
        lines.append(f"{endpoint} ({'primary' if endpoint == ENDPOINTS[0] else 'secondary'} endpoint):")
        for row in rows:
            low, high = row["ci"]
            mark = "*" if row["reject_holm"] else " "
            lines.append(f"  {row['comparison']:<36} {row['gain']:+.4f} [{low:+.4f}, {high:+.4f}] p = "
                         f"{row['p_value']:.3g}, Holm p = {row['p_holm']:.3g}{mark} ({row['role']})")  # fmt: skip
    if study.get("gain_per_minute"):
        lines.append(f"gain over base per training minute ({ENDPOINTS[0]}, pair building included, mean over seeds):")
    for method, entry in study.get("gain_per_minute", {}).items():
        rate = "n/a" if entry["gain_per_minute"] is None else f"{entry['gain_per_minute']:+.5f}"
        lines.append(f"  {method:<28} {rate} (SE {entry['gain_per_minute_se']}) over {entry['minutes']:.1f} min")
    agree = study["agreement_on_base_images"]
    lines.append(f"judges agree on base images: same score {agree['same_score']:.2f}, same strict verdict "
                 f"{agree['same_strict']:.2f}, score correlation {agree['score_correlation']}")  # fmt: skip
    lines.append("* = rejected after Holm's correction over the declared family (per endpoint)")
    return "\n".join(lines)


def write_figures(study: dict[str, Any], output_dir: Path) -> None:
    """`per_seed_gains.png` (each training seed's gain per comparison) and `forest.png` (gains with intervals)."""
    from matplotlib.figure import Figure

    rows = study["comparisons"]["alignment_score"]
    figure = Figure(figsize=(max(5.0, 1.2 * len(rows) + 2), 3.8), layout="constrained")
    ax = figure.subplots()
    for k, row in enumerate(rows):
        ax.scatter([k] * len(row["per_seed"]), row["per_seed"], color=f"C{k}", alpha=0.7, s=18)
        ax.errorbar([k], [row["gain"]], yerr=[[row["gain"] - row["ci"][0]], [row["ci"][1] - row["gain"]]],
                    fmt="D", color="black", capsize=4)  # fmt: skip
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(rows)), [r["comparison"] for r in rows], rotation=25, ha="right", fontsize="small")
    ax.set_ylabel("gain (alignment_score)")
    ax.set_title("per training seed (dots), mean and 95% interval (diamond)")
    ax.grid(axis="y", alpha=0.3)
    figure.savefig(output_dir / "per_seed_gains.png", dpi=110)

    figure = Figure(figsize=(9.0, 0.4 * len(rows) * len(ENDPOINTS) + 1.5), layout="constrained")
    ax = figure.subplots()
    labels, y = [], 0
    for e, endpoint in enumerate(ENDPOINTS):
        for row in study["comparisons"][endpoint]:
            ax.errorbar([row["gain"]], [y], xerr=[[row["gain"] - row["ci"][0]], [row["ci"][1] - row["gain"]]],
                        fmt="o", mfc=f"C{e}" if row["reject_holm"] else "white",
                        color=f"C{e}", capsize=3)  # fmt: skip
            labels.append(f"{row['comparison']} [{endpoint}]" + (" (primary)" if row["role"] == "primary" else ""))
            y -= 1
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_yticks(range(0, y, -1), labels, fontsize="x-small")
    ax.set_xlabel("gain, 95% interval (filled: rejected after Holm)")
    ax.grid(axis="x", alpha=0.3)
    figure.savefig(output_dir / "forest.png", dpi=110)
