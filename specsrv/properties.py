"""The property model of spec server mode: what each property reads, writes
and emits.  Pure: no sockets; the engine (:mod:`specsrv.engine`) calls it.

A property name is ``HEAD/...``.  Each family has one table below; a new
property is one entry:

``motor/MNE/WHAT``   :data:`MOTOR_PROPS` (``WHAT`` -> :class:`MotorProp`),
                     plus every motor parameter of ``motor_par``
``motor/../WHAT``    prestart_all, start_all, abort_all (the engine)
``scaler/...``       :data:`SCALER_PROPS`
``status/WHAT``      :data:`STATUS_PROPS`
``var/NAME[k]``      globals of the interpreter (read, written, watched)
``output/FILE``      output events only (``output/tty``, ``output/FILE``)
``error``            the last error message

Events: ``motor/...`` and ``scaler/...`` events come from the instrument
model (:mod:`specsrv.motors`) as values change; ``var/...`` events from
assignments in the interpreter; ``status/ready`` from the command thread;
``status/quit`` at shutdown; ``output/...`` from printed output; ``error``
events when a command fails.

Writes that change state never act directly: they become spec command text
queued on the command thread (``set tth 10``), as in spec, so a write is
ordered with the commands around it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import protocol as P
from .interp import is_numeric, to_num
from .motors import MOTOR_PARAMS, Motor


class PropError(Exception):
    """A property that does not exist or cannot be used this way."""


def wire_number(value) -> float | int:
    """Numbers for the wire: integral values without a decimal point."""
    return int(value) if float(value).is_integer() and abs(value) < 1e15 else float(value)


def number_text(text: str) -> str:
    """Check that a value sent for a motor is a number (no command injection)."""
    if not is_numeric(text):
        raise PropError(f"not a number: {text[:40]!r}")
    return text.strip()


def parse_var_prop(rest: str) -> tuple[str, str | None]:
    """``NAME`` or ``NAME[k]`` or ``NAME[k1][k2]`` -> (name, key or None)."""
    if "[" not in rest:
        return rest, None
    name, _, tail = rest.partition("[")
    if not tail.endswith("]"):
        raise PropError(f"bad array element in property var/{rest}")
    keys = tail[:-1].split("][")
    return name, P.ASSOC_SEP.join(k.strip("\"'") for k in keys)


# -- motor/MNE/WHAT ---------------------------------------------------------------


@dataclass(frozen=True)
class MotorProp:
    """One motor property.

    ``read(m)`` gives its value (None: not readable, not registrable);
    ``send(m, text)`` gives the command text a CHAN_SEND queues (or None when
    nothing needs doing; None for ``send`` itself: read-only).
    """

    read: Callable[[Motor], float] | None = None
    send: Callable[[Motor, str], str | None] | None = None


def _send_dial(m: Motor, text: str) -> str | None:
    if m.quantise(to_num(number_text(text))) != m.dial:
        return f"set_dial {m.mne} {text}\n"
    return None


def _send_offset(m: Motor, text: str) -> str | None:
    off = float(number_text(text))
    if off == m.offset:
        return None
    return f"set {m.mne} {P.format_number(m.sign * m.dial + off)}\n"


def _send_limits(m: Motor, text: str) -> str:
    words = text.replace(",", " ").split()
    if len(words) != 2:
        raise PropError("limits needs two values: low high")
    return f"set_lm {m.mne} {number_text(words[0])} {number_text(words[1])}\n"


def _send_search(m: Motor, text: str) -> str:
    words = text.replace(",", " ").split()
    if len(words) not in (1, 2):
        raise PropError("search needs: how [home_pos]")
    how = words[0].strip("\"'")
    if how not in ("home", "home+", "home-", "lim+", "lim-"):
        raise PropError(f"bad search type {how!r}")
    extra = f", {number_text(words[1])}" if len(words) == 2 else ""
    return f'chg_dial({m.mne}, "{how}"{extra})\n'


def _param_prop(name: str) -> MotorProp:
    return MotorProp(
        read=lambda m: m.params.get(name, 0.0),
        send=lambda m, text: f'motor_par({m.mne}, "{name}", {number_text(text)})\n',
    )


#: every motor/MNE/WHAT property except start_one and sync_check, which
#: involve the client's state (see the engine)
MOTOR_PROPS: dict[str, MotorProp] = {
    "position": MotorProp(lambda m: m.user, lambda m, t: f"set {m.mne} {number_text(t)}\n"),
    "dial_position": MotorProp(lambda m: m.dial, _send_dial),
    "offset": MotorProp(lambda m: m.offset, _send_offset),
    "step_size": MotorProp(lambda m: m.steps),
    "sign": MotorProp(lambda m: m.sign),
    "high_limit": MotorProp(
        lambda m: m.high,
        lambda m, t: f"set_lm  {m.mne} {number_text(t)} user({m.mne},get_lim({m.mne},-1))\n",
    ),
    "low_limit": MotorProp(
        lambda m: m.low,
        lambda m, t: f"set_lm {m.mne} {number_text(t)} user({m.mne},get_lim({m.mne},+1))\n",
    ),
    "move_done": MotorProp(lambda m: 1 if m.moving else 0),
    "high_lim_hit": MotorProp(lambda m: m.high_hit),
    "low_lim_hit": MotorProp(lambda m: m.low_hit),
    "emergency_stop": MotorProp(lambda m: m.emergency_stop),
    "motor_fault": MotorProp(lambda m: m.motor_fault),
    "unusable": MotorProp(lambda m: 1 if m.disabled else 0),
    "limits": MotorProp(send=_send_limits),
    "search": MotorProp(send=_send_search),
    **{name: _param_prop(name) for name in MOTOR_PARAMS},
}

# start_one and sync_check (client state involved) and motor/../prestart_all,
# start_all, abort_all are handled by the engine (SpecEngine._send_motor).


def read_motor(m: Motor, what: str):
    prop = MOTOR_PROPS.get(what)
    if prop is None or prop.read is None:
        raise PropError(f"Motor property {what!r} cannot be read.")
    return wire_number(prop.read(m))


def motor_send_text(m: Motor, what: str, text: str) -> str | None:
    """Command text for CHAN_SEND motor/MNE/WHAT (None: nothing to do)."""
    prop = MOTOR_PROPS.get(what)
    if prop is None or prop.send is None:
        raise PropError(f"Motor property {what!r} cannot be set.")
    return prop.send(m, text)


def motor_registrable(what: str) -> tuple[bool, bool]:
    """(valid, has an initial value) of motor/MNE/WHAT for REGISTER."""
    if what == "sync_check":
        return True, False
    prop = MOTOR_PROPS.get(what)
    return (prop is not None and prop.read is not None), True


# -- scaler, status -------------------------------------------------------------------


def read_scaler(hw, mne: str, what: str):
    if mne == ".all." and what == "count":
        return 1 if hw.counting else 0
    c = hw.cnt_by_mne.get(mne)
    if c is not None and what == "value":
        return wire_number(c.value)
    raise PropError(f"Unrecognizable or unreadable property 'scaler/{mne}/{what}'.")


#: status/WHAT -> read(engine)
STATUS_PROPS: dict[str, Callable] = {
    "ready": lambda eng: 0 if eng.busy or eng.queue else 1,
    "shell": lambda eng: 0,
    "simulate": lambda eng: 1 if eng.simulate else 0,
    "quit": lambda eng: 0,
}
