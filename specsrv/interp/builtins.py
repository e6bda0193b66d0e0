"""Built-in functions of the spec language: the one table of them.

A new built-in is one decorated function here: ``@builtin("name")`` on
``def f(it, *values)``, where ``it`` is the running :class:`Interp` and the
values are evaluated arguments (``raw=True``: the argument nodes instead,
for functions such as ``split`` that assign to a named array).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..motors import MOTOR_PARAMS, MotionError
from . import nodes as N
from .format import spec_sprintf
from .values import Assoc, DataArray, SpecError, is_numeric, to_num, to_str


@dataclass(frozen=True)
class Builtin:
    name: str
    fn: Callable
    raw: bool = False


#: every built-in function by name
BUILTINS: dict[str, Builtin] = {}


def builtin(*names: str, raw: bool = False):
    """Register ``fn(it, *args)`` as the built-in function(s) ``names``."""

    def deco(fn):
        for n in names:
            BUILTINS[n] = Builtin(n, fn, raw)
        return fn

    return deco


def _table(entries: dict[str, Callable]) -> None:
    """Register simple functions of values only (no interpreter state)."""
    for name, fn in entries.items():
        BUILTINS[name] = Builtin(name, lambda it, *a, _f=fn: _f(*a))


def _num1(f):
    return lambda x=0.0: float(f(to_num(x)))


def _math_checked(f, name):
    def g(x=0.0):
        try:
            return float(f(to_num(x)))
        except (ValueError, OverflowError):
            raise SpecError(f"{name}(): argument out of range.") from None

    return g


@builtin("rand")
def _rand(it, n=None):
    if n is None:
        return float(random.randint(0, 32767))
    k = int(to_num(n))
    return float(random.randint(0, k)) if k > 0 else float(random.randint(k, 0))


@builtin("printf", "eprintf")
def _printf(it, fmt="", *args):
    it.write(spec_sprintf(to_str(fmt), args, it.limits.max_string))
    return 1.0


@builtin("fprintf")
def _fprintf(it, file, fmt="", *args):
    name = to_str(file)
    text = spec_sprintf(to_str(fmt), args, it.limits.max_string)
    if name == "tty":
        it.write(text)
    else:
        it.append_file(name, text)
    return 1.0


@builtin("on")
def _on(it, file="tty"):
    it.files_on.add(to_str(file))
    return 0.0


@builtin("off")
def _off(it, file="tty"):
    it.files_on.discard(to_str(file))
    return 0.0


@builtin("sleep")
def _sleep(it, t=0.0):
    t = max(0.0, to_num(t))
    if it.abort_event.wait(t):
        it.check()
    return 1.0


@builtin("split", raw=True)
def _split(it, nodes):
    if len(nodes) < 2 or not isinstance(nodes[1], N.Name):
        raise SpecError("Usage: split(string, array [, delimiter])")
    s = to_str(it.eval(nodes[0]))
    parts = s.split(to_str(it.eval(nodes[2]))) if len(nodes) > 2 else s.split()
    arr = Assoc({str(i): p for i, p in enumerate(parts)})
    it.set_var(nodes[1].name, arr)
    return float(len(parts))


@builtin("eval")
def _eval_string(it, text):
    saved = it.last_value
    it.exec_block(it.parse(to_str(text)), new_scope=False)
    v = it.last_value
    it.last_value = saved
    return 0.0 if v is None else v


@builtin("whatis")
def _whatis(it, name):
    v = it.lookup(to_str(name))
    if v is None:
        return 0.0
    if isinstance(v, Assoc):
        return 0x01000000 * 1.0
    if isinstance(v, DataArray):
        return 0x00010000 * 1.0
    return 0x02000000 * 1.0 if isinstance(v, str) else 0x04000000 * 1.0


@builtin("get_lim")
def _get_lim(it, mne, flag):
    m = it.motor_of(mne)
    return m.high if to_num(flag) > 0 else m.low


@builtin("chg_dial")
def _chg_dial(it, mne, how, home_pos=None):
    m = it.motor_of(mne)
    if isinstance(how, str) and not is_numeric(how):
        try:
            it.hw.search(m.mne, how, None if home_pos is None else to_num(home_pos))
        except MotionError as exc:
            raise SpecError(str(exc)) from None
        if it.aborted():
            it.check()
    else:
        it.hw.set_dial(m.mne, to_num(how))
    return 0.0


@builtin("chg_offset")
def _chg_offset(it, mne, user):
    m = it.motor_of(mne)
    it.hw.set_user(m.mne, to_num(user))
    return 0.0


@builtin("motor_par")
def _motor_par(it, mne, par, value=None):
    m = it.motor_of(mne)
    par = to_str(par)
    if par == "disable":
        if value is None:
            return float(m.disabled)
        it.hw.set_param(m.mne, "disable", to_num(value))
        return float(m.disabled)
    if par == "step_size":
        return m.steps
    if par in ("sign",):
        return float(m.sign)
    if par not in MOTOR_PARAMS:
        raise SpecError(f'motor_par(): unknown parameter "{par}".')
    if value is None:
        return m.params.get(par, 0.0)
    it.hw.set_param(m.mne, par, to_num(value))
    return m.params[par]


@builtin("counter_par")
def _counter_par(it, mne, par, value=None):
    c = it.counter_of(mne)
    par = to_str(par)
    if par == "rate":
        if value is not None:
            c.rate = to_num(value)
        return c.rate
    if par == "scale":
        return c.cfg.scale
    raise SpecError(f'counter_par(): unknown parameter "{par}".')


def _num_of(table, mne):
    obj = table.get(to_str(mne))
    return float(obj.index) if obj is not None else -1.0


@builtin("prop_send")
def _prop_send(it, prop, value):
    it.hw.emit(to_str(prop), value)
    return 0.0


@builtin("wait")
def _wait(it, flags=0xF):
    f = int(to_num(flags))
    if f & 1:
        it.waitmove()
    if f & 2:
        it.waitcount()
    return 0.0


@builtin("sim_slip")
def _sim_slip(it, mne, steps):
    m = it.motor_of(mne)
    with it.hw.lock:
        m.slip = to_num(steps) / m.steps
    return 0.0


@builtin("sim_fault")
def _sim_fault(it, mne, kind, on=1):
    kind = to_str(kind)
    if kind not in ("emergency_stop", "motor_fault"):
        raise SpecError('sim_fault(): kind is "emergency_stop" or "motor_fault".')
    it.hw.set_fault(it.motor_of(mne).mne, kind, bool(to_num(on)))
    return 0.0


@builtin("array_op")
def _array_op(it, op, arr, *args):
    if not isinstance(arr, DataArray):
        raise SpecError("array_op(): needs a data array.")
    op = to_str(op)
    a = arr.arr
    if op == "fill":
        a = arr.for_write()
        start = to_num(args[0]) if args else 0.0
        step = to_num(args[1]) if len(args) > 1 else 1.0
        a.reshape(-1)[:] = start + step * np.arange(a.size)
        return 0.0
    if op in ("rows", "cols"):
        return float(
            a.shape[0] if op == "rows" and a.ndim == 2 else 1 if op == "rows" else a.shape[-1]
        )
    if op in ("sum", "min", "max"):
        return float(getattr(np, op)(a)) if a.size else 0.0
    raise SpecError(f'array_op(): unknown operation "{op}".')


# -- helpers ---------------------------------------------------------------------


def _pow(x: float, y: float) -> float:
    try:
        return math.pow(x, y)
    except (ValueError, OverflowError):
        raise SpecError("pow(): argument out of range.") from None


def _substr(s, start, length=None):
    s = to_str(s)
    i = max(int(to_num(start)) - 1, 0)
    if length is None:
        return s[i:]
    return s[i : i + max(int(to_num(length)), 0)]


def _date(fmt=None) -> str:
    if fmt is None:
        return time.strftime("%a %b %d %H:%M:%S %Y")
    return time.strftime(to_str(fmt)) if isinstance(fmt, str) else time.ctime(to_num(fmt))


_table(
    {
        "sin": _num1(math.sin),
        "cos": _num1(math.cos),
        "tan": _num1(math.tan),
        "asin": _math_checked(math.asin, "asin"),
        "acos": _math_checked(math.acos, "acos"),
        "atan": _num1(math.atan),
        "exp": _math_checked(math.exp, "exp"),
        "log": _math_checked(math.log, "log"),
        "log10": _math_checked(math.log10, "log10"),
        "sqrt": _math_checked(math.sqrt, "sqrt"),
        "fabs": _num1(abs),
        "int": _num1(lambda x: math.trunc(x) if math.isfinite(x) else x),
        "atan2": lambda y, x: math.atan2(to_num(y), to_num(x)),
        "pow": lambda x, y: _pow(to_num(x), to_num(y)),
        "srand": lambda s=0.0: random.seed(to_num(s)) or 0.0,
        "length": lambda s="": float(len(to_str(s))),
        "substr": _substr,
        "index": lambda s, t: float(to_str(s).find(to_str(t)) + 1),
        "tolower": lambda s: to_str(s).lower(),
        "toupper": lambda s: to_str(s).upper(),
        "date": lambda fmt=None: _date(fmt),
        "time": lambda: time.time(),
    }
)


@builtin("sprintf")
def _sprintf(it, fmt="", *args):
    return spec_sprintf(to_str(fmt), args, it.limits.max_string)


@builtin("close")
def _close(it, f=""):
    return float(bool(it.files_on.discard(to_str(f))))


@builtin("exists")
def _exists(it, n):
    return 1.0 if it.lookup(to_str(n)) is not None else 0.0


@builtin("user")
def _user(it, mne, d):
    return it.motor_of(mne).user_of(to_num(d))


@builtin("dial")
def _dial(it, mne, u):
    return it.motor_of(mne).dial_of(to_num(u))


@builtin("motor_mne")
def _motor_mne(it, i):
    return it.motor_of(i).mne


@builtin("motor_name")
def _motor_name(it, i):
    return it.motor_of(i).name


@builtin("motor_num")
def _motor_num(it, m):
    return _num_of(it.hw.by_mne, m)


@builtin("cnt_mne")
def _cnt_mne(it, i):
    return it.counter_of(i).mne


@builtin("cnt_name")
def _cnt_name(it, i):
    return it.counter_of(i).name


@builtin("cnt_num")
def _cnt_num(it, m):
    return _num_of(it.hw.cnt_by_mne, m)
