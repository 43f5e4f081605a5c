"""`jax-dtypeguard audit`: sweep step functions over dtypes, print what drifts;
`jax-dtypeguard recompiles`: run a program and explain why its jitted functions
compiled again."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import IO, Any

from ._columns import DEFAULT_COLUMNS
from ._version import __version__

PROG = "jax-dtypeguard"
DEFAULT_DTYPES = ",".join(DEFAULT_COLUMNS)
_CELL_WIDTH = 32  # a one-mismatch cell longer than this shows a count instead


class _UsageError(Exception):
    """Bad usage: reported as one line on stderr, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, no usage block
        raise _UsageError(f"{message} (see {self.prog} --help)")


_DESCRIPTION = """\
Check that step functions keep their state's types (tree structure, shape,
dtype, weak_type) in every configuration, by abstract evaluation (nothing is
compiled unless --jit is given).

Without a target, audits every installed built-in target: optax (every
transformation Optax exports), optax.contrib, optimistix (every solver's step)
and diffrax (Runge-Kutta steps and step-size controllers); a target whose
library is missing is skipped, with the line that installs it."""

_EPILOG = """\
examples:
  jax-dtypeguard audit
  jax-dtypeguard audit optimistix diffrax --only-drift
  jax-dtypeguard audit optax --dtypes bfloat16 --grads-dtype float32
  jax-dtypeguard audit mypkg.cases:cases --format json --output audit.json

A target module:attribute names an iterable of jax_dtypeguard.testing.Case
(or a function returning one); the module is imported from the current
directory or the installed packages. Packages register more targets under the
entry-point group jax_dtypeguard.audit_targets.

Columns are configurations: a dtype, and float32+x64 (a float32 state with
x64 on); x64 is on in 64-bit columns.

exit status: 0 every case holds, 1 some case drifted (or raised),
2 bad usage (unknown target or dtype, import error, bad option)."""


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Keep the types of JAX state pytrees stable through step functions.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="command", parser_class=_Parser)
    audit = commands.add_parser(
        "audit",
        help="sweep step functions (default: every installed built-in target) over dtypes",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    audit.add_argument(
        "targets",
        nargs="*",
        metavar="TARGET",
        help="a built-in or registered target (optax, optax.contrib, optimistix, diffrax) "
        "or module:attribute naming Cases (default: every registered target)",
    )
    audit.add_argument(
        "--dtypes",
        default=DEFAULT_DTYPES,
        metavar="LIST",
        help=f"comma-separated columns to sweep (default: {DEFAULT_DTYPES})",
    )
    audit.add_argument(
        "--x64",
        choices=("on", "off"),
        default="off",
        help="on: also run every 16/32-bit column with x64 on (default: off, each column as named)",
    )
    audit.add_argument(
        "--only-drift",
        action="store_true",
        help="show only the rows with something to report (drift or error)",
    )
    audit.add_argument(
        "--format",
        choices=("table", "markdown", "json"),
        default="table",
        help="output format (default: table)",
    )
    audit.add_argument(
        "--no-weak-type",
        dest="weak_type",
        action="store_false",
        help="do not count a change of weak_type alone as drift",
    )
    audit.add_argument(
        "--jit",
        action="store_true",
        help="also run each case jitted for 3 steps on real arrays and count its "
        "compilations (traces of the step; more than one is drift)",
    )
    audit.add_argument(
        "--cast",
        action="store_true",
        help='also check that mode="cast" repairs every dtype/weak_type drift found',
    )
    audit.add_argument(
        "--grads-dtype",
        metavar="DTYPE",
        help="Optax targets: gradients (and line-search values) in this dtype, for "
        "mixed precision (default: the params' dtype)",
    )
    audit.add_argument(
        "--output", metavar="FILE", help="write the report to FILE instead of stdout"
    )
    audit.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    _add_recompiles(commands)
    return parser


_RECOMPILES_DESCRIPTION = """\
Run a Python program (a script, or a module with -m) as python would, with
every function that jax.jit compiles watched (eqx.filter_jit and nnx.jit
included, library code too): the watch starts before the program is imported.
At exit, print which functions compiled more than once and why: the call, each
argument leaf whose type changed, and where the change came from."""

_RECOMPILES_EPILOG = """\
examples:
  jax-dtypeguard recompiles train.py --lr 0.1
  jax-dtypeguard recompiles -m mypkg.train --steps 10
  jax-dtypeguard recompiles --max-compiles 1 train.py
  jax-dtypeguard recompiles --format json --output recompiles.json train.py

Options go before SCRIPT (or -m MODULE); every argument after it is the
program's own. The report goes to stderr (the program's stdout stays its own),
or to FILE with --output.

exit status: the program's own (its sys.exit code; 1 on an uncaught exception,
whose traceback is printed), or 1 when --max-compiles was exceeded; 2 on bad
usage (no such script or module, bad option)."""


def _add_recompiles(commands: Any) -> None:
    recompiles = commands.add_parser(
        "recompiles",
        help="run a Python program and explain why its jitted functions compiled again",
        description=_RECOMPILES_DESCRIPTION,
        epilog=_RECOMPILES_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage=f"{PROG} recompiles [options] (SCRIPT | -m MODULE) [ARGS ...]",
        allow_abbrev=False,  # the program's arguments start at the first non-option
    )
    recompiles.add_argument(
        "script", nargs="?", metavar="SCRIPT", help="the Python file to run, as python SCRIPT"
    )
    recompiles.add_argument(
        "-m", dest="module", metavar="MODULE", help="run a module, as python -m MODULE"
    )
    recompiles.add_argument(
        "args", nargs="*", metavar="ARGS", help="the program's own arguments (its sys.argv[1:])"
    )
    recompiles.add_argument(
        "--max-compiles",
        type=_positive_int,
        metavar="N",
        help="fail (RecompileError at the call, exit status 1) when any one function "
        "compiles more than N times",
    )
    recompiles.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="the report's format (default: text)",
    )
    recompiles.add_argument(
        "--output", metavar="FILE", help="write the report to FILE instead of stderr"
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of compiles >= 1, got {text!r}")
    return value


_RECOMPILES_VALUED = ("--max-compiles", "--format", "--output")


def _split_program(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """`recompiles`'s own options (up to and including SCRIPT or -m MODULE) and the
    program's arguments (everything after), as python splits its command line."""
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--":  # the next argument is the script, even if it starts with "-"
            return list(args[: index + 2]), list(args[index + 2 :])
        if arg == "-m":
            return list(args[: index + 2]), list(args[index + 2 :])
        if arg.startswith("-m") and not arg.startswith("--"):  # -mpackage.module
            return list(args[: index + 1]), list(args[index + 1 :])
        if arg in _RECOMPILES_VALUED:
            index += 2
        elif arg.startswith("-"):
            index += 1
        else:
            return list(args[: index + 1]), list(args[index + 1 :])
    return list(args), []


# --- rendering ------------------------------------------------------------

_ROOT = re.compile(r"^[A-Za-z_]\w*")
_LEADING_INDEX = re.compile(r"^(\[\d+\])+\.?")
_SIGNATURE = re.compile(r"^(weak )?([A-Za-z0-9_]+)\[([^\]]*)\]")


def _short_path(path: str) -> str:
    rest = _ROOT.sub("", path, count=1)
    rest = _LEADING_INDEX.sub("", rest).lstrip(".")
    return rest or path


def _short_dtype(name: str) -> str:
    for long, short in (("bfloat", "bf"), ("float", "f"), ("uint", "u"), ("int", "i")):
        if name.startswith(long) and name[len(long) :].isdigit():
            return short + name[len(long) :]
    if name.startswith("complex") and name[7:].isdigit():
        return "c" + name[7:]
    return name


def _change(kind: str, expected: str, got: str) -> str:
    a, b = _SIGNATURE.match(expected), _SIGNATURE.match(got)
    if a is None or b is None:
        return ""
    if kind == "dtype":
        return f" {_short_dtype(a.group(2))}->{_short_dtype(b.group(2))}"
    if kind == "weak_type":
        return f" {'weak' if a.group(1) else 'strong'}->{'weak' if b.group(1) else 'strong'}"
    if kind == "shape":
        return f" [{a.group(3)}]->[{b.group(3)}]"
    return ""


def summary(result: Any) -> str:
    """A table cell: `ok`, `skipped`, `error`, or what drifted in a few words."""
    if result.status in ("skipped", "error"):
        return result.status
    parts = []
    mismatches = result.mismatches
    one = ""
    if len(mismatches) == 1:
        (m,) = mismatches
        one = f"{m.kind}: {_short_path(m.path)}{_change(m.kind, m.expected, m.got)}"
    if one and len(one) <= _CELL_WIDTH:
        parts.append(one)
    elif mismatches:
        counts: dict[str, int] = {}
        for m in mismatches:
            counts[m.kind] = counts.get(m.kind, 0) + 1
        parts.append(", ".join(f"{n} {kind}" for kind, n in counts.items()))
    if result.compiles is not None and result.compiles > 1:
        parts.append(f"{result.compiles} compiles")
    if result.cast_left is not None:
        from ._errors import CASTABLE_KINDS  # here: it starts JAX, which --help does without

        left = [m for m in result.cast_left if m.kind in CASTABLE_KINDS]
        if not result.cast_left:
            parts.append("cast fixes")
        elif left:
            parts.append(f"cast leaves {len(left)}")
        else:
            parts.append("cast cannot")
    return "; ".join(parts) or "ok"


def _rows(results: Sequence[Any], dtypes: Sequence[str]) -> list[tuple[str, list[Any]]]:
    """Results grouped into rows of len(dtypes), in order."""
    width = len(dtypes)
    return [(results[i].name, list(results[i : i + width])) for i in range(0, len(results), width)]


def _lines(text: str) -> list[str]:
    """A possibly multi-line message as lines, continuation lines indented."""
    first, *rest = [line for line in text.splitlines() if line.strip()] or [""]
    return [first, *(f"  {line}" for line in rest)]


def _details(results: Sequence[Any], dtypes: Sequence[str]) -> list[tuple[str, list[str]]]:
    """Per row, the columns that share one report, and that report's lines."""
    blocks = []
    for name, row in _rows(results, dtypes):
        groups: dict[tuple[str, ...], list[str]] = {}
        for result in row:
            warned = getattr(result, "warnings", None) or []
            if result.status == "ok" and not result.reason and not warned:
                continue
            lines = [f"{m}  [{m.kind}]" for m in result.mismatches]
            if result.status in ("skipped", "error"):
                lines += _lines(f"{result.status}: {result.reason}")
            elif result.reason:
                lines += _lines(f"note: {result.reason}")
            if result.cast_left:
                lines += [f"after cast: {m}  [{m.kind}]" for m in result.cast_left]
            lines += [f"warning: {w}" for w in warned]
            groups.setdefault(tuple(lines), []).append(_column(result))
        for lines, group in groups.items():
            where = "all columns" if len(group) == len(dtypes) > 1 else ", ".join(group)
            blocks.append((f"{name} ({where})", list(lines)))
    return blocks


def _column(result: Any) -> str:
    return getattr(result, "column", result.dtype)


def next_step(results: Sequence[Any]) -> str:
    """One line under the table: what to do about what the audit found."""
    statuses = {r.status for r in results}
    if "drift" in statuses:
        return (
            "Next step: guard what drifts with jax_dtypeguard.optax.invariant(tx) "
            '(optimizers) or @state_dtype_invariant(mode="cast") (step functions); '
            "report a library's drift upstream with its --format json entry."
        )
    if "error" in statuses:
        return (
            "Next step: the errors above were raised by the cases themselves; fix the "
            "case (or report the library's error upstream with the --format json entry)."
        )
    return "Next step: nothing drifts; run this audit in CI to keep it so."


def _totals(results: Sequence[Any], dtypes: Sequence[str]) -> str:
    counts = {status: 0 for status in ("ok", "drift", "skipped", "error")}
    for result in results:
        counts[result.status] += 1
    cases = len(results) // max(len(dtypes), 1)
    rows = f"{cases} case{'' if cases == 1 else 's'}"
    columns = f"{len(dtypes)} column{'' if len(dtypes) == 1 else 's'}"
    return f"{rows} x {columns}: " + ", ".join(f"{n} {status}" for status, n in counts.items())


def _shown(results: Sequence[Any], dtypes: Sequence[str], only_drift: bool) -> list[Any]:
    """The results of the rows to show: all, or those with a drift or an error."""
    if not only_drift:
        return list(results)
    return [
        r
        for _, row in _rows(results, dtypes)
        if any(x.status in ("drift", "error") for x in row)
        for r in row
    ]


def render_table(results: Sequence[Any], dtypes: Sequence[str], only_drift: bool = False) -> str:
    """The plain-text table, its details, a totals line and the next step."""
    shown = _shown(results, dtypes, only_drift)
    header = ["case", *dtypes]
    body = [[name, *(summary(r) for r in row)] for name, row in _rows(shown, dtypes)]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in [header, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    details = _details(shown, dtypes)
    if details:
        lines += ["", "Details:"]
        for title, block in details:
            lines.append(f"{title}:")
            lines += [f"  {line}" for line in block]
    lines += ["", _totals(results, dtypes), next_step(results)]
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(
    results: Sequence[Any],
    dtypes: Sequence[str],
    only_drift: bool = False,
    versions: dict[str, str] | None = None,
) -> str:
    """A GitHub-flavoured Markdown table, then the details as lists, the totals,
    the versions audited and the next step."""
    shown = _shown(results, dtypes, only_drift)
    lines = [
        "| case | " + " | ".join(dtypes) + " |",
        "| --- |" + " --- |" * len(dtypes),
    ]
    for name, row in _rows(shown, dtypes):
        cells = [_md(f"`{name}`")] + [_md(summary(r)) for r in row]
        lines.append("| " + " | ".join(cells) + " |")
    details = _details(shown, dtypes)
    if details:
        lines += ["", "### Details", ""]
        for title, block in details:
            lines.append(f"- **{_md(title)}**")
            lines += [f"  - `{line}`" for line in block]
    lines += ["", _totals(results, dtypes) + "."]
    if versions:
        audited = ", ".join(f"{name} {version}" for name, version in versions.items())
        lines += ["", f"Audited with {audited}."]
    lines += ["", next_step(results)]
    return "\n".join(lines) + "\n"


def render_json(results: Sequence[Any], versions: dict[str, str] | None = None) -> str:
    """The JSON document: `{"jax_dtypeguard": VERSION, "versions": {...}, "cases": [...]}`."""
    cases = [
        {
            "name": r.name,
            "dtype": r.dtype,
            "x64": bool(getattr(r, "x64", False)),
            "status": r.status,
            "reason": r.reason,
            "mismatches": [
                {
                    "path": m.path,
                    "kind": m.kind,
                    "expected": m.expected,
                    "got": m.got,
                    "origin": None if m.origin is None else str(m.origin),
                }
                for m in r.mismatches
            ],
            "compiles": r.compiles,
            "warnings": list(getattr(r, "warnings", None) or []),
        }
        for r in results
    ]
    document = {"jax_dtypeguard": __version__, "versions": versions or {}, "cases": cases}
    return json.dumps(document, indent=2) + "\n"


def _print_rich_table(
    results: Sequence[Any], dtypes: Sequence[str], stream: IO[str], only_drift: bool = False
) -> None:
    from rich.console import Console
    from rich.table import Table

    everything, results = results, _shown(results, dtypes, only_drift)
    styles = {"ok": "green", "drift": "red", "skipped": "dim", "error": "yellow"}
    table = Table(header_style="bold")
    table.add_column("case", no_wrap=True)
    for dtype in dtypes:
        table.add_column(dtype)
    for name, row in _rows(results, dtypes):
        table.add_row(name, *(f"[{styles[r.status]}]{summary(r)}[/]" for r in row))
    console = Console(file=stream, highlight=False)
    console.print(table)
    details = _details(results, dtypes)
    if details:
        console.print("\n[bold]Details:[/]")
        for title, block in details:
            console.print(f"[bold]{title}[/]:", markup=True)
            for line in block:
                console.print(f"  {line}", markup=False, soft_wrap=True)
    console.print("\n" + _totals(everything, dtypes), markup=False)
    console.print(next_step(everything), markup=False)


# --- progress -------------------------------------------------------------


def _progress(enabled: bool) -> Any:
    """A context manager yielding a `progress(done, total, label)` callback or None."""
    import contextlib

    if not enabled:
        return contextlib.nullcontext(None)
    try:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )
    except ImportError:
        return contextlib.nullcontext(_plain_progress)

    @contextlib.contextmanager
    def bar() -> Any:
        from rich.console import Console

        with Progress(
            TextColumn("auditing"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=Console(file=sys.stderr),
            transient=True,
        ) as progress:
            task = progress.add_task("", total=None)

            def update(done: int, total: int, label: str) -> None:
                progress.update(task, completed=done, total=total, description=label)

            yield update

    return bar()


def _plain_progress(done: int, total: int, label: str) -> None:
    end = "\n" if done == total else ""
    sys.stderr.write(f"\rauditing {done}/{total} {label[:50]:<50}{end}")
    sys.stderr.flush()


# --- the command ----------------------------------------------------------


def _columns(text: str, x64: bool, columns: Callable[..., Any]) -> list[Any]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise _UsageError("--dtypes needs at least one dtype name")
    return columns(names, x64)


_OPTAX_TARGETS = ("optax", "optax.contrib")


def _audit(options: argparse.Namespace) -> int:
    from . import _audit

    try:
        columns = _columns(options.dtypes, options.x64 == "on", _audit.columns)
        grads_dtype = options.grads_dtype and _audit.check_dtype(options.grads_dtype)
        if grads_dtype and options.targets and not set(_OPTAX_TARGETS) & set(options.targets):
            raise _UsageError(
                "--grads-dtype applies to the 'optax' and 'optax.contrib' targets only; "
                "build mixed-precision arguments in your Cases' make_args"
            )
        output = None
        if options.output:
            try:
                output = open(options.output, "w", encoding="utf-8")  # noqa: SIM115
            except OSError as error:
                raise _UsageError(f"cannot write --output {options.output}: {error}") from None
        _import_from_cwd()
        items, libraries = _audit.load_targets(options.targets, grads_dtype)
    except _audit.UsageError as error:
        raise _UsageError(str(error)) from None
    labels = [column.label for column in columns]
    stream = output or sys.stdout
    show_progress = options.format != "json" and sys.stderr.isatty()
    try:
        with _progress(show_progress) as progress:
            results = _audit.audit(
                items,
                columns,
                weak_type=options.weak_type,
                jit=options.jit,
                cast=options.cast,
                grads_dtype=grads_dtype,
                progress=progress,
            )
        if options.format == "json":
            stream.write(render_json(results, _audit.library_versions(libraries)))
        elif options.format == "markdown":
            versions = _audit.library_versions(libraries)
            stream.write(render_markdown(results, labels, options.only_drift, versions))
        elif output is None and stream.isatty() and _has_rich():
            _print_rich_table(results, labels, stream, options.only_drift)
        else:
            stream.write(render_table(results, labels, options.only_drift))
    finally:
        if output is not None:
            output.close()
    return 1 if _audit.failed(results) else 0


def _recompiles(options: argparse.Namespace) -> int:
    from . import _program

    if (options.script is None) == (options.module is None):
        raise _UsageError("give the program to run: a SCRIPT or -m MODULE")
    try:
        _program.find_program(script=options.script, module=options.module)
    except _program.ProgramNotFound as error:
        raise _UsageError(str(error)) from None
    output = None
    if options.output:
        try:
            output = open(options.output, "w", encoding="utf-8")  # noqa: SIM115
        except OSError as error:
            raise _UsageError(f"cannot write --output {options.output}: {error}") from None
    # Imported only now: JAX starts with the program, not with a usage error.
    from . import explain_recompiles

    try:
        with explain_recompiles(max_compiles=options.max_compiles, quiet=True) as report:
            status = _program.run_program(
                script=options.script, module=options.module, args=options.args
            )
        text = report.to_json() if options.format == "json" else str(report)
        stream = output or sys.stderr
        stream.write(text if text.endswith("\n") else text + "\n")
        stream.flush()
    finally:
        if output is not None:
            output.close()
    return 1 if report.exceeded else status


def _import_from_cwd() -> None:
    """Puts the current directory on `sys.path`, so that a `module:attribute`
    target imports from it (as `python -m` would; the console script does not)."""
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())


def _has_rich() -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """Runs `jax-dtypeguard` with `argv` (default: the process's arguments).

    **Arguments:**

    - `argv`: the command-line arguments, without the program name.

    **Returns:**

    The exit status. `audit`: 0 when every case holds, 1 when some case
    drifted. `recompiles`: the program's own status, or 1 when
    `--max-compiles` was exceeded. Both: 2 on bad usage (reported as one line
    on stderr).
    """
    parser = _parser()
    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        if argv[:1] == ["recompiles"]:
            own, program = _split_program(argv[1:])
            options = parser.parse_args(["recompiles", *own])
            options.args = program
            return _recompiles(options)
        options = parser.parse_args(argv)
        if options.command is None:
            parser.print_help(sys.stderr)
            return 2
        return _audit(options)
    except _UsageError as error:
        sys.stderr.write(f"{PROG}: error: {error}\n")
        return 2
    except SystemExit as exit:  # --help, --version
        return exit.code if isinstance(exit.code, int) else 0
