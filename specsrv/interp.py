"""A small spec-language interpreter for the server's command thread.

It covers the command strings the protocol pushes onto the queue
(``{get_angles;A[tth]=10;move_em;}``, ``count_em 1``, ``set``, ``set_dial``,
``set_lm``, ``chg_dial(...)``, ``motor_par(...)``) and what users type every
day: ``mv``, ``umv``, ``mvr``, ``umvr``, ``wa``, ``wm``, ``lm``, ``ct``,
``p``/``print``, ``printf``, expressions with numbers and strings, global
and local variables, associative arrays (also two-dimensional), data arrays,
``if``/``while``/``for``, ``def`` macros (with ``$1`` ... ``$*`` words, or
function macros with parameters), ``sleep``, ``waitmove``, ``getangles``.

Values are floats or strings as in spec; associative arrays are
:class:`Assoc` (string keys, ``k1 0x1C k2`` for two-dimensional ones); data
arrays are :class:`DataArray` around a numpy array.  Motor and counter
mnemonics are constants holding the channel number, so ``A[tth]`` works.

The interpreter is driven by one command thread.  :meth:`Interp.abort`
(SV_ABORT, ^C) sets a flag checked at every statement, loop iteration and
wait, so even ``while (1) {}`` stops.  Hooks tell the server about variable
assignments (``on_var``) and output (``on_output``).
"""

from __future__ import annotations

import math
import random
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

from .protocol import ASSOC_SEP, format_number
from .sim import MOTOR_PARAMS, Hardware, MotionError

MAX_SOURCE = 1 << 20
MAX_DEPTH = 100
MAX_OUTPUT = 1 << 20  # bytes of output captured for one reply
MAX_STRING = 16 << 20  # characters in one string value


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


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


class _Return(Exception):
    def __init__(self, value) -> None:
        self.value = value


def bounded(s: str) -> str:
    if len(s) > MAX_STRING:
        raise SpecError(f"String longer than {MAX_STRING} characters.")
    return s


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


# -- lexer ----------------------------------------------------------------------

_TOKEN_RE = re.compile(
    r"""
    (?P<ws>[ \t\r]+|\\\n)
  | (?P<comment>\#[^\n]*)
  | (?P<nl>\n)
  | (?P<num>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<dollar>\$(?:\d+|\*|\#|@))
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op><<=|>>=|\+\+|--|&&|\|\||==|!=|<=|>=|<<|>>|\+=|-=|\*=|/=|%=|&=|\|=|\^=
           |[-+*/%<>=!~&|^?:;,()\[\]{}])
    """,
    re.X | re.S,
)

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "a": "\a", "0": "\0"}


def unescape(body: str) -> str:
    out = []
    i = 0
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body):
            n = body[i + 1]
            if n in "01234567" and body[i + 1 : i + 4].isdigit() and len(body[i + 1 : i + 4]) == 3:
                out.append(chr(int(body[i + 1 : i + 4], 8) & 0xFF))
                i += 4
                continue
            out.append(_ESCAPES.get(n, n))
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


class Tok:
    __slots__ = ("kind", "value", "pos", "end")

    def __init__(self, kind: str, value: str, pos: int, end: int) -> None:
        self.kind, self.value, self.pos, self.end = kind, value, pos, end

    def __repr__(self) -> str:
        return f"Tok({self.kind},{self.value!r})"


def tokenize(src: str) -> list[Tok]:
    toks: list[Tok] = []
    pos = 0
    n = len(src)
    while pos < n:
        m = _TOKEN_RE.match(src, pos)
        if m is None:
            raise SpecSyntaxError(f"syntax error: unexpected character {src[pos]!r}")
        kind = m.lastgroup
        text = m.group()
        if kind == "str":
            toks.append(Tok("str", unescape(text[1:-1]), pos, m.end()))
        elif kind == "num":
            toks.append(Tok("num", text, pos, m.end()))
        elif kind == "nl":
            toks.append(Tok("nl", "\n", pos, m.end()))
        elif kind in ("ident", "op", "dollar"):
            toks.append(Tok(kind, text, pos, m.end()))
        pos = m.end()
    toks.append(Tok("eof", "", n, n))
    return toks


# -- parser (produces tuples: (kind, ...)) ------------------------------------

KEYWORDS = {
    "if",
    "else",
    "while",
    "for",
    "in",
    "break",
    "continue",
    "return",
    "exit",
    "local",
    "global",
    "unglobal",
    "delete",
    "def",
    "undef",
    "array",
    "shared",
    "string",
    "constant",
}
#: commands whose arguments are whitespace-separated words (spec macros)
WORD_COMMANDS = {
    "mv",
    "umv",
    "mvr",
    "umvr",
    "wm",
    "ct",
    "set",
    "set_dial",
    "set_lm",
    "count_em",
    "lm",
    "wa",
    "waitmove",
    "getangles",
    "get_angles",
    "move_em",
    "waitcount",
    "getcounts",
    "get_counts",
    "syms",
    "lsdef",
}
PRINT_COMMANDS = {"p", "print"}
ASSIGN_OPS = {"=", "+=", "-=", "*=", "/=", "%=", "&=", "|=", "^=", "<<=", ">>="}
BINARY_LEVELS = [
    ["||"],
    ["&&"],
    ["|"],
    ["^"],
    ["&"],
    ["==", "!="],
    ["<", "<=", ">", ">="],
    ["<<", ">>"],
    ["CONCAT"],
    ["+", "-"],
    ["*", "/", "%"],
]
ARRAY_TYPE_WORDS = set(DataArray.TYPES) | {"string"}


