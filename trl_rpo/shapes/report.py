"""The demo's results as the README's table, and the splice that puts it there (regenerated, never typed).

`readme_table(results)` formats a demo's `results.json`; `trl-rpo demo` writes it as `readme_table.md` beside
`results.json`, and `splice_readme_table(readme_text, table)` replaces what lies between the README's
`<!-- demo-table:start -->` and `<!-- demo-table:end -->` markers (`examples/shapes/readme_table.py`).
`format_table(results)` is the plain-text table `trl-rpo demo` prints.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["README_END", "README_START", "format_table", "readme_table", "splice_readme_table"]

README_START = "<!-- demo-table:start -->"
README_END = "<!-- demo-table:end -->"


def _interval(value: float, ci: list[float] | None) -> str:
    if ci is None:
        return f"{value:+.3f}"
    text = f"{value:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]"
    return f"**{text}**" if ci[0] > 0 or ci[1] < 0 else text  # bold: the interval excludes zero


def _p(value: float) -> str:
    return f"{value:.2f}" if value >= 0.1 else f"{value:.2g}"


def readme_table(results: dict[str, Any]) -> str:
    """One row per method of a demo's `results.json`: alignment, paired gain with its interval (bold when it excludes
    zero), win rate, p, pairs (images for GRPO / NFT), seconds, gain per minute and the independent judge's gain."""
    judge = results.get("independent_judge", {}).get("methods", {})
    lines = ["| method | alignment | gain vs base [95% CI] | win rate | p | pairs | seconds (build + train) | "
             "gain per minute | judge's gain [95% CI] |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for row in results["rows"]:
        method = row["method"]
        if "gain" not in row:  # the base
            base_judge = judge.get(method, {}).get("judge_alignment")
            note = "" if base_judge is None else f"(judge alignment {base_judge:.3f})"
            lines.append(f"| `{method}` | {row['alignment']:.3f} |  |  |  | 0 | 0 |  | {note} |")
            continue
        pairs = f"({row['images']} images)" if not row.get("pairs") and row.get("images") else str(row["pairs"])
        rate = row.get("gain_per_minute")
        verdict = judge.get(method, {})
        judged = _interval(verdict["judge_gain"], verdict.get("judge_gain_ci")) if "judge_gain" in verdict else ""
        lines.append(f"| `{method}` | {row['alignment']:.3f} | {_interval(row['gain'], row['gain_ci'])} | "
                     f"{row['win_rate']:.2f} | {_p(row['p_value'])} | {pairs} | {row['seconds']:.0f} | "
                     f"{'' if rate is None else f'{rate:+.4f}'} | {judged} |")  # fmt: skip
    # A row sampled at another guidance than the base is also paired with the base sampled alike: the training's
    # share of its gain, without what the guidance alone gives.
    alike = [c for c in results.get("comparisons", []) if c["b"].startswith("base@") and c["prompts"] == "final"]
    if alike:
        lines.append("")
        lines += [f"`{c['a']}` against the base sampled at its guidance {c['b'][len('base@'):]} (`{c['b']}`): "
                  f"{_interval(c['gain'], c['gain_ci'])}, p {_p(c['p_value'])}." for c in alike]  # fmt: skip
    return "\n".join(lines)


def splice_readme_table(readme: str, table: str) -> str:
    """`readme` with the text between `README_START` and `README_END` replaced by `table` (markers kept)."""
    start, end = readme.find(README_START), readme.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"the README needs one {README_START} line followed by one {README_END} line")
    return f"{readme[: start + len(README_START)]}\n{table}\n{readme[end:]}"


def format_table(results: dict[str, Any]) -> str:
    """The results as a plain-text table, with the comparisons and the pair-efficacy line."""

    def interval(ci: Sequence[float] | None) -> str:
        return "" if ci is None else f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"

    lines = [f"{'method':<18} {'alignment':>9} {'gain':>7} {'95% CI (paired)':>18} {'win':>5} {'in-dist gain':>13} "
             f"{'pairs':>6} {'seconds':>8} {'gain/min':>9}"]  # fmt: skip
    for row in results["rows"]:
        gain = f"{row['gain']:+.3f}" if "gain" in row else ""
        mark = "*" if row.get("gain_ci") and (row["gain_ci"][0] > 0 or row["gain_ci"][1] < 0) else " "
        win = f"{row['win_rate']:.2f}" if "win_rate" in row else ""
        in_dist = f"{row['in_distribution_gain']:+.3f}" if "in_distribution_gain" in row else ""
        rate = f"{row['gain_per_minute']:+.4f}" if row.get("gain_per_minute") is not None else ""
        lines.append(
            f"{row['method']:<18} {row['alignment']:>9.3f} {gain:>7} {interval(row.get('gain_ci')):>18}{mark}"
            f"{win:>5} {in_dist:>13} {row['pairs']:>6} {row['seconds']:>8.1f} {rate:>9}"
        )
    for c in results.get("comparisons", []):
        lines.append(
            f"{c['a']} vs {c['b']} ({c['prompts']}): {c['gain']:+.3f} {interval(c['gain_ci'])}, "
            f"win rate {c['win_rate']:.2f}, p = {c['p_value']:.3g}"
        )
    eff = results["pair_efficacy"]

    def fmt(entry: dict[str, Any] | None) -> str:
        if not entry or entry.get("efficacy") is None:
            return "n/a"
        low, high = entry["efficacy_ci"]
        return f"{entry['efficacy']:+.5f} [{low:+.5f}, {high:+.5f}]"

    relative, difference = eff.get("rpo_vs_reward_percent"), eff.get("rpo_minus_reward")
    lines.append(
        f"pair efficacy (gain per pair): RPO pairs {fmt(eff['dpo_rpo_pairs'])}, "
        f"reward pairs {fmt(eff['dpo_reward_pairs'])}"
        + ("" if difference is None else
           f"; RPO - reward {fmt({'efficacy': difference, 'efficacy_ci': eff['rpo_minus_reward_ci']})}")  # fmt: skip
        + ("" if relative is None else f"; RPO {relative:+.0f}% {interval(eff['rpo_vs_reward_percent_ci'])} "
           "(paper: +42%)")  # fmt: skip
    )
    lines.append("* = the paired 95% interval of the gain over base excludes zero (final prompts: held-out scenes; "
                 "one training seed)")
    return "\n".join(lines)
