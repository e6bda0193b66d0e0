"""A small spec-language interpreter for the server's command thread.

It covers the command strings the protocol pushes onto the queue
(``{get_angles;A[tth]=10;move_em;}``, ``count_em 1``, ``set``, ``set_dial``,
``set_lm``, ``chg_dial(...)``, ``motor_par(...)``) and what users type every
day: ``mv``, ``umv``, ``mvr``, ``umvr``, ``wa``, ``wm``, ``lm``, ``ct``,
``p``/``print``, ``printf``, expressions with numbers and strings, global
and local variables, associative arrays (also two-dimensional), data arrays,
``if``/``while``/``for``, ``def`` macros (with ``$1`` ... ``$*`` words, or
function macros with parameters), ``sleep``, ``waitmove``, ``getangles``.

The package, in the order a command flows through it:

``lexer``       text -> tokens
``parser``      tokens -> frozen syntax-tree nodes (``nodes``)
``interpreter`` runs the nodes (:class:`Interp`)
``commands``    the one table of built-in word commands (``mv``, ``ct``, ...)
``builtins``    the one table of built-in functions (``sin``, ``motor_par``, ...)
``scans``       the standard scans, newfile and the data file, lscmd, prdef
``format``      printf formats and the tables ``wa``/``wm``/``ct`` print
``values``      spec values (numbers, strings, associative and data arrays)
"""

from . import scans  # noqa: F401 - registers the scan commands
from .builtins import BUILTINS, builtin
from .commands import COMMANDS, command
from .format import count_report, limits_table, motor_table, spec_sprintf
from .interpreter import Interp
from .parser import Parser, macro_substitute, split_words
from .values import (
    Assoc,
    DataArray,
    Limits,
    SpecAbort,
    SpecError,
    SpecExit,
    SpecSyntaxError,
    format_value,
    get_array_element,
    is_numeric,
    to_num,
    to_str,
)

__all__ = [
    "BUILTINS",
    "COMMANDS",
    "Assoc",
    "DataArray",
    "Interp",
    "Limits",
    "Parser",
    "SpecAbort",
    "SpecError",
    "SpecExit",
    "SpecSyntaxError",
    "builtin",
    "command",
    "count_report",
    "format_value",
    "get_array_element",
    "is_numeric",
    "limits_table",
    "macro_substitute",
    "motor_table",
    "spec_sprintf",
    "split_words",
    "to_num",
    "to_str",
]
