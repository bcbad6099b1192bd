"""Regenerate the README's demo table from a demo run (its `results.json`).

    python examples/shapes/readme_table.py outputs/demo/run-<time>/results.json            # print the table
    python examples/shapes/readme_table.py outputs/demo/run-<time>/results.json --write README.md

`--write` replaces what lies between the README's `<!-- demo-table:start -->` and `<!-- demo-table:end -->` markers
and nothing else.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from trl_rpo.shapes.report import readme_table, splice_readme_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="a demo run's results.json")
    parser.add_argument("--write", type=Path, default=None, help="the README to splice the table into")
    args = parser.parse_args()
    table = readme_table(json.loads(args.results.read_text(encoding="utf-8")))
    if args.write is None:
        print(table)
        return
    args.write.write_text(splice_readme_table(args.write.read_text(encoding="utf-8"), table), encoding="utf-8")
    print(f"wrote the table of {args.results} into {args.write}")


if __name__ == "__main__":
    main()