class Parser:
    def __init__(self, src: str) -> None:
        if len(src) > MAX_SOURCE:
            raise SpecSyntaxError("command too long")
        self.src = src
        self.toks = tokenize(src)
        self.i = 0
        self.depth = 0

    # helpers
    @property
    def tok(self) -> Tok:
        return self.toks[self.i]

    def peek(self, k: int = 1) -> Tok:
        return self.toks[min(self.i + k, len(self.toks) - 1)]

    def advance(self) -> Tok:
        t = self.toks[self.i]
        if self.i < len(self.toks) - 1:
            self.i += 1
        return t

    def at(self, value: str) -> bool:
        t = self.tok
        return t.kind in ("op", "ident") and t.value == value

    def expect(self, value: str) -> Tok:
        if not self.at(value):
            self.error(f"expected {value!r}")
        return self.advance()

    def error(self, msg: str):
        t = self.tok
        near = "end of input" if t.kind == "eof" else repr(t.value)
        raise SpecSyntaxError(f"syntax error: {msg} near {near}")

    def skip_nl(self) -> None:
        while self.tok.kind == "nl":
            self.advance()

    def skip_terms(self) -> None:
        while self.tok.kind == "nl" or self.at(";"):
            self.advance()

    # program
    def parse_program(self) -> list:
        stmts = []
        self.skip_terms()
        while self.tok.kind != "eof":
            stmts.append(self.statement())
            self.end_statement()
            self.skip_terms()
        return stmts

    def end_statement(self) -> None:
        t = self.tok
        if t.kind in ("nl", "eof") or self.at(";") or self.at("}"):
            return
        self.error("unexpected token")

    def block_until_brace(self) -> list:
        stmts = []
        self.skip_terms()
        while not self.at("}"):
            if self.tok.kind == "eof":
                self.error("missing '}'")
            stmts.append(self.statement())
            self.end_statement()
            self.skip_terms()
        self.advance()
        return stmts

    def statement(self):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise SpecSyntaxError("syntax error: nesting too deep")
        try:
            return self._statement()
        finally:
            self.depth -= 1

    def _statement(self):
        t = self.tok
        if self.at("{"):
            self.advance()
            return ("block", self.block_until_brace())
        if t.kind == "ident":
            v = t.value
            if v == "if":
                self.advance()
                self.expect("(")
                cond = self.expr()
                self.expect(")")
                self.skip_nl()
                then = self.statement()
                save = self.i
                self.skip_terms()
                if self.at("else"):
                    self.advance()
                    self.skip_nl()
                    return ("if", cond, then, self.statement())
                self.i = save
                return ("if", cond, then, None)
            if v == "while":
                self.advance()
                self.expect("(")
                cond = self.expr()
                self.expect(")")
                self.skip_nl()
                return ("while", cond, self.statement())
            if v == "for":
                return self.for_statement()
            if v in ("break", "continue"):
                self.advance()
                return (v,)
            if v == "return":
                self.advance()
                if self._at_end():
                    return ("return", None)
                return ("return", self.expr())
            if v == "exit":
                self.advance()
                return ("exit",)
            if v in ("local", "global", "unglobal", "constant"):
                return self.declaration()
            if v == "delete":
                self.advance()
                return ("delete", self.postfix())
            if v == "def":
                return self.definition()
            if v == "undef":
                self.advance()
                names = []
                while self.tok.kind == "ident":
                    names.append(self.advance().value)
                return ("undef", names)
            if v in ARRAY_TYPE_WORDS or v in ("array", "shared"):
                decl = self.try_array_decl()
                if decl is not None:
                    return decl
            if v in PRINT_COMMANDS and self.peek().value not in ASSIGN_OPS:
                self.advance()
                args = []
                if not self._at_end():
                    args.append(self.expr())
                    while self.at(","):
                        self.advance()
                        args.append(self.expr())
                return ("print", args)
            if v in WORD_COMMANDS and not (
                self.peek().kind == "op" and self.peek().value in ASSIGN_OPS | {"(", "["}
            ):
                self.advance()
                return ("command", v, self.words())
            # a user macro used as a command: NAME words...
            nxt = self.peek()
            if (
                v not in KEYWORDS
                and not (nxt.kind == "op" and nxt.value in ASSIGN_OPS | {"(", "[", "++", "--"})
                and (
                    nxt.kind in ("nl", "eof", "ident", "num", "str", "dollar")
                    or nxt.value in (";", "}")
                )
            ):
                self.advance()
                start = t.pos
                words = self.words()
                return (
                    "macro",
                    v,
                    words,
                    self.src[start : self.toks[self.i - 1].end] if words else v,
                )
        return ("expr", self.expr())

    def _at_end(self) -> bool:
        t = self.tok
        return t.kind in ("nl", "eof") or self.at(";") or self.at("}")

    def words(self) -> list:
        """Whitespace-separated argument words up to the end of the statement."""
        if self._at_end():
            return []
        start = self.tok.pos
        depth = 0
        end = start
        while True:
            t = self.tok
            if t.kind == "eof":
                break
            if depth == 0 and (t.kind == "nl" or t.value in (";", "}")) and t.kind != "str":
                break
            if t.kind == "op" and t.value in "([":
                depth += 1
            elif t.kind == "op" and t.value in ")]":
                depth -= 1
            end = t.end
            self.advance()
        return [word for word in split_words(self.src[start:end])]

    def for_statement(self):
        self.advance()
        self.expect("(")
        if self.tok.kind == "ident" and self.peek().value == "in":
            var = self.advance().value
            self.advance()
            arr = self.expr()
            self.expect(")")
            self.skip_nl()
            return ("forin", var, arr, self.statement())
        init = None if self.at(";") else self.expr_list()
        self.expect(";")
        cond = None if self.at(";") else self.expr()
        self.expect(";")
        step = None if self.at(")") else self.expr_list()
        self.expect(")")
        self.skip_nl()
        return ("for", init, cond, step, self.statement())

    def expr_list(self):
        items = [self.expr()]
        while self.at(","):
            self.advance()
            items.append(self.expr())
        return ("seq", items)

    def declaration(self):
        kind = self.advance().value
        names = []
        while True:
            if (
                kind in ("local", "global")
                and self.tok.kind == "ident"
                and (self.tok.value in ARRAY_TYPE_WORDS or self.tok.value == "array")
            ):
                decl = self.try_array_decl(scope=kind)
                if decl is not None:
                    names.append(("array", decl))
                    if not self.at(","):
                        break
                    self.advance()
                    continue
            if self.tok.kind != "ident":
                self.error("expected a name")
            name = self.advance().value
            init = None
            if self.at("["):
                self.advance()
                self.expect("]")
            if kind == "constant":
                if self.at("="):
                    self.advance()
                init = self.expr()
            names.append((name, init))
            if self.at(","):
                self.advance()
                continue
            if self.tok.kind == "ident" and not self._at_end():
                continue
            break
        return ("decl", kind, names)

    def try_array_decl(self, scope: str = "global"):
        save = self.i
        etype = "double"
        while self.tok.kind == "ident" and self.tok.value in ARRAY_TYPE_WORDS | {"shared"}:
            w = self.advance().value
            if w != "shared":
                etype = w
        if not self.at("array"):
            self.i = save
            return None
        self.advance()
        if self.tok.kind != "ident":
            self.error("expected an array name")
        name = self.advance().value
        dims = []
        while self.at("["):
            self.advance()
            dims.append(self.expr())
            self.expect("]")
        if not dims or len(dims) > 2:
            self.error("data arrays have one or two dimensions")
        return ("arraydecl", scope, etype, name, dims)

    def definition(self):
        self.advance()
        if self.tok.kind != "ident":
            self.error("expected a macro name")
        name = self.advance().value
        params = None
        if self.at("("):
            self.advance()
            params = []
            while not self.at(")"):
                if self.tok.kind != "ident":
                    self.error("expected a parameter name")
                params.append(self.advance().value)
                if self.at(","):
                    self.advance()
            self.advance()
        if self.tok.kind != "str":
            self.error("macro body must be a quoted string")
        body = self.advance().value
        return ("def", name, params, body)

    # expressions
    def expr(self):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise SpecSyntaxError("syntax error: expression too deep")
        try:
            return self.assignment()
        finally:
            self.depth -= 1

    def assignment(self):
        left = self.ternary()
        t = self.tok
        if t.kind == "op" and t.value in ASSIGN_OPS:
            if left[0] not in ("name", "index"):
                self.error("assignment to something that is not a variable")
            self.advance()
            self.skip_nl()
            return ("assign", t.value, left, self.assignment())
        return left

    def ternary(self):
        cond = self.binary(0)
        if self.at("?"):
            self.advance()
            a = self.expr()
            self.expect(":")
            b = self.ternary()
            return ("cond", cond, a, b)
        return cond

    def _starts_primary(self) -> bool:
        t = self.tok
        if t.kind in ("num", "str", "dollar"):
            return True
        if t.kind == "ident" and t.value not in KEYWORDS:
            return True
        return False

    def binary(self, level: int):
        if level >= len(BINARY_LEVELS):
            return self.unary()
        ops = BINARY_LEVELS[level]
        left = self.binary(level + 1)
        while True:
            t = self.tok
            if ops == ["CONCAT"]:
                if self._starts_primary():
                    right = self.binary(level + 1)
                    left = ("concat", left, right)
                    continue
                return left
            if t.kind == "op" and t.value in ops:
                self.advance()
                self.skip_nl()
                right = self.binary(level + 1)
                left = ("bin", t.value, left, right)
                continue
            return left

    def unary(self):
        t = self.tok
        if t.kind == "op" and t.value in ("-", "+", "!", "~"):
            self.advance()
            return ("unary", t.value, self.unary())
        if t.kind == "op" and t.value in ("++", "--"):
            self.advance()
            target = self.unary()
            if target[0] not in ("name", "index"):
                self.error(f"{t.value} needs a variable")
            return ("incr", t.value, target, True)
        return self.postfix()

    def postfix(self):
        node = self.primary()
        while True:
            if self.at("["):
                self.advance()
                idx = self.expr()
                self.expect("]")
                node = ("index", node, idx)
            elif self.at("(") and node[0] == "name":
                self.advance()
                args = []
                self.skip_nl()
                while not self.at(")"):
                    args.append(self.expr())
                    self.skip_nl()
                    if self.at(","):
                        self.advance()
                        self.skip_nl()
                    elif not self.at(")"):
                        self.error("expected ',' or ')'")
                self.advance()
                node = ("call", node[1], args)
            elif self.tok.kind == "op" and self.tok.value in ("++", "--"):
                if node[0] not in ("name", "index"):
                    return node
                op = self.advance().value
                node = ("incr", op, node, False)
            else:
                return node

    def primary(self):
        t = self.tok
        if t.kind == "num":
            self.advance()
            v = t.value
            return ("const", float(int(v, 16)) if v[:2] in ("0x", "0X") else float(v))
        if t.kind == "str":
            self.advance()
            return ("const", t.value)
        if t.kind == "ident" and t.value not in KEYWORDS:
            self.advance()
            return ("name", t.value)
        if t.kind == "dollar":
            self.advance()
            return ("const", "")  # unsubstituted macro argument
        if self.at("("):
            self.advance()
            self.skip_nl()
            e = self.expr()
            self.skip_nl()
            self.expect(")")
            return e
        self.error("expected an expression")


