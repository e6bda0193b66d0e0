"""Values of the spec language and the rules that convert between them.

Values are floats or strings as in spec; associative arrays are
:class:`Assoc` (string keys, ``k1 0x1C k2`` for two-dimensional ones); data
arrays are :class:`DataArray` around a numpy array.  Errors that reset a
command to command level are :class:`SpecError` and its subclasses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..protocol import format_number

MAX_STRING = 16 << 20  # characters in one string value (default)


@dataclass(frozen=True)
class Limits:
    """Memory bounds of the interpreter (``specsrv --max-string`` etc.).

    ``max_string``: characters in one string value, also the widest printf
    field; ``max_array``: bytes of one data array; ``max_memory``: bytes of
    all variables together (globals, and the locals of the running command).
    Exceeding one is a spec error ("Out of memory ..."): the command stops,
    the server serves on.
    """

    max_string: int = MAX_STRING
    max_array: int = 128 << 20
    max_memory: int = 256 << 20


# -- values ------------------------------------------------------------------


class Assoc(dict):
    """spec associative array: string keys, float or string values."""


class DataArray:
    """spec data array (numpy array plus its spec type name)."""

    TYPES = {
        "double": "f8",
        "float": "f4",
        "long": "i4",
        "ulong": "u4",
        "short": "i2",
        "ushort": "u2",
        "byte": "i1",
        "ubyte": "u1",
        "long64": "i8",
        "ulong64": "u8",
    }

    def __init__(self, arr: np.ndarray) -> None:
        self.arr = arr
        #: the current ``arr`` was handed out (a reply being sent): copy on write
        self.shared = False

    def share(self) -> np.ndarray:
        """The array for sending without a copy; later writes go to a copy."""
        self.shared = True
        return self.arr

    def for_write(self) -> np.ndarray:
        if self.shared:
            self.arr = self.arr.copy()
            self.shared = False
        return self.arr


class SpecError(Exception):
    """A runtime error: resets to command level (err 1)."""

    err = 1


class SpecSyntaxError(SpecError):
    err = 2


class SpecExit(SpecError):
    err = 3


class SpecAbort(SpecError):
    """^C: the command was aborted."""


def bounded(s: str, limit: int = MAX_STRING) -> str:
    if len(s) > limit:
        raise SpecError(f"String longer than {limit} characters.")
    return s


def value_size(v) -> int:
    """Approximate bytes a value holds (for the max_memory bound)."""
    if isinstance(v, str):
        return 56 + len(v)
    if isinstance(v, Assoc):
        return 64 + sum(80 + len(k) + value_size(x) for k, x in list(v.items()))
    if isinstance(v, DataArray):
        return 112 + v.arr.nbytes
    return 24


def to_num(v) -> float:
    if isinstance(v, float | int):
        return float(v)
    if isinstance(v, str):
        s = v.strip()
        if not s:
            return 0.0
        try:
            return float(s)
        except ValueError:
            pass
        try:
            return float(int(s, 0))
        except ValueError:
            return 0.0
    if isinstance(v, DataArray):
        raise SpecError("Data array used as a number.")
    if isinstance(v, Assoc):
        raise SpecError("Associative array used as a number.")
    return 0.0


def is_numeric(v) -> bool:
    if isinstance(v, float | int):
        return True
    if isinstance(v, str):
        try:
            float(v.strip())
            return bool(v.strip())
        except ValueError:
            return False
    return False


def to_str(v) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, float | int):
        return format_number(float(v) if not isinstance(v, bool) else int(v))
    if isinstance(v, DataArray):
        return " ".join(format_value(x) for x in v.arr.reshape(-1)[:100])
    return str(v)


def format_value(v) -> str:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float | int):
        return format_number(float(v))
    return to_str(v)


def truth(v) -> bool:
    if isinstance(v, str) and not is_numeric(v):
        return v != ""
    return to_num(v) != 0


def key_of(v) -> str:
    return to_str(v) if not isinstance(v, float | int) else format_number(float(v))


def binary(op: str, a, b):
    if op in ("==", "!=", "<", "<=", ">", ">="):
        if is_numeric(a) and is_numeric(b) or not (isinstance(a, str) or isinstance(b, str)):
            x, y = to_num(a), to_num(b)
        else:
            x, y = to_str(a), to_str(b)
        r = {
            "==": x == y,
            "!=": x != y,
            "<": x < y,
            "<=": x <= y,
            ">": x > y,
            ">=": x >= y,
        }[op]
        return 1.0 if r else 0.0
    x, y = to_num(a), to_num(b)
    if op == "+":
        return x + y
    if op == "-":
        return x - y
    if op == "*":
        return x * y
    if op == "/":
        if y == 0:
            raise SpecError("Divide by zero.")
        return x / y
    if op == "%":
        if int(y) == 0:
            raise SpecError("Modulus by zero.")
        return float(math.fmod(int(x), int(y)))
    ix, iy = _int32(x), _int32(y)
    if op == "&":
        return float(ix & iy)
    if op == "|":
        return float(ix | iy)
    if op == "^":
        return float(ix ^ iy)
    if op == "<<":
        return float((ix << (iy & 63)) & 0xFFFFFFFFFFFF)
    if op == ">>":
        return float(ix >> (iy & 63))
    raise SpecError(f"unknown operator {op}")


def _int32(x: float) -> int:
    if not math.isfinite(x):
        return 0
    return int(x)


def quote_word(v) -> str:
    if isinstance(v, str) and not is_numeric(v):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return to_str(v)


def fill_array(da: DataArray, value) -> None:
    a = da.for_write()
    if a.dtype.kind == "S":
        a[...] = to_str(value).encode()
    else:
        a[...] = to_num(value)


def _norm_index(arr: np.ndarray, idx: list[int]) -> tuple:
    if arr.ndim == 1 and len(idx) == 2 and idx[0] == 0:
        idx = idx[1:]
    if len(idx) != arr.ndim:
        raise SpecError("Wrong number of array indices.")
    for i, n in zip(idx, arr.shape, strict=True):
        if not 0 <= i < n:
            raise SpecError("Array index out of range.")
    return tuple(idx)


def get_array_element(da: DataArray, idx: list[int]):
    a = da.arr
    if a.dtype.kind == "S":
        if len(idx) == 1:
            if not 0 <= idx[0] < a.shape[0]:
                raise SpecError("Array index out of range.")
            return a[idx[0]].decode("utf-8", "replace")
        raise SpecError("Wrong number of array indices.")
    return float(a[_norm_index(a, idx)])


def set_array_element(da: DataArray, idx: list[int], value) -> None:
    a = da.for_write()
    if a.dtype.kind == "S":
        if len(idx) != 1 or not 0 <= idx[0] < a.shape[0]:
            raise SpecError("Array index out of range.")
        a[idx[0]] = to_str(value).encode()
        return
    a[_norm_index(a, idx)] = to_num(value)
