"""Configuration: config.update, environment variables, scoped strict()/mode(), strict semantics."""

import asyncio
import os
import subprocess
import sys
import textwrap
import threading

import jax
import jax.numpy as jnp
import pytest
from conftest import VECTOR_F16, WEAK_F32

import jax_dtypeguard as dg
from jax_dtypeguard import StateDtypeError, _config, state_dtype_invariant


@pytest.fixture(autouse=True)
def _defaults():
    """Each test starts from the documented defaults, whatever the session set (a marker's
    scope or --dtypeguard-strict), and restores them."""
    saved = (_config.config._mode, _config.config._strict)
    _config.config.update(mode="check", strict=False)
    tokens = [_config._mode_override.set(None), _config._strict_override.set(None)]
    try:
        yield
    finally:
        _config._strict_override.reset(tokens.pop())
        _config._mode_override.reset(tokens.pop())
        _config.config.update(mode=saved[0], strict=saved[1])


def drift(state):
    return state * jnp.float32(2)  # float16 -> float32


def weak_drift(state):
    return state + jnp.float32(1)  # weak float32 -> strong float32


# --- config.update ----------------------------------------------------------


def test_defaults_and_repr():
    assert dg.config.mode == "check"
    assert dg.config.strict is False
    assert repr(dg.config) == "Config(mode='check', strict=False, loops='off')"


def test_update_sets_mode_and_strict_and_accepts_jax_positional_form():
    dg.config.update(mode="cast", strict=True)
    assert (dg.config.mode, dg.config.strict) == ("cast", True)
    dg.config.update("mode", "warn")
    dg.config.update("strict", False)
    assert (dg.config.mode, dg.config.strict) == ("warn", False)
    dg.config.update()  # nothing to change
    assert (dg.config.mode, dg.config.strict) == ("warn", False)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (
            {"mode": "loud"},
            ValueError,
            "mode must be one of 'check', 'cast', 'warn', 'off'; got 'loud'",
        ),
        ({"mode": "CAST"}, ValueError, "got 'CAST'"),
        ({"mode": 1}, TypeError, "mode must be one of .*; got int 1"),
        ({"strict": 1}, TypeError, r"strict must be True or False; got int 1\."),
        ({"strict": "yes"}, TypeError, "strict must be True or False; got str 'yes'"),
    ],
)
def test_update_rejects_bad_values_and_changes_nothing(kwargs, error, match):
    with pytest.raises(error, match=match):
        dg.config.update(**{"mode": "cast", "strict": True, **kwargs})
    assert (dg.config.mode, dg.config.strict) == ("check", False)


def test_update_rejects_unknown_settings():
    with pytest.raises(
        ValueError, match="no setting 'verbose'; the settings are 'mode', 'strict' and 'loops'"
    ):
        dg.config.update("verbose", True)
    with pytest.raises(TypeError, match=r"keyword arguments .* or one \(name, value\) pair"):
        dg.config.update("mode")
    with pytest.raises(TypeError, match="unexpected keyword argument 'verbose'"):
        dg.config.update(verbose=True)


def test_attributes_cannot_be_assigned():
    with pytest.raises(
        AttributeError, match=r"config.mode cannot be assigned; use .*update\(mode=...\)"
    ):
        dg.config.mode = "cast"
    with pytest.raises(AttributeError, match=r"update\(strict=...\)"):
        dg.config.strict = True
    assert dg.config.mode == "check"


# --- scopes -----------------------------------------------------------------


def test_scopes_nest_and_restore_including_on_error():
    dg.config.update(mode="warn")
    with dg.mode("cast"):
        assert dg.config.mode == "cast"
        with dg.mode("off"), dg.strict():
            assert (dg.config.mode, dg.config.strict) == ("off", True)
            with dg.strict(False):
                assert dg.config.strict is False
            assert dg.config.strict is True
        assert (dg.config.mode, dg.config.strict) == ("cast", False)
        with pytest.raises(KeyError), dg.mode("check"):
            raise KeyError
        assert dg.config.mode == "cast"
        dg.config.update(mode="check")  # the global default changes; the scope still wins
        assert dg.config.mode == "cast"
    assert dg.config.mode == "check"