def split_words(text: str) -> list[str]:
    """Split a macro argument string into words (quotes and brackets kept)."""
    words: list[str] = []
    cur: list[str] = []
    depth = 0
    quote = None
    i = 0
    while i < len(text):
        c = text[i]
        if quote:
            cur.append(c)
            if c == "\\" and i + 1 < len(text):
                cur.append(text[i + 1])
                i += 2
                continue
            if c == quote:
                quote = None
        elif c in "\"'":
            quote = c
            cur.append(c)
        elif c in "([":
            depth += 1
            cur.append(c)
        elif c in ")]":
            depth -= 1
            cur.append(c)
        elif c in " \t\r\n" and depth <= 0:
            if cur:
                words.append("".join(cur))
                cur = []
        else:
            cur.append(c)
        i += 1
    if cur:
        words.append("".join(cur))
    return words


def macro_substitute(body: str, words: list[str]) -> str:
    def rep(m: re.Match) -> str:
        k = m.group(1)
        if k == "#":
            return str(len(words))
        if k in ("*", "@"):
            return " ".join(words)
        n = int(k)
        if n == 0:
            return ""
        return words[n - 1] if n <= len(words) else ""

    return re.sub(r"\$(\d+|\*|#|@)", rep, body)


# -- interpreter ------------------------------------------------------------------


