"""Built-in word commands of the spec language: the one table of them.

A word command takes whitespace-separated words up to the end of the
statement (``mv tth 10``, ``ct 1``).  A new one is one decorated function
here: ``@command("name")`` on ``def f(it, cmd, words)``, where ``it`` is the
running :class:`Interp`, ``cmd`` the word typed and ``words`` its arguments.
The parser reads the same table to know which words start a command.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..motors import MotionError
from ..protocol import format_number
from .format import count_report, limits_table, motor_table
from .values import SpecError, to_num


@dataclass(frozen=True)
class CommandDef:
    name: str
    fn: Callable
    usage: str = ""


#: every built-in word command by name
COMMANDS: dict[str, CommandDef] = {}


def command(*names: str, usage: str = ""):
    """Register ``fn(it, cmd, words)`` as the word command(s) ``names``."""

    def deco(fn):
        for n in names:
            COMMANDS[n] = CommandDef(n, fn, usage.replace("NAME", n))
        return fn

    return deco


def usage_error(cmd: str) -> SpecError:
    """spec's usage message for word command ``cmd``, from the command table."""
    return SpecError(f"Usage:  {COMMANDS[cmd].usage}")


@command("mv", "umv", "mvr", "umvr", usage="NAME motor position [motor position ...]")
def _mv(it, cmd: str, words: list[str]) -> None:
    if not words or len(words) % 2:
        raise SpecError(f"Usage:  {cmd} motor position [motor position ...]")
    it.waitmove()
    it.getangles()
    pairs = []
    for i in range(0, len(words), 2):
        m = it.word_motor(words[i])
        pos = to_num(it.eval_word(words[i + 1]))
        if cmd.endswith("r"):
            pos += m.user
        pairs.append((m, pos))
    for m, pos in pairs:
        it.set_element("A", str(m.index), pos, must_exist=True)
    it.move_em()
    if cmd.startswith("u"):
        it.waitmove()
        it.getangles()
        it.write(motor_table([m for m, _ in pairs], rows=("user",)))


@command("getangles", "get_angles")
def _getangles(it, cmd, words) -> None:
    it.getangles()


@command("move_em")
def _move_em(it, cmd, words) -> None:
    it.move_em()


@command("waitmove")
def _waitmove(it, cmd, words) -> None:
    it.waitmove()


@command("getcounts", "get_counts")
def _getcounts(it, cmd, words) -> None:
    it.getcounts()


@command("waitcount")
def _waitcount(it, cmd, words) -> None:
    it.waitcount()


@command("wa")
def _wa(it, cmd, words) -> None:
    it.waitmove()
    it.getangles()
    it.write("\nCurrent Positions  (user, dial)\n" + motor_table(it.hw.motors))


@command("wm", "lm", usage="NAME motor [motor ...]")
def _wm(it, cmd, words) -> None:
    motors = [it.word_motor(w) for w in words] if words else it.hw.motors
    if cmd == "wm" and not words:
        raise usage_error(cmd)
    it.getangles()
    it.write(limits_table(motors))


@command("ct", "count_em", usage="NAME [seconds | -monitor_counts]")
def _ct(it, cmd, words) -> None:
    hw = it.hw
    t = to_num(it.eval_word(words[0])) if words else to_num(it.get_var("COUNT_TIME"))
    if t == 0:
        t = to_num(it.get_var("COUNT_TIME"))
    it.waitcount()
    try:
        hw.start_count(t)
    except MotionError as exc:
        raise SpecError(str(exc)) from None
    if cmd == "ct":
        it.waitcount()
        it.getcounts()
        it.write(count_report(hw))


@command("set", usage="set motor new_user_value")
def _set(it, cmd, words) -> None:
    if len(words) != 2:
        raise usage_error(cmd)
    m = it.word_motor(words[0])
    it.hw.set_user(m.mne, to_num(it.eval_word(words[1])))
    it.getangles()
    it.write(f"'{m.mne}' offset set to {format_number(m.offset)}.\n")


@command("set_dial", usage="set_dial motor new_dial_value")
def _set_dial(it, cmd, words) -> None:
    if len(words) != 2:
        raise usage_error(cmd)
    m = it.word_motor(words[0])
    it.hw.set_dial(m.mne, to_num(it.eval_word(words[1])))
    it.getangles()
    it.write(f"'{m.mne}' dial position reset to {format_number(m.dial)}.\n")


@command("set_lm", usage="set_lm motor low high")
def _set_lm(it, cmd, words) -> None:
    if len(words) != 3:
        raise usage_error(cmd)
    m = it.word_motor(words[0])
    it.hw.set_limits(m.mne, to_num(it.eval_word(words[1])), to_num(it.eval_word(words[2])))
    lo, hi = m.user_limits()
    it.write(f"{m.mne} limits set to {format_number(lo)} {format_number(hi)} (user).\n")


@command("syms")
def _syms(it, cmd, words) -> None:
    with it.lock:
        names = sorted(it.globals)
    it.write("  ".join(names) + "\n")


@command("lsdef")
def _lsdef(it, cmd, words) -> None:
    it.write("  ".join(sorted(it.macros)) + "\n")