def test_scopes_validate_when_called_not_when_entered():
    with pytest.raises(
        ValueError, match="mode must be one of 'check', 'cast', 'warn', 'off'; got 'fast'"
    ):
        dg.mode("fast")
    with pytest.raises(TypeError, match=r"mode must be one of .*; got NoneType None"):
        dg.mode(None)
    with pytest.raises(TypeError, match=r"strict\(enabled\) must be True or False; got str 'on'"):
        dg.strict("on")


def test_scopes_work_as_decorators_repeatedly():
    @dg.strict()
    @dg.mode("warn")
    def settings():
        return dg.config.mode, dg.config.strict

    assert settings() == ("warn", True)
    assert settings() == ("warn", True)
    assert (dg.config.mode, dg.config.strict) == ("check", False)


def test_threads_do_not_see_each_others_scopes():
    inside = threading.Event()
    checked = threading.Event()
    seen = {}

    def scoped():
        with dg.strict(), dg.mode("cast"):
            seen["scoped"] = (dg.config.mode, dg.config.strict)
            inside.set()
            checked.wait(10)
        seen["after"] = (dg.config.mode, dg.config.strict)

    def other():
        inside.wait(10)
        seen["other"] = (dg.config.mode, dg.config.strict)
        checked.set()

    threads = [threading.Thread(target=scoped), threading.Thread(target=other)]
    with dg.mode("warn"):  # the main thread's scope does not reach new threads either
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert dg.config.mode == "warn"
    assert seen == {
        "scoped": ("cast", True),
        "other": ("check", False),
        "after": ("check", False),
    }


def test_asyncio_tasks_do_not_see_each_others_scopes():
    async def scoped(entered, release):
        with dg.strict(), dg.mode("off"):
            entered.set()
            await release.wait()
            return dg.config.mode, dg.config.strict

    async def other(entered, release):
        await entered.wait()
        seen = (dg.config.mode, dg.config.strict)
        release.set()
        return seen

    async def main():
        entered, release = asyncio.Event(), asyncio.Event()
        results = await asyncio.gather(scoped(entered, release), other(entered, release))
        return results, (dg.config.mode, dg.config.strict)

    results, after = asyncio.run(main())
    assert results == [("off", True), ("check", False)]
    assert after == ("check", False)


# --- strict semantics -------------------------------------------------------


@pytest.mark.parametrize(
    "declared, configured, strict, expected",
    [
        (None, "check", False, ("check", False)),
        (None, "cast", False, ("cast", False)),
        ("warn", "cast", False, ("warn", False)),
        ("cast", "check", True, ("check", True)),
        ("warn", "check", True, ("check", True)),
        (None, "cast", True, ("check", True)),
        ("off", "check", True, ("off", False)),
        (None, "off", True, ("off", False)),
    ],
)
def test_effective_settings(declared, configured, strict, expected):
    with dg.mode(configured), dg.strict(strict):
        assert _config.effective(declared, False) == expected


def test_strict_turns_every_declared_mode_into_check_but_off_stays_off():
    guarded = {m: state_dtype_invariant(drift, mode=m) for m in ("check", "cast", "warn", "off")}
    assert guarded["cast"](VECTOR_F16).dtype == jnp.float16
    with dg.strict():
        for m in ("check", "cast", "warn"):
            with pytest.raises(StateDtypeError, match=r"state: float16\[3\] -> float32\[3\]"):
                guarded[m](VECTOR_F16)
        assert guarded["off"](VECTOR_F16).dtype == jnp.float32


def test_strict_hint_explains_that_cast_mode_does_not_apply():
    guarded = state_dtype_invariant(drift, mode="cast")
    with dg.strict(), pytest.raises(StateDtypeError) as error:
        guarded(VECTOR_F16)
    assert str(error.value).endswith(
        "Hint: strict mode is on, so dtype/weak_type drift fails even where "
        "mode=\"cast\" would repair it: keep the step's arithmetic in the state's dtype "
        "(e.g. `x.astype(state.dtype)`)."
    )


def test_strict_checks_weak_type_even_where_declared_false():
    guarded = state_dtype_invariant(weak_drift, weak_type=False)
    assert not guarded(WEAK_F32).weak_type
    with (
        dg.strict(),
        pytest.raises(StateDtypeError, match=r"state: weak float32\[\] -> float32\[\]"),
    ):
        guarded(WEAK_F32)