class Interp:
    """Executes spec commands against globals and the simulated hardware."""

    def __init__(self, hw: Hardware, *, name: str = "spec", port: int = 0) -> None:
        self.hw = hw
        self.lock = threading.RLock()
        self.globals: dict[str, object] = {}
        self.constants: set[str] = set()
        self.macros: dict[str, tuple[list[str] | None, str]] = {}
        self.frames: list[dict] = []
        self.call_depth = 0
        self.abort_event = threading.Event()
        self.pending_error: str | None = None
        self.on_var: Callable[[str, str | None, bool], None] = lambda name, key, deleted: None
        self.on_output: Callable[[str, str], None] = lambda file, text: None
        self.out: list[str] | None = None
        self.out_size = 0
        self.last_value = None
        self.files_on: set[str] = set()
        self._cache: OrderedDict[str, list] = OrderedDict()
        self.functions = self._builtin_functions()
        self.globals["A"] = Assoc({str(m.index): m.user for m in hw.motors})
        self.globals["S"] = Assoc({str(c.index): 0.0 for c in hw.counters})
        self.globals["DEBUG"] = 0.0
        self.globals["IS_SERVER"] = float(port)
        self.globals["SPEC"] = name
        self.globals["VERSION"] = "6.12.01"
        self.globals["PI"] = math.pi
        self.globals["COUNT_TIME"] = 1.0
        self.builtin_assoc = {"A", "S"}
        self.constants.update({"PI", "SPEC", "VERSION"})

    # -- public entry points -------------------------------------------------
    def parse(self, src: str) -> list:
        cached = self._cache.get(src)
        if cached is not None:
            self._cache.move_to_end(src)
            return cached
        tree = Parser(src).parse_program()
        if len(src) < 4096:
            self._cache[src] = tree
            if len(self._cache) > 256:
                self._cache.popitem(last=False)
        return tree

    def run(self, src: str, clear_abort: bool = True):
        """Run command text; return (value, output) or raise SpecError.

        With ``clear_abort=False`` a ^C that arrived before the start (see
        :meth:`clear_abort`) aborts this command at its first check.
        """
        if clear_abort:
            self.clear_abort()
        self.out = []
        self.out_size = 0
        self.last_value = None
        self.frames = []
        self.call_depth = 0
        try:
            tree = self.parse(src)
            self.exec_block(tree, new_scope=False)
        except (_Break, _Continue):
            pass
        except _Return as r:
            self.last_value = r.value
        except RecursionError:
            raise SpecError("Too deeply nested.") from None
        out = "".join(self.out)
        self.out = None
        return self.last_value, out

    def clear_abort(self) -> None:
        """Forget a ^C that no command has seen yet."""
        self.abort_event.clear()
        self.pending_error = None

    def abort(self, message: str | None = None) -> None:
        """^C: stop the running command, the motors and the counters."""
        self.pending_error = message
        self.abort_event.set()
        self.hw.abort()

    def check(self) -> None:
        if self.abort_event.is_set():
            msg = self.pending_error
            self.abort_event.clear()
            self.pending_error = None
            if msg:
                raise SpecError(msg)
            raise SpecAbort("Aborted.")

    def aborted(self) -> bool:
        return self.abort_event.is_set()

    def write(self, text: str, file: str = "tty") -> None:
        if not text:
            return
        if file == "tty" and self.out is not None and self.out_size < MAX_OUTPUT:
            self.out.append(text)
            self.out_size += len(text)
        self.on_output(file, text)
        for f in list(self.files_on):
            if f != "tty" and file == "tty":
                self._append_file(f, text)

    def _append_file(self, path: str, text: str) -> None:
        try:
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(text)
        except OSError as exc:
            raise SpecError(f'Can\'t open "{path}": {exc.strerror}.') from None
        self.on_output(path, text)

    # -- variables -----------------------------------------------------------------
    def lookup(self, name: str):
        for frame in reversed(self.frames):
            if name in frame:
                return frame[name]
        with self.lock:
            if name in self.globals:
                return self.globals[name]
        m = self.hw.by_mne.get(name)
        if m is not None:
            return float(m.index)
        c = self.hw.cnt_by_mne.get(name)
        if c is not None:
            return float(c.index)
        return None

    def get_var(self, name: str):
        v = self.lookup(name)
        return 0.0 if v is None else v

    def _scope_of(self, name: str) -> dict | None:
        for frame in reversed(self.frames):
            if name in frame:
                return frame
        return None

    def set_var(self, name: str, value) -> None:
        frame = self._scope_of(name)
        if frame is not None:
            frame[name] = value
            return
        if name in self.constants or name in self.hw.by_mne or name in self.hw.cnt_by_mne:
            raise SpecError(f'Can\'t assign to built-in or constant symbol "{name}".')
        with self.lock:
            old = self.globals.get(name)
            if isinstance(old, DataArray) and not isinstance(value, DataArray):
                fill_array(old, value)
            elif name in self.builtin_assoc and not isinstance(value, Assoc):
                raise SpecError(f"Can't assign a value to the built-in array {name}[].")
            else:
                self.globals[name] = value
        if name == "DEBUG":
            self.on_var("DEBUG", None, False)
        self.on_var(name, None, False)

    def set_global(self, name: str, value) -> None:
        """Assignment from a client (CHAN_SEND var/NAME)."""
        with self.lock:
            old = self.globals.get(name)
            if isinstance(value, dict) and not isinstance(value, DataArray):
                if name in self.builtin_assoc:
                    bad = [k for k in value if k not in old]
                    if bad:
                        raise SpecError(f"{name}[{bad[0]}] is not an existing element.")
                if isinstance(old, Assoc):
                    old.update(value)
                    keys = list(value)
                else:
                    self.globals[name] = Assoc(value)
                    keys = None
            elif isinstance(value, DataArray):
                self.globals[name] = value
                keys = None
            else:
                if name in self.builtin_assoc or name in self.constants:
                    raise SpecError(f"Can't assign to {name}.")
                if isinstance(old, DataArray):
                    fill_array(old, value)
                else:
                    self.globals[name] = value
                keys = None
        if keys is None:
            self.on_var(name, None, False)
        else:
            for k in keys:
                self.on_var(name, k, False)

    def set_element(
        self, name: str, key: str, value, *, must_exist: bool, notify: bool = True
    ) -> None:
        """Assign ``name[key]``; ``notify=False`` for built-in code (getangles,
        getcounts), whose updates of A[] and S[] send no events, as in spec."""
        with self.lock:
            arr = self.globals.get(name)
            if isinstance(arr, DataArray):
                idx = [int(to_num(k)) for k in key.split(ASSOC_SEP)]
                set_array_element(arr, idx, value)
                return
            if not isinstance(arr, Assoc):
                raise SpecError(f"{name} is not an associative array.")
            if (must_exist or name in self.builtin_assoc) and key not in arr:
                raise SpecError(f"{name}[{key}] is not an existing element.")
            arr[key] = value
        if notify:
            self.on_var(name, key, False)

    def delete_global(self, name: str, key: str | None = None) -> bool:
        with self.lock:
            if name not in self.globals or name in self.builtin_assoc and key is None:
                return False
            if key is None:
                del self.globals[name]
            else:
                arr = self.globals[name]
                if not isinstance(arr, Assoc) or key not in arr:
                    return False
                del arr[key]
        self.on_var(name, key, True)
        return True

    # -- execution -----------------------------------------------------------------
    def exec_block(self, stmts: list, new_scope: bool = True) -> None:
        if new_scope:
            self.frames.append({})
        try:
            for s in stmts:
                self.exec(s)
        finally:
            if new_scope:
                self.frames.pop()

    def exec(self, s) -> None:
        self.check()
        kind = s[0]
        if kind == "expr":
            self.last_value = self.eval(s[1])
        elif kind == "print":
            self.last_value = None
            self.write(" ".join(self.format_print(self.eval(a)) for a in s[1]) + "\n")
        elif kind == "block":
            self.exec_block(s[1])
        elif kind == "if":
            if truth(self.eval(s[1])):
                self.exec(s[2])
            elif s[3] is not None:
                self.exec(s[3])
        elif kind == "while":
            while truth(self.eval(s[1])):
                self.check()
                try:
                    self.exec(s[2])
                except _Break:
                    break
                except _Continue:
                    continue
        elif kind == "for":
            _, init, cond, step, body = s
            if init is not None:
                self.eval(init)
            while cond is None or truth(self.eval(cond)):
                self.check()
                try:
                    self.exec(body)
                except _Break:
                    break
                except _Continue:
                    pass
                if step is not None:
                    self.eval(step)
        elif kind == "forin":
            _, var, arr_node, body = s
            arr = self.eval(arr_node)
            if not isinstance(arr, Assoc):
                raise SpecError("for-in needs an associative array.")
            with self.lock:
                keys = list(arr.keys())
            for k in keys:
                self.check()
                self.set_var(var, k)
                try:
                    self.exec(body)
                except _Break:
                    break
                except _Continue:
                    continue
        elif kind == "break":
            raise _Break()
        elif kind == "continue":
            raise _Continue()
        elif kind == "return":
            raise _Return(None if s[1] is None else self.eval(s[1]))
        elif kind == "exit":
            raise SpecExit("exit")
        elif kind == "decl":
            self.exec_decl(s)
        elif kind == "arraydecl":
            self.exec_arraydecl(s)
        elif kind == "delete":
            self.exec_delete(s[1])
        elif kind == "def":
            _, name, params, body = s
            if name in self.functions or name in WORD_COMMANDS:
                raise SpecError(f'Can\'t redefine built-in "{name}".')
            self.macros[name] = (params, body)
        elif kind == "undef":
            for n in s[1]:
                self.macros.pop(n, None)
        elif kind == "command":
            self.last_value = None
            self.run_command(s[1], s[2])
        elif kind == "macro":
            name = s[1]
            if name in self.macros or name in self.functions:
                self.last_value = None
                self.run_macro(name, s[2])
            else:
                # not a macro: the words were an expression (``x`` or ``x "abc"``)
                self.last_value = self.eval_word(s[3]) if not s[2] else self.eval_concat(s[3])
        else:  # pragma: no cover - parser produces only the kinds above
            raise SpecError(f"unknown statement {kind}")

    def exec_decl(self, s) -> None:
        _, kind, names = s
        for item in names:
            if item[0] == "array":
                self.exec_arraydecl(item[1])
                continue
            name, init = item
            if kind == "local":
                if self.frames:
                    self.frames[-1].setdefault(name, 0.0)
                else:
                    self.frames.append({name: 0.0})
            elif kind == "global":
                with self.lock:
                    self.globals.setdefault(name, 0.0)
            elif kind == "unglobal":
                self.delete_global(name)
            elif kind == "constant":
                with self.lock:
                    self.globals[name] = self.eval(init)
                self.constants.add(name)
                self.on_var(name, None, False)

    def exec_arraydecl(self, s) -> None:
        _, scope, etype, name, dims = s
        shape = [int(to_num(self.eval(d))) for d in dims]
        if any(n <= 0 for n in shape) or math.prod(shape) > (16 << 20):
            raise SpecError(f"Bad array dimensions for {name}.")
        if etype == "string":
            rows = shape[0] if len(shape) == 2 else 1
            width = shape[-1]
            arr = np.zeros(rows, dtype=f"S{width}") if len(shape) == 2 else np.zeros(1, f"S{width}")
        else:
            arr = np.zeros(shape, dtype=DataArray.TYPES[etype])
        da = DataArray(arr)
        if scope == "local" and self.frames:
            self.frames[-1][name] = da
        else:
            with self.lock:
                self.globals[name] = da
            self.on_var(name, None, False)

    def exec_delete(self, node) -> None:
        if node[0] == "index" and node[1][0] == "name":
            name = node[1][1]
            key = key_of(self.eval(node[2]))
            frame = self._scope_of(name)
            if frame is not None:
                arr = frame[name]
                if isinstance(arr, Assoc):
                    arr.pop(key, None)
                return
            self.delete_global(name, key)
        elif node[0] == "index" and node[1][0] == "index":
            name, key = self.index_target(node)
            self.delete_global(name, key)
        elif node[0] == "name":
            arr = self.lookup(node[1])
            if isinstance(arr, Assoc) and node[1] not in self.builtin_assoc:
                with self.lock:
                    keys = list(arr)
                for k in keys:
                    self.delete_global(node[1], k)
        else:
            raise SpecError("delete needs an array element.")

    def index_target(self, node) -> tuple[str, str]:
        """(array name, key) of ``arr[i]`` or ``arr[i][j]``."""
        keys = []
        while node[0] == "index":
            keys.append(key_of(self.eval(node[2])))
            node = node[1]
        if node[0] != "name":
            raise SpecError("Only named arrays can be indexed.")
        return node[1], ASSOC_SEP.join(reversed(keys))

    # -- expressions ---------------------------------------------------------------
    def eval(self, n):
        kind = n[0]
        if kind == "const":
            return n[1]
        if kind == "name":
            return self.get_var(n[1])
        if kind == "bin":
            return self.binop(n[1], self.eval(n[2]), n[3])
        if kind == "assign":
            return self.assign(n[1], n[2], self.eval(n[3]))
        if kind == "index":
            return self.get_index(n)
        if kind == "call":
            return self.call(n[1], n[2])
        if kind == "unary":
            v = self.eval(n[2])
            op = n[1]
            if op == "-":
                return -to_num(v)
            if op == "+":
                return to_num(v)
            if op == "!":
                return 0.0 if truth(v) else 1.0
            return float(~int(to_num(v)) & 0xFFFFFFFF)
        if kind == "concat":
            return bounded(to_str(self.eval(n[1])) + to_str(self.eval(n[2])))
        if kind == "cond":
            return self.eval(n[2]) if truth(self.eval(n[1])) else self.eval(n[3])
        if kind == "incr":
            _, op, target, prefix = n
            old = to_num(self.eval(target))
            new = old + (1 if op == "++" else -1)
            self.store(target, new)
            return new if prefix else old
        if kind == "seq":
            v = None
            for item in n[1]:
                v = self.eval(item)
            return v
        raise SpecError(f"cannot evaluate {kind}")

    def binop(self, op: str, a, bnode):
        if op == "&&":
            return 1.0 if truth(a) and truth(self.eval(bnode)) else 0.0
        if op == "||":
            return 1.0 if truth(a) or truth(self.eval(bnode)) else 0.0
        b = self.eval(bnode)
        return binary(op, a, b)

    def assign(self, op: str, target, value):
        if op != "=":
            value = binary(op[:-1], self.eval(target), value)
        if isinstance(value, Assoc) and target[0] == "name":
            value = Assoc(value)
        self.store(target, value)
        return value

    def store(self, target, value) -> None:
        if target[0] == "name":
            self.set_var(target[1], value)
            return
        name, key = self.index_target(target)
        frame = self._scope_of(name)
        if frame is not None:
            arr = frame[name]
            if isinstance(arr, DataArray):
                set_array_element(arr, [int(to_num(k)) for k in key.split(ASSOC_SEP)], value)
                return
            if not isinstance(arr, Assoc):
                arr = frame[name] = Assoc()
            arr[key] = value
            return
        if name in self.hw.by_mne or name in self.constants:
            raise SpecError(f"{name} is not an array.")
        with self.lock:
            arr = self.globals.get(name)
            if arr is None or not isinstance(arr, Assoc | DataArray):
                self.globals[name] = Assoc()
        self.set_element(name, key, value, must_exist=False)

    def get_index(self, n):
        name, key = self.index_target(n)
        arr = self.lookup(name)
        if isinstance(arr, DataArray):
            return get_array_element(arr, [int(to_num(k)) for k in key.split(ASSOC_SEP)])
        if isinstance(arr, Assoc):
            with self.lock:
                v = arr.get(key)
            return 0.0 if v is None else v
        if isinstance(arr, str):
            # strings index as character arrays in spec
            i = int(to_num(key))
            return arr[i] if 0 <= i < len(arr) else ""
        return 0.0

    def format_print(self, v) -> str:
        if isinstance(v, Assoc):
            with self.lock:
                items = list(v.items())
            return "\n".join(f'["{k}"] = {to_str(x)}' for k, x in items) if items else ""
        if isinstance(v, DataArray):
            a = v.arr
            if a.dtype.kind == "S":
                return "\n".join(x.decode("utf-8", "replace") for x in a.reshape(-1))
            if a.ndim == 2:
                return "\n".join(" ".join(format_value(x) for x in row) for row in a)
            return " ".join(format_value(x) for x in a)
        return to_str(v)

    # -- calls --------------------------------------------------------------------
    def call(self, name: str, arg_nodes: list):
        fn = self.functions.get(name)
        if fn is not None:
            raw, f = fn
            if raw:
                return f(arg_nodes)
            return f(*[self.eval(a) for a in arg_nodes])
        macro = self.macros.get(name)
        if macro is not None:
            params, body = macro
            args = [self.eval(a) for a in arg_nodes]
            if params is None:
                return self.run_macro(name, [quote_word(a) for a in args])
            return self.call_function(name, params, body, args)
        if name in WORD_COMMANDS:
            self.run_command(name, [quote_word(self.eval(a)) for a in arg_nodes])
            return 0.0
        raise SpecError(f'Function "{name}" not found.')

    def call_function(self, name: str, params: list[str], body: str, args: list):
        if self.call_depth > 50:
            raise SpecError("Macro recursion too deep.")
        tree = self.parse(body)
        saved = self.frames
        self.frames = [dict(zip(params, args + [0.0] * (len(params) - len(args)), strict=False))]
        self.call_depth += 1
        try:
            self.exec_block(tree, new_scope=False)
            return 0.0
        except _Return as r:
            return 0.0 if r.value is None else r.value
        finally:
            self.call_depth -= 1
            self.frames = saved

    def run_macro(self, name: str, words: list[str]):
        macro = self.macros.get(name)
        if macro is None:
            if name in self.functions:
                return self.call(name, [Parser(w).expr() for w in words])
            raise SpecError(f'Unknown command or macro "{name}".')
        params, body = macro
        if params is not None:
            args = [self.eval_word(w) for w in words]
            return self.call_function(name, params, body, args)
        if self.call_depth > 50:
            raise SpecError("Macro recursion too deep.")
        self.call_depth += 1
        try:
            self.exec_block(self.parse(macro_substitute(body, words)), new_scope=False)
        finally:
            self.call_depth -= 1
        return None

    def eval_concat(self, text: str):
        try:
            return self.eval_word(text)
        except SpecSyntaxError:
            raise SpecError(f'Unknown command or macro "{text.split()[0]}".') from None

    def eval_word(self, word: str):
        p = Parser(word)
        node = p.expr()
        if p.tok.kind != "eof":
            p.error("unexpected text")
        return self.eval(node)

    # -- motor and counter commands ----------------------------------------------------
    def motor_of(self, v):
        """Motor from a mnemonic string or a motor number."""
        if isinstance(v, str) and v in self.hw.by_mne:
            return self.hw.by_mne[v]
        if is_numeric(v):
            i = int(to_num(v))
            if 0 <= i < len(self.hw.motors) and float(i) == to_num(v):
                return self.hw.motors[i]
        raise SpecError(f"Invalid motor name or number: {to_str(v)!s}.")

    def counter_of(self, v):
        if isinstance(v, str) and v in self.hw.cnt_by_mne:
            return self.hw.cnt_by_mne[v]
        if is_numeric(v):
            i = int(to_num(v))
            if 0 <= i < len(self.hw.counters):
                return self.hw.counters[i]
        raise SpecError(f"Invalid counter name or number: {to_str(v)}.")

    def word_motor(self, word: str):
        if word in self.hw.by_mne:
            return self.hw.by_mne[word]
        if re.fullmatch(r"[A-Za-z_]\w*", word) and self.lookup(word) is None:
            raise SpecError(f"Invalid motor name: {word}.")
        return self.motor_of(self.eval_word(word))

    def getangles(self) -> None:
        for m in self.hw.motors:
            ctrl = self.hw.read(m.mne)
            if ctrl != m.dial:
                self.resolve_discrepancy(m, ctrl)
            self.set_element("A", str(m.index), m.user, must_exist=True, notify=False)

    def resolve_discrepancy(self, m, ctrl: float) -> None:
        """Ask registered clients (motor/MNE/sync_check) which position is right."""
        hw = self.hw
        with hw.changed:
            hw.sync_answer = None
        self.write(
            f"\nMotor {m.mne} at {ctrl:.15g} dial, but spec thinks it is at {m.dial:.15g}.\n"
            "Change spec position to match controller? (answer 1 or 0)\n"
        )
        hw.emit(f"motor/{m.mne}/sync_check", f"{m.dial:.15g} {ctrl:.15g}")
        with hw.changed:
            while hw.sync_answer is None:
                if self.aborted():
                    break
                hw.changed.wait(0.1)
            answer = hw.sync_answer
            hw.sync_answer = None
        if answer is None:
            self.check()
            return
        if answer:
            hw.set_dial(m.mne, ctrl)
        else:
            with hw.lock:
                m.slip = 0.0

    def move_em(self) -> None:
        targets = {}
        with self.lock:
            a = dict(self.globals["A"])
        for m in self.hw.motors:
            v = a.get(str(m.index))
            if v is None:
                continue
            target = to_num(v)
            if m.quantise(m.dial_of(target)) != m.dial and not m.moving:
                targets[m.mne] = target
        try:
            self.hw.start_moves(targets)
        except MotionError as exc:
            raise SpecError(str(exc)) from None

    def waitmove(self) -> None:
        self.hw.wait_motors(self.aborted)
        self.check()

    def waitcount(self) -> None:
        self.hw.wait_count(self.aborted)
        self.check()

    def getcounts(self) -> None:
        for c in self.hw.counters:
            self.set_element("S", str(c.index), c.value, must_exist=True, notify=False)

    def run_command(self, cmd: str, words: list[str]) -> None:
        hw = self.hw
        if cmd in ("mv", "umv", "mvr", "umvr"):
            if not words or len(words) % 2:
                raise SpecError(f"Usage:  {cmd} motor position [motor position ...]")
            self.waitmove()
            self.getangles()
            pairs = []
            for i in range(0, len(words), 2):
                m = self.word_motor(words[i])
                pos = to_num(self.eval_word(words[i + 1]))
                if cmd.endswith("r"):
                    pos += m.user
                pairs.append((m, pos))
            for m, pos in pairs:
                self.set_element("A", str(m.index), pos, must_exist=True)
            self.move_em()
            if cmd.startswith("u"):
                self.waitmove()
                self.getangles()
                self.write(motor_table([m for m, _ in pairs], rows=("user",)))
        elif cmd in ("getangles", "get_angles"):
            self.getangles()
        elif cmd == "move_em":
            self.move_em()
        elif cmd == "waitmove":
            self.waitmove()
        elif cmd in ("getcounts", "get_counts"):
            self.getcounts()
        elif cmd == "waitcount":
            self.waitcount()
        elif cmd == "wa":
            self.waitmove()
            self.getangles()
            self.write("\nCurrent Positions  (user, dial)\n" + motor_table(hw.motors))
        elif cmd in ("wm", "lm"):
            motors = [self.word_motor(w) for w in words] if words else hw.motors
            if cmd == "wm" and not words:
                raise SpecError("Usage:  wm motor [motor ...]")
            self.getangles()
            self.write(limits_table(motors))
        elif cmd in ("ct", "count_em"):
            t = to_num(self.eval_word(words[0])) if words else to_num(self.get_var("COUNT_TIME"))
            if t == 0:
                t = to_num(self.get_var("COUNT_TIME"))
            self.waitcount()
            try:
                hw.start_count(t)
            except MotionError as exc:
                raise SpecError(str(exc)) from None
            if cmd == "ct":
                self.waitcount()
                self.getcounts()
                self.write(count_report(hw))
        elif cmd == "set":
            if len(words) != 2:
                raise SpecError("Usage:  set motor new_user_value")
            m = self.word_motor(words[0])
            hw.set_user(m.mne, to_num(self.eval_word(words[1])))
            self.getangles()
            self.write(f"'{m.mne}' offset set to {format_number(m.offset)}.\n")
        elif cmd == "set_dial":
            if len(words) != 2:
                raise SpecError("Usage:  set_dial motor new_dial_value")
            m = self.word_motor(words[0])
            hw.set_dial(m.mne, to_num(self.eval_word(words[1])))
            self.getangles()
            self.write(f"'{m.mne}' dial position reset to {format_number(m.dial)}.\n")
        elif cmd == "set_lm":
            if len(words) != 3:
                raise SpecError("Usage:  set_lm motor low high")
            m = self.word_motor(words[0])
            hw.set_limits(m.mne, to_num(self.eval_word(words[1])), to_num(self.eval_word(words[2])))
            lo, hi = m.user_limits()
            self.write(f"{m.mne} limits set to {format_number(lo)} {format_number(hi)} (user).\n")
        elif cmd == "syms":
            with self.lock:
                names = sorted(self.globals)
            self.write("  ".join(names) + "\n")
        elif cmd == "lsdef":
            self.write("  ".join(sorted(self.macros)) + "\n")
        else:  # pragma: no cover - WORD_COMMANDS and this chain agree
            raise SpecError(f"unknown command {cmd}")

    # -- built-in functions -----------------------------------------------------------
    def _builtin_functions(self) -> dict[str, tuple[bool, Callable]]:
        def num1(f):
            return (False, lambda x=0.0: float(f(to_num(x))))

        def math_checked(f, name):
            def g(x=0.0):
                try:
                    return float(f(to_num(x)))
                except (ValueError, OverflowError):
                    raise SpecError(f"{name}(): argument out of range.") from None

            return (False, g)

        fns: dict[str, tuple[bool, Callable]] = {
            "sin": num1(math.sin),
            "cos": num1(math.cos),
            "tan": num1(math.tan),
            "asin": math_checked(math.asin, "asin"),
            "acos": math_checked(math.acos, "acos"),
            "atan": num1(math.atan),
            "exp": math_checked(math.exp, "exp"),
            "log": math_checked(math.log, "log"),
            "log10": math_checked(math.log10, "log10"),
            "sqrt": math_checked(math.sqrt, "sqrt"),
            "fabs": num1(abs),
            "int": num1(lambda x: math.trunc(x) if math.isfinite(x) else x),
            "atan2": (False, lambda y, x: math.atan2(to_num(y), to_num(x))),
            "pow": (False, lambda x, y: _pow(to_num(x), to_num(y))),
            "rand": (False, self._rand),
            "srand": (False, lambda s=0.0: random.seed(to_num(s)) or 0.0),
            "length": (False, lambda s="": float(len(to_str(s)))),
            "substr": (False, _substr),
            "index": (False, lambda s, t: float(to_str(s).find(to_str(t)) + 1)),
            "tolower": (False, lambda s: to_str(s).lower()),
            "toupper": (False, lambda s: to_str(s).upper()),
            "sprintf": (False, lambda fmt="", *a: bounded(spec_sprintf(to_str(fmt), a))),
            "printf": (False, self._printf),
            "eprintf": (False, self._printf),
            "fprintf": (False, self._fprintf),
            "on": (False, self._on),
            "off": (False, self._off),
            "close": (False, lambda f="": float(bool(self.files_on.discard(to_str(f))))),
            "date": (False, lambda fmt=None: _date(fmt)),
            "time": (False, lambda: time.time()),
            "sleep": (False, self._sleep),
            "split": (True, self._split),
            "eval": (False, self._eval_string),
            "exists": (False, lambda n: 1.0 if self.lookup(to_str(n)) is not None else 0.0),
            "whatis": (False, self._whatis),
            "user": (False, lambda mne, d: self.motor_of(mne).user_of(to_num(d))),
            "dial": (False, lambda mne, u: self.motor_of(mne).dial_of(to_num(u))),
            "get_lim": (False, self._get_lim),
            "chg_dial": (False, self._chg_dial),
            "chg_offset": (False, self._chg_offset),
            "motor_par": (False, self._motor_par),
            "counter_par": (False, self._counter_par),
            "motor_mne": (False, lambda i: self.motor_of(i).mne),
            "motor_name": (False, lambda i: self.motor_of(i).name),
            "motor_num": (False, lambda m: self._num_of(self.hw.by_mne, m)),
            "cnt_mne": (False, lambda i: self.counter_of(i).mne),
            "cnt_name": (False, lambda i: self.counter_of(i).name),
            "cnt_num": (False, lambda m: self._num_of(self.hw.cnt_by_mne, m)),
            "prop_send": (False, self._prop_send),
            "wait": (False, self._wait),
            "sim_slip": (False, self._sim_slip),
            "sim_fault": (False, self._sim_fault),
            "array_op": (False, self._array_op),
        }
        return fns

    def _rand(self, n=None):
        if n is None:
            return float(random.randint(0, 32767))
        k = int(to_num(n))
        return float(random.randint(0, k)) if k > 0 else float(random.randint(k, 0))

    def _printf(self, fmt="", *args):
        self.write(spec_sprintf(to_str(fmt), args))
        return 1.0

    def _fprintf(self, file, fmt="", *args):
        name = to_str(file)
        text = spec_sprintf(to_str(fmt), args)
        if name == "tty":
            self.write(text)
        else:
            self._append_file(name, text)
        return 1.0

    def _on(self, file="tty"):
        self.files_on.add(to_str(file))
        return 0.0

    def _off(self, file="tty"):
        self.files_on.discard(to_str(file))
        return 0.0

    def _sleep(self, t=0.0):
        t = max(0.0, to_num(t))
        if self.abort_event.wait(t):
            self.check()
        return 1.0

    def _split(self, nodes):
        if len(nodes) < 2 or nodes[1][0] != "name":
            raise SpecError("Usage: split(string, array [, delimiter])")
        s = to_str(self.eval(nodes[0]))
        parts = s.split(to_str(self.eval(nodes[2]))) if len(nodes) > 2 else s.split()
        arr = Assoc({str(i): p for i, p in enumerate(parts)})
        self.set_var(nodes[1][1], arr)
        return float(len(parts))

    def _eval_string(self, text):
        saved = self.last_value
        self.exec_block(self.parse(to_str(text)), new_scope=False)
        v = self.last_value
        self.last_value = saved
        return 0.0 if v is None else v

    def _whatis(self, name):
        v = self.lookup(to_str(name))
        if v is None:
            return 0.0
        if isinstance(v, Assoc):
            return 0x01000000 * 1.0
        if isinstance(v, DataArray):
            return 0x00010000 * 1.0
        return 0x02000000 * 1.0 if isinstance(v, str) else 0x04000000 * 1.0

    def _get_lim(self, mne, flag):
        m = self.motor_of(mne)
        return m.high if to_num(flag) > 0 else m.low

    def _chg_dial(self, mne, how, home_pos=None):
        m = self.motor_of(mne)
        if isinstance(how, str) and not is_numeric(how):
            try:
                self.hw.search(m.mne, how, None if home_pos is None else to_num(home_pos))
            except MotionError as exc:
                raise SpecError(str(exc)) from None
            if self.aborted():
                self.check()
        else:
            self.hw.set_dial(m.mne, to_num(how))
        return 0.0

    def _chg_offset(self, mne, user):
        m = self.motor_of(mne)
        self.hw.set_user(m.mne, to_num(user))
        return 0.0

    def _motor_par(self, mne, par, value=None):
        m = self.motor_of(mne)
        par = to_str(par)
        if par == "disable":
            if value is None:
                return float(m.disabled)
            self.hw.set_param(m.mne, "disable", to_num(value))
            return float(m.disabled)
        if par == "step_size":
            return m.steps
        if par in ("sign",):
            return float(m.sign)
        if par not in MOTOR_PARAMS:
            raise SpecError(f'motor_par(): unknown parameter "{par}".')
        if value is None:
            return m.params.get(par, 0.0)
        self.hw.set_param(m.mne, par, to_num(value))
        return m.params[par]

    def _counter_par(self, mne, par, value=None):
        c = self.counter_of(mne)
        par = to_str(par)
        if par == "rate":
            if value is not None:
                c.rate = to_num(value)
            return c.rate
        if par == "scale":
            return c.cfg.scale
        raise SpecError(f'counter_par(): unknown parameter "{par}".')

    def _num_of(self, table, mne):
        obj = table.get(to_str(mne))
        return float(obj.index) if obj is not None else -1.0

    def _prop_send(self, prop, value):
        self.hw.emit(to_str(prop), value)
        return 0.0

    def _wait(self, flags=0xF):
        f = int(to_num(flags))
        if f & 1:
            self.waitmove()
        if f & 2:
            self.waitcount()
        return 0.0

    def _sim_slip(self, mne, steps):
        m = self.motor_of(mne)
        with self.hw.lock:
            m.slip = to_num(steps) / m.steps
        return 0.0

    def _sim_fault(self, mne, kind, on=1):
        kind = to_str(kind)
        if kind not in ("emergency_stop", "motor_fault"):
            raise SpecError('sim_fault(): kind is "emergency_stop" or "motor_fault".')
        self.hw.set_fault(self.motor_of(mne).mne, kind, bool(to_num(on)))
        return 0.0

    def _array_op(self, op, arr, *args):
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


