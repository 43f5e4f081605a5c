"""Run a Python script or module as `python SCRIPT ARGS` / `python -m MODULE ARGS` would,
in this process, and give back its exit status."""

from __future__ import annotations

import os
import runpy
import sys
import traceback
import types
from collections.abc import Iterator, Sequence
from contextlib import contextmanager


class ProgramNotFound(Exception):
    """The script or module to run does not exist: bad usage, not the program's failure."""


def find_program(*, script: str | None, module: str | None) -> None:
    """Raises `ProgramNotFound` with what to fix when the script or module is missing."""
    if script is not None and not os.path.exists(script):
        raise ProgramNotFound(f"no such script: {script!r}")
    if module is not None:
        import importlib.util

        try:
            with _on_path(os.getcwd()):
                spec = importlib.util.find_spec(module)
        except (ImportError, ValueError) as error:  # a missing parent package, an empty name
            raise ProgramNotFound(f"cannot find module {module!r}: {error}") from None
        if spec is None:
            raise ProgramNotFound(
                f"no module named {module!r} (looked in the current directory and sys.path)"
            )


def run_program(*, script: str | None, module: str | None, args: Sequence[str]) -> int:
    """Runs `script` (a path) or `module` (a dotted name) as `__main__` with `args` as
    its command-line arguments, and returns the exit status `python` would give.

    As `python` does, `sys.argv` is the script's, the script's directory (for a
    module: the current directory) comes first on `sys.path`, a `SystemExit`
    gives its code, and an uncaught exception is printed with its traceback
    (status 1). `sys.argv` and `sys.path` are restored afterwards.
    """
    saved_argv = sys.argv[:]
    try:
        if script is not None:
            sys.argv = [script, *args]
            directory = os.path.dirname(os.path.abspath(script))
            with _on_path(directory):
                runpy.run_path(script, run_name="__main__")
        else:
            assert module is not None
            sys.argv = [module, *args]  # runpy sets argv[0] to the module's file
            with _on_path(os.getcwd()):
                runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exit:
        return _exit_status(exit.code)
    except KeyboardInterrupt:
        _print_exception(sys.exc_info()[1])
        return 130
    except BaseException as error:  # the program's own failure, reported as python would
        _print_exception(error)
        return 1
    finally:
        sys.argv = saved_argv
    return 0


def _exit_status(code: object) -> int:
    """What `python` exits with for `sys.exit(code)`."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


@contextmanager
def _on_path(directory: str) -> Iterator[None]:
    sys.path.insert(0, directory)
    try:
        yield
    finally:
        try:
            sys.path.remove(directory)
        except ValueError:  # the program removed it itself
            pass


def _print_exception(error: BaseException | None) -> None:
    """The traceback as `python` prints it: from the program's first frame, without
    this runner's and runpy's."""
    if error is None:
        return
    runner = {__name__, runpy.__name__}
    tb: types.TracebackType | None = error.__traceback__
    while tb is not None and tb.tb_frame.f_globals.get("__name__") in runner:
        tb = tb.tb_next
    sys.stderr.write("".join(traceback.format_exception(type(error), error, tb)))
    sys.stderr.flush()
