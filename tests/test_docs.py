"""Every Python example in README.md and docs/*.md runs, and prints what the page shows.

The convention, per page:

- each fenced ```` ```python ```` block runs, in order, in one fresh module
  namespace for the page (so a block can use what an earlier one defined);
- a ```` ```text ```` block directly after a Python block (nothing but blank
  lines between them) is that block's exact standard output, compared line
  by line with trailing whitespace stripped;
- other fences (```` ```py ````, ```` ```pytb ````, ```` ```console ````, ...)
  are shown, never run;
- `<!-- requires: optax, equinox -->` skips the page's examples when a
  library is not installed; `<!-- requires: 8 devices -->` when JAX has
  fewer devices; `<!-- requires: jax >= 0.7 -->` on an older JAX;
- `<!-- compared against: optax 0.2.8 -->` says which release of a library
  the page's shown output comes from (its reports name that release's
  source lines): with another release installed the page's test fails and
  says so, rather than showing a diff of line numbers or passing on a
  page that no longer says what the library does. A page that names a
  library's `file.py:line` must carry the marker for that library.

The code is compiled with the page's path and true line numbers, so a
traceback (and a drift report's `file:line`) points into the Markdown file.
After each page, JAX's configuration (x64 included) and jax_dtypeguard's
defaults are restored.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib
import importlib.metadata
import importlib.util
import inspect
import io
import re
import sys
import textwrap
import types
from pathlib import Path

import jax
import pytest

import jax_dtypeguard as dg

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\s]*)[^`]*$")
_REQUIRES = re.compile(r"<!--\s*requires:\s*(?P<items>.*?)\s*-->")
_DEVICES = re.compile(r"^(?P<count>\d+)\s+devices?$")
_JAX_VERSION = re.compile(r"^jax\s*>=\s*(?P<version>\d+(\.\d+)*)$")
_COMPARED_AGAINST = re.compile(r"<!--\s*compared against:\s*(?P<items>.*?)\s*-->")
_PINNED = re.compile(r"^(?P<name>[\w.-]+)\s+(?P<version>\d+(\.\d+)*)$")
# A library's source line, as drift reports print it: `optax/_src/linesearch.py:1538`.
_LIBRARIES = ("optax", "optimistix", "diffrax", "equinox", "lineax", "flax")
_LIBRARY_LINE = re.compile(rf"\b(?P<name>{'|'.join(_LIBRARIES)})/[\w/]+\.py:\d+")


@dataclasses.dataclass
class Block:
    language: str
    code: str
    line: int  # 1-based line of the first line of code in the page
    expected: str | None = None  # the stdout shown by a following ```text block


def parse(text: str) -> list[Block]:
    """The fenced blocks of a Markdown page, a ```text after a ```python attached to it."""
    blocks: list[Block] = []
    lines = text.splitlines()
    index = 0
    previous_python: Block | None = None
    while index < len(lines):
        match = _FENCE.match(lines[index])
        if match is None:
            if lines[index].strip():
                previous_python = None
            index += 1
            continue
        fence, indent = match["fence"], match["indent"]
        start = index + 1
        end = start
        while end < len(lines) and not (
            lines[end].strip().startswith(fence[0] * len(fence))
            and lines[end].strip().strip(fence[0]) == ""
        ):
            end += 1
        body = lines[start:end]
        code = textwrap.dedent(
            "\n".join(line[len(indent) :] if line.startswith(indent) else line for line in body)
        )
        language = match["info"].lower()
        if language == "text" and previous_python is not None:
            previous_python.expected = code
            previous_python = None
        elif language == "python":
            block = Block(language, code, start + 1)
            blocks.append(block)
            previous_python = block
        else:
            previous_python = None
        index = end + 1
    return blocks


def missing_requirements(text: str) -> list[str]:
    """What the page says it needs and this environment lacks."""
    missing = []
    for match in _REQUIRES.finditer(text):
        for item in filter(None, (part.strip() for part in match["items"].split(","))):
            devices, version = _DEVICES.match(item), _JAX_VERSION.match(item)
            if version is not None:
                if _version(jax.__version__) < _version(version["version"]):
                    missing.append(f"{item} (this is jax {jax.__version__})")
            elif devices is not None:
                if jax.device_count() < int(devices["count"]):
                    missing.append(f"{item} (JAX has {jax.device_count()})")
            elif importlib.util.find_spec(item) is None:
                missing.append(f"the {item} package")
    return missing


def compared_against(text: str) -> dict[str, str]:
    """The library releases a page's output was taken from: name -> version."""
    pinned = {}
    for match in _COMPARED_AGAINST.finditer(text):
        for item in filter(None, (part.strip() for part in match["items"].split(","))):
            found = _PINNED.match(item)
            if found is None:
                raise ValueError(f"'compared against: {item}': expected 'library X.Y.Z'")
            pinned[found["name"]] = found["version"]
    return pinned