_FMT_RE = re.compile(r"%([-+ #0]*)(\*|\d+)?(?:\.(\*|\d+))?[hlLqjzt]*([diouxXeEfFgGcs%])")


def spec_sprintf(fmt: str, args) -> str:
    args = list(args)
    out = []
    pos = 0
    ai = 0

    def nxt():
        nonlocal ai
        v = args[ai] if ai < len(args) else 0.0
        ai += 1
        return v

    for m in _FMT_RE.finditer(fmt):
        out.append(fmt[pos : m.start()])
        pos = m.end()
        flags, width, prec, conv = m.groups()
        if conv == "%":
            out.append("%")
            continue
        if width == "*":
            width = str(int(to_num(nxt())))
        if prec == "*":
            prec = str(int(to_num(nxt())))
        spec = "%" + flags + (width or "") + ("." + prec if prec is not None else "")
        v = nxt()
        if conv in "diouxXc":
            n = to_num(v)
            iv = int(n) if math.isfinite(n) else 0
            if conv == "c":
                out.append(
                    (spec + "c") % (chr(iv & 0xFF) if not isinstance(v, str) else (v or " ")[0])
                )
            else:
                if conv in "uoxX" and iv < 0:
                    iv &= 0xFFFFFFFF
                out.append((spec + ("d" if conv in "iu" else conv)) % iv)
        elif conv in "eEfFgG":
            out.append((spec + conv) % to_num(v))
        else:
            out.append((spec + "s") % to_str(v))
    out.append(fmt[pos:])
    return "".join(out)


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