def test_strict_reaches_jitted_functions_when_traced():
    step = jax.jit(state_dtype_invariant(drift, mode="cast"))
    with dg.strict(), pytest.raises(StateDtypeError, match="float16"):
        step(VECTOR_F16)
    assert step(VECTOR_F16).dtype == jnp.float16


def test_strict_reaches_dg_lax():
    def body(x):
        return x * jnp.float32(2)

    def loop():
        return dg.lax.while_loop(lambda x: x[0] < 10, body, VECTOR_F16)

    with dg.strict(), pytest.raises(StateDtypeError, match=r"  x: float16\[3\] -> float32\[3\]"):
        loop()
    assert loop().dtype == jnp.float16  # default mode="cast" outside strict mode
    with dg.strict(), pytest.raises(StateDtypeError, match="float16"):
        dg.lax.scan(lambda c, x: (c * x, x), VECTOR_F16, jnp.ones(2, jnp.float32))
    with dg.strict(), pytest.raises(StateDtypeError, match="float16"):
        dg.lax.cond(True, lambda x: x * jnp.float32(2), lambda x: x, VECTOR_F16)


def test_strict_reaches_an_eager_dg_lax_loop_that_ran_before_outside_strict_mode():
    def body(x):
        return x * jnp.float32(2)

    def loop():
        return dg.lax.while_loop(lambda x: x[0] < 10, body, VECTOR_F16)

    assert loop().dtype == jnp.float16
    with dg.strict(), pytest.raises(StateDtypeError, match=r"  x: float16\[3\] -> float32\[3\]"):
        loop()
    assert loop().dtype == jnp.float16


def test_lax_mode_off_stays_off_under_strict():
    def body(i, x):
        return x.astype(jnp.float16)

    with dg.strict():
        out = dg.lax.fori_loop(0, 2, body, VECTOR_F16, mode="off")
    assert out.dtype == jnp.float16


def test_settings_are_read_at_trace_time_so_compiled_functions_keep_their_verdict():
    step = jax.jit(state_dtype_invariant(drift, mode="cast"))
    assert step(VECTOR_F16).dtype == jnp.float16  # traced and compiled here, with the cast
    with dg.strict():
        assert step(VECTOR_F16).dtype == jnp.float16  # cached: not traced again, no check
        with pytest.raises(StateDtypeError):
            step(jnp.ones(4, jnp.float16))  # a new shape traces again, strictly
        jax.clear_caches()
        with pytest.raises(StateDtypeError):
            step(VECTOR_F16)


def test_config_mode_is_the_default_of_undeclared_guards_at_call_time():
    guarded = state_dtype_invariant(drift)
    with pytest.raises(StateDtypeError):
        guarded(VECTOR_F16)
    with dg.mode("cast"):
        assert guarded(VECTOR_F16).dtype == jnp.float16
    dg.config.update(mode="off")
    assert guarded(VECTOR_F16).dtype == jnp.float32


# --- environment variables --------------------------------------------------


@pytest.mark.parametrize(
    "variable, value, expected",
    [
        ("JAX_DTYPEGUARD_MODE", "cast", "cast"),
        ("JAX_DTYPEGUARD_MODE", " Warn ", "warn"),
        ("JAX_DTYPEGUARD_MODE", "", "check"),
        ("JAX_DTYPEGUARD_STRICT", "1", True),
        ("JAX_DTYPEGUARD_STRICT", "TRUE", True),
        ("JAX_DTYPEGUARD_STRICT", "on", True),
        ("JAX_DTYPEGUARD_STRICT", "0", False),
        ("JAX_DTYPEGUARD_STRICT", "no", False),
        ("JAX_DTYPEGUARD_STRICT", "", False),
    ],
)
def test_environment_values(monkeypatch, variable, value, expected):
    monkeypatch.setenv(variable, value)
    config = _config.Config()
    assert (config._mode if variable.endswith("MODE") else config._strict) == expected


