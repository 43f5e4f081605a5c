"""The public surface is one list: `__all__`, the lazy exports, the type checkers' imports
and docs/api.md name the same things.

Each list is read from its source, so a new export that misses one of them fails here.
"""

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

import jax_dtypeguard as dg

ROOT = Path(__file__).resolve().parent.parent
INIT = Path(dg.__file__)
API_PAGE = ROOT / "docs" / "api.md"
_ENTRY = re.compile(r"^:::\s+(jax_dtypeguard(?:\.\w+)+)\s*$", re.MULTILINE)
# Not API: the version string is documented by the package metadata.
_UNDOCUMENTED = {"__version__"}


def type_checking_imports() -> dict[str, tuple[str, str | None]]:
    """`{name: (module, attribute)}` of the `if TYPE_CHECKING:` imports in `__init__.py`
    (attribute None for a submodule), as `_EXPORTS` writes them."""
    tree = ast.parse(INIT.read_text())
    block = next(
        node
        for node in tree.body
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
    )
    imports: dict[str, tuple[str, str | None]] = {}
    for node in block.body:
        assert isinstance(node, ast.ImportFrom) and node.level == 1, ast.unparse(node)
        for alias in node.names:
            assert alias.asname == alias.name, f"re-export as itself: {ast.unparse(node)}"
            if node.module is None:  # from . import lax as lax
                imports[alias.name] = (alias.name, None)
            else:
                imports[alias.name] = (node.module, alias.name)
    return imports


def documented() -> list[str]:
    """The `::: jax_dtypeguard.X` entries of docs/api.md."""
    return _ENTRY.findall(API_PAGE.read_text())


def public_modules() -> dict[str, object]:
    """The public submodules that `jax_dtypeguard` exports, and `jax_dtypeguard.optax`."""
    modules = {
        name: getattr(dg, name)
        for name in dg.__all__
        if type(getattr(dg, name)).__name__ == "module"
    }
    modules["optax"] = pytest.importorskip("jax_dtypeguard.optax")
    return modules


def test_all_lists_exactly_the_lazy_exports():
    assert sorted(dg.__all__) == sorted([*dg._EXPORTS, "__version__"])
    assert len(set(dg.__all__)) == len(dg.__all__), "a name listed twice in __all__"
    assert dir(dg) == sorted(dg.__all__)


def test_type_checkers_see_the_lazy_exports():
    assert type_checking_imports() == dg._EXPORTS


@pytest.mark.parametrize("name", sorted(dg._EXPORTS))
def test_each_lazy_export_resolves_to_its_module_attribute(name):
    module_name, attribute = dg._EXPORTS[name]
    module = importlib.import_module(f"jax_dtypeguard.{module_name}")
    expected = module if attribute is None else getattr(module, attribute)
    assert getattr(dg, name) is expected


def test_each_lazy_export_resolves_in_a_fresh_interpreter():
    """Resolving one name first (no other import before it) works for every name."""
    script = (
        "import importlib, sys\n"
        "for name in sys.argv[1:]:\n"
        "    for module in [m for m in sys.modules if m.startswith('jax_dtypeguard')]:\n"
        "        del sys.modules[module]\n"
        "    dg = importlib.import_module('jax_dtypeguard')\n"
        "    assert getattr(dg, name) is not None, name\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, *sorted(dg._EXPORTS)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_unknown_names_raise_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        dg.not_a_name


def test_every_public_name_is_documented():
    entries = set(documented())
    missing = []
    for name in sorted(set(dg.__all__) - _UNDOCUMENTED):
        value = getattr(dg, name)
        if type(value).__name__ == "module":
            continue  # its own names are checked below
        cls = type(value)
        is_instance = not callable(value) and cls.__module__.startswith("jax_dtypeguard")
        if f"jax_dtypeguard.{name}" in entries:
            continue
        if is_instance and f"{cls.__module__}.{cls.__qualname__}" in entries:
            continue  # an instance (`config`) is documented by its class
        missing.append(f"jax_dtypeguard.{name}")
    for module_name, module in public_modules().items():
        for name in getattr(module, "__all__", []):
            if f"jax_dtypeguard.{module_name}.{name}" not in entries:
                missing.append(f"jax_dtypeguard.{module_name}.{name}")
    assert missing == [], f"add `::: NAME` entries to docs/api.md for {missing}"


def test_every_documented_name_is_exported_and_resolves():
    modules = public_modules()
    problems = []
    for entry in documented():
        parts = entry.split(".")[1:]
        value: object = dg
        for part in parts:
            try:
                value = getattr(value, part)
            except AttributeError:
                value = importlib.import_module(f"{value.__name__}.{part}")  # type: ignore[attr-defined]
        first = parts[0]
        if first.startswith("_"):
            # A private class documented for a public instance (`config` is a `Config`).
            exported = any(
                type(getattr(dg, name)) is value for name in dg.__all__ if name in dg._EXPORTS
            )
        elif first in modules and len(parts) == 2:
            exported = parts[1] in getattr(modules[first], "__all__", [])
        else:
            exported = len(parts) == 1 and first in dg.__all__
        if not exported:
            problems.append(entry)
    assert problems == [], f"documented in docs/api.md but not exported: {problems}"
