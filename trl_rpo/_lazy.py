"""Lazy package attributes (PEP 562): `import trl_rpo` stays fast and silent; a name's module loads on first use.

Importing torch, transformers, diffusers and peft (which pulls bitsandbytes) takes seconds and prints notices; a
package `__init__` that imports them eagerly makes `trl-rpo --help` pay for a trainer it never builds.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package` that import `exports[name]` (a relative module) on first access."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        vars(importlib.import_module(package))[name] = value  # cache: the next access is a plain lookup
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(importlib.import_module(package))) | set(exports))

    return __getattr__, __dir__
