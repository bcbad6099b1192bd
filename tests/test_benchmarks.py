"""The benchmark scripts: their figures print with every library warning left visible."""

import ast
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))
_SILENCING_LEVELS = {"logging.ERROR", "logging.CRITICAL"}


def _blanket_filters(source: str) -> list[str]:
    """Calls that hide warnings wholesale: an `ignore` filter naming no message, `logging.disable`, a library's
    `set_verbosity_error`, the root logger's (or any logger's) level raised to ERROR."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        owner, name = ast.unparse(node.func.value), node.func.attr
        args = [ast.unparse(a) for a in node.args]
        keywords = {k.arg for k in node.keywords}
        if owner == "warnings" and name == "simplefilter" and "'ignore'" in args:
            found.append(ast.unparse(node))
        elif owner == "warnings" and name == "filterwarnings" and len(args) < 2 and "message" not in keywords:
            found.append(ast.unparse(node))
        elif (owner, name) == ("logging", "disable") or name == "set_verbosity_error":
            found.append(ast.unparse(node))
        elif name == "setLevel" and (owner == "logging.getLogger()" or set(args) & _SILENCING_LEVELS):
            found.append(ast.unparse(node))
    return found


def test_the_blanket_filter_finder_finds_what_it_looks_for():
    assert _blanket_filters("import warnings\nwarnings.filterwarnings('ignore', message='x.*y')") == []
    assert len(_blanket_filters("warnings.filterwarnings('ignore')\nwarnings.simplefilter('ignore')")) == 2
    assert len(_blanket_filters("logging.disable(logging.WARNING)\nlogging.getLogger().setLevel(logging.INFO)")) == 2
    assert len(_blanket_filters("transformers.logging.set_verbosity_error()")) == 1


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda path: path.name)
def test_benchmarks_hide_no_warnings_wholesale(path):
    assert _blanket_filters(path.read_text()) == []