def motor_table(motors, rows=("user", "dial")) -> str:
    lines = []
    for i in range(0, len(motors), 8):
        chunk = motors[i : i + 8]
        lines.append("".join(f"{m.name[:11]:>12}" for m in chunk))
        lines.append("".join(f"{m.mne:>12}" for m in chunk))
        for r in rows:
            lines.append("".join(f"{(m.user if r == 'user' else m.dial):12.4f}" for m in chunk))
        lines.append("")
    return "\n" + "\n".join(lines)


def limits_table(motors) -> str:
    head = "".join(f"{m.mne:>12}" for m in motors)
    lines = ["", f"{'':8}{head}"]
    lines.append("User")
    lim = [m.user_limits() for m in motors]
    lines.append(f"{' High':8}" + "".join(f"{hi:12.4f}" for _, hi in lim))
    lines.append(f"{' Current':8}" + "".join(f"{m.user:12.4f}" for m in motors))
    lines.append(f"{' Low':8}" + "".join(f"{lo:12.4f}" for lo, _ in lim))
    lines.append("Dial")
    lines.append(f"{' High':8}" + "".join(f"{m.high:12.4f}" for m in motors))
    lines.append(f"{' Current':8}" + "".join(f"{m.dial:12.4f}" for m in motors))
    lines.append(f"{' Low':8}" + "".join(f"{m.low:12.4f}" for m in motors))
    return "\n".join(lines) + "\n"


def count_report(hw: Hardware) -> str:
    t = hw.count_elapsed
    lines = ["", time.strftime("%a %b %d %H:%M:%S %Y"), ""]
    for c in hw.counters:
        rate = f" ({c.value / t:.6g}/s)" if c.kind != "timer" and t > 0 else ""
        lines.append(f"{c.name:>12} = {format_number(c.value)}{rate}")
    return "\n".join(lines) + "\n"