def version_mismatches(text: str) -> list[str]:
    """The pinned releases that are not the installed ones (a missing library included)."""
    mismatches = []
    for name, version in compared_against(text).items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = "not installed"
        if installed != version:
            mismatches.append(f"{name} {version} (installed: {installed})")
    return mismatches


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def _normalise(output: str) -> list[str]:
    lines = [line.rstrip() for line in output.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


@contextlib.contextmanager
def _restored_settings():
    jax_values = dict(jax.config.values)
    dg_mode, dg_strict = dg.config._mode, dg.config._strict
    try:
        yield
    finally:
        for name, value in jax_values.items():
            if jax.config.values.get(name) != value:
                with contextlib.suppress(Exception):
                    jax.config.update(name, value)
        dg.config.update(mode=dg_mode, strict=dg_strict)


def _page_id(page: Path) -> str:
    return page.name if page.parent == ROOT else f"docs/{page.name}"


# Warnings that a page's examples raise on purpose (every other warning is an error).
PAGE_WARNINGS = {
    # The page runs Optax's L-BFGS on float16 weights with a float64 loss, to show the
    # drift it reports: Optax's own scatter then writes float64 into float16, which JAX
    # warns about (a FutureWarning).
    "docs/problem.md": ["ignore:scatter inputs have incompatible types:FutureWarning"],
}


def _page_params() -> list:
    return [
        pytest.param(
            page,
            id=_page_id(page),
            marks=[pytest.mark.filterwarnings(f) for f in PAGE_WARNINGS.get(_page_id(page), [])],
        )
        for page in PAGES
    ]


def test_page_warnings_name_existing_pages() -> None:
    assert set(PAGE_WARNINGS) <= {_page_id(page) for page in PAGES}


@pytest.mark.parametrize("page", _page_params())
def test_page(page: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = page.read_text(encoding="utf-8")
    blocks = parse(text)
    if not blocks:
        pytest.skip(f"{_page_id(page)} has no ```python examples")
    missing = missing_requirements(text)
    if missing:
        pytest.skip(f"{_page_id(page)} needs {', '.join(missing)}")
    _fail_on_other_versions(page, text)
    relative = page.relative_to(ROOT).as_posix()
    monkeypatch.chdir(ROOT)
    module = types.ModuleType(f"docs_example_{page.stem.replace('-', '_')}")
    module.__file__ = str(page)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    with _restored_settings():
        for number, block in enumerate(blocks, 1):
            where = f"{relative}:{block.line} (Python block {number})"
            code = compile("\n" * (block.line - 1) + block.code, relative, "exec")
            stdout = io.StringIO()
            try:
                with contextlib.redirect_stdout(stdout):
                    exec(code, module.__dict__)
            except Exception as error:
                raise AssertionError(
                    f"{where} raised {type(error).__name__}; printed so far:\n{stdout.getvalue()}"
                ) from error
            if block.expected is None:
                continue
            got, expected = _normalise(stdout.getvalue()), _normalise(block.expected)
            if got != expected:
                diff = "\n".join(
                    difflib.unified_diff(expected, got, "shown on the page", "printed", lineterm="")
                )
                pytest.fail(
                    f"{where} printed something else than the page shows:\n{diff}", pytrace=False
                )


def _fail_on_other_versions(page: Path, text: str) -> None:
    """Fails where a pinned library is installed in another release. One that is not
    installed leaves nothing to compare: the examples that use it need it (`requires`)."""
    mismatches = [m for m in version_mismatches(text) if not m.endswith("not installed)")]
    if mismatches:
        pytest.fail(
            f"{_page_id(page)} shows output (reports, source lines) of "
            f"{', '.join(mismatches)}: install those releases to check the page, or rerun "
            "its examples with the installed ones and update its output and its "
            "'compared against' marker.",
            pytrace=False,
        )


@pytest.mark.parametrize("page", _page_params())
def test_page_names_the_releases_its_output_shows(page: Path) -> None:
    """Every library whose source lines a page shows is pinned, and the pin is installed."""
    text = page.read_text(encoding="utf-8")
    shown = sorted({match["name"] for match in _LIBRARY_LINE.finditer(text)})
    unpinned = [name for name in shown if name not in compared_against(text)]
    assert not unpinned, (
        f"{_page_id(page)} shows source lines of {', '.join(unpinned)}; add "
        f"<!-- compared against: {', '.join(f'{name} X.Y.Z' for name in unpinned)} --> "
        "naming the releases they come from"
    )
    absent = [m for m in version_mismatches(text) if m.endswith("not installed)")]
    if absent:
        pytest.skip(f"{_page_id(page)} shows output of {', '.join(absent)}: not compared here")
    _fail_on_other_versions(page, text)


def _api_names() -> list[str]:
    api = ROOT / "docs" / "api.md"
    if not api.exists():
        return []
    return re.findall(r"^::: (\S+)$", api.read_text(encoding="utf-8"), flags=re.MULTILINE)


def _resolve(name: str) -> object:
    module_name, _, attribute = name.rpartition(".")
    return getattr(importlib.import_module(module_name), attribute)


def _docstrings(obj: object) -> list[str]:
    """The docstring of `obj` and, for a class, of its public methods and properties."""
    docs = [inspect.getdoc(obj) or ""]
    if inspect.isclass(obj):
        for member_name, member in vars(obj).items():
            if not member_name.startswith("_") and (
                callable(member) or isinstance(member, property)
            ):
                docs.append(inspect.getdoc(member) or "")
    return docs


@pytest.mark.parametrize("name", _api_names())
def test_docstring_examples(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The `!!! Example` blocks of the docstrings the API reference renders run too."""
    module_name = name.rpartition(".")[0]
    if module_name.endswith(".optax") and importlib.util.find_spec("optax") is None:
        pytest.skip(f"{name} needs the optax package")
    obj = _resolve(name)
    blocks = [block for doc in _docstrings(obj) for block in parse(doc)]
    monkeypatch.chdir(ROOT)
    with _restored_settings():
        for number, block in enumerate(blocks, 1):
            stdout = io.StringIO()
            with contextlib.redirect_stdout(stdout):
                exec(compile(block.code, f"<docstring of {name}, example {number}>", "exec"), {})
            if block.expected is not None:
                assert _normalise(stdout.getvalue()) == _normalise(block.expected), name


def test_the_api_reference_lists_the_public_names() -> None:
    """Without names, test_docstring_examples would run nothing and pass."""
    assert "jax_dtypeguard.state_dtype_invariant" in _api_names()


def test_parse_attaches_text_to_the_python_block_before_it() -> None:
    blocks = parse(
        "# t\n\n```python\nprint(1)\n```\n\n```text\n1\n```\n\n```py\nnope\n```\n\n"
        "```python\nx = 2\n```\nprose\n```text\nnot output\n```\n"
    )
    assert [(b.code, b.line, b.expected) for b in blocks] == [
        ("print(1)", 4, "1"),
        ("x = 2", 16, None),
    ]


def test_parse_reads_indented_blocks_inside_admonitions() -> None:
    blocks = parse(
        '!!! Example\n    ```python\n    print("a")\n    ```\n    ```text\n    a\n    ```\n'
    )
    assert [(b.code, b.expected) for b in blocks] == [('print("a")', "a")]


def test_requirements_name_what_is_missing() -> None:
    text = "<!-- requires: json, no_such_module_xyz, 100000 devices, jax >= 0.4, jax >= 99.1 -->"
    assert missing_requirements(text) == [
        "the no_such_module_xyz package",
        f"100000 devices (JAX has {jax.device_count()})",
        f"jax >= 99.1 (this is jax {jax.__version__})",
    ]


def test_compared_against_reads_the_pins_and_names_other_releases() -> None:
    installed = importlib.metadata.version("pytest")
    text = f"<!-- compared against: pytest {installed}, no_such_package_xyz 1.0 -->"
    assert compared_against(text) == {"pytest": installed, "no_such_package_xyz": "1.0"}
    assert version_mismatches(text) == ["no_such_package_xyz 1.0 (installed: not installed)"]
    assert version_mismatches("<!-- compared against: pytest 0.0.1 -->") == [
        f"pytest 0.0.1 (installed: {installed})"
    ]
    with pytest.raises(ValueError, match=re.escape("expected 'library X.Y.Z'")):
        compared_against("<!-- compared against: optax -->")
