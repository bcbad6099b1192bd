"""mkdocs hook: generate `api.md`, the API reference, from the docstrings of trl-rpo's public modules.

Every name in each module's `__all__` gets a heading, its signature and its docstring, so the reference can
never drift from the code. Docstrings are shown verbatim (they use TRL's docstring style, not Markdown).
"""

from __future__ import annotations

import importlib
import inspect

from mkdocs.structure.files import File

MODULES = (
    "trl_rpo",
    "trl_rpo.losses",
    "trl_rpo.diffusion",
    "trl_rpo.pairing",
    "trl_rpo.rewards",
    "trl_rpo.data",
    "trl_rpo.evaluation",
    "trl_rpo.memory",
    "trl_rpo.shapes",
    "trl_rpo.testing",
)


def _signature(obj) -> str:
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return ""


def _entry(module_name: str, name: str, obj) -> list[str]:
    kind = "class" if inspect.isclass(obj) else "function" if callable(obj) else "constant"
    lines = [f"### `{module_name}.{name}`", "", f"*{kind}*", ""]
    if kind != "constant":
        lines += ["```python", f"{name}{_signature(obj)}", "```", ""]
    doc = inspect.getdoc(obj) if kind != "constant" else None
    if doc:
        lines += ["```text", doc.replace("```", "'''"), "```", ""]
    return lines


def render() -> str:
    lines = ["# API reference", "",
             "Generated from the docstrings at build time (`docs/hooks/api_reference.py`): the names each "
             "module exports in `__all__`.", ""]  # fmt: skip
    documented: set[int] = set()
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        lines += [f"## `{module_name}`", ""]
        summary = (inspect.getdoc(module) or "").split("\n\n")[0]
        if summary:
            lines += [summary.replace("\n", " "), ""]
        for name in sorted(getattr(module, "__all__", [])):
            obj = getattr(module, name)
            if id(obj) in documented and module_name != "trl_rpo" and not isinstance(obj, (str, int, float)):
                lines += [f"- `{name}`: see above", ""]
                continue
            documented.add(id(obj))
            lines += _entry(module_name, name, obj)
    return "\n".join(lines)


def on_files(files, config):
    files.append(File.generated(config, "api.md", content=render()))
    return files