def _python(code, **env):
    environment = {**os.environ, **env}
    for name in ("JAX_DTYPEGUARD_MODE", "JAX_DTYPEGUARD_STRICT"):
        environment.setdefault(name, "")
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_environment_sets_the_defaults_in_a_fresh_process():
    result = _python(
        """
        import jax.numpy as jnp
        import jax_dtypeguard as dg

        print(dg.config.mode, dg.config.strict)
        guarded = dg.state_dtype_invariant(lambda s: s * jnp.float32(2), mode="cast")
        try:
            guarded(jnp.ones(2, jnp.float16))
        except dg.StateDtypeError:
            print("strict")
        """,
        JAX_DTYPEGUARD_MODE="warn",
        JAX_DTYPEGUARD_STRICT="1",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n") == ["warn True", "strict", ""]


@pytest.mark.parametrize(
    "variable, value, message",
    [
        (
            "JAX_DTYPEGUARD_MODE",
            "loud",
            "Environment variable JAX_DTYPEGUARD_MODE='loud' is not a jax_dtypeguard mode; "
            "allowed values: check, cast, warn, off (or unset for the default, check).",
        ),
        (
            "JAX_DTYPEGUARD_STRICT",
            "maybe",
            "Environment variable JAX_DTYPEGUARD_STRICT='maybe' is not a boolean; allowed "
            "values: 1, true, yes, on to turn strict mode on, 0, false, no, off (or unset) "
            "to leave it off.",
        ),
    ],
)
def test_invalid_environment_fails_at_import_naming_the_variable(variable, value, message):
    result = _python("from jax_dtypeguard import state_dtype_invariant", **{variable: value})
    assert result.returncode != 0
    assert f"ValueError: {message}" in result.stderr


# --- guard_loops settings -------------------------------------------------------------------


def test_loop_settings_follow_the_scope_and_strict_mode():
    token = _config.loops_override.set(None)
    try:
        assert _config.loop_settings() == dg.config.loops_default
        with dg.guard_loops(mode="cast", weak_type=True):
            assert _config.loop_settings() == ("cast", True)
            assert dg.config.loops == "cast"
            with dg.strict():
                assert _config.loop_settings() == ("check", True)
            with dg.guard_loops(mode="off"):
                assert _config.loop_settings() is None
    finally:
        _config.loops_override.reset(token)


def test_config_loops_guards_the_whole_program_until_turned_off():
    def widen(i, x):
        return x + jnp.float32(1)

    token = _config.loops_override.set(None)
    try:
        assert dg.config.loops == "off"
        dg.config.update(loops="cast")
        assert dg.config.loops == "cast"
        assert "loops='cast'" in repr(dg.config)
        assert jax.lax.fori_loop(0, 2, widen, jnp.float16(0)).dtype == jnp.float16
        with dg.guard_loops(mode="off"):
            assert dg.config.loops == "off"
        dg.config.update("loops", "off")
        assert dg.config.loops == "off"
        with pytest.raises(TypeError, match="carry"):
            jax.lax.fori_loop(0, 2, widen, jnp.float16(0))
    finally:
        dg.config.update(loops="off")
        _config.loops_override.reset(token)


@pytest.mark.parametrize("bad", ["loud", 1, None])
def test_config_loops_rejects_what_is_no_loop_mode(bad):
    if bad is None:
        with pytest.raises(TypeError, match="name, value"):
            dg.config.update("loops")
        return
    with pytest.raises(ValueError, match="loops must be one of 'check', 'cast', 'warn', 'off'"):
        dg.config.update(loops=bad)
    assert dg.config.loops == "off"


def test_guard_loops_options_are_keyword_only():
    with pytest.raises(TypeError):
        dg.guard_loops("cast")  # type: ignore[misc]


def test_loops_environment_variable_is_validated(monkeypatch):
    monkeypatch.setenv(_config.LOOPS_VARIABLE, " Cast ")
    assert _config._loops_from_env() == ("cast", False)
    monkeypatch.setenv(_config.LOOPS_VARIABLE, "off")
    assert _config._loops_from_env() is None
    monkeypatch.setenv(_config.LOOPS_VARIABLE, "sometimes")
    with pytest.raises(ValueError, match="JAX_DTYPEGUARD_LOOPS='sometimes'"):
        _config._loops_from_env()
