"""Tokens of the spec language."""

from __future__ import annotations

import re

from .values import SpecSyntaxError

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
  | (?P<other>[^\s])
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
        elif kind in ("ident", "op", "dollar", "other"):
            # "other": a character only macro words may hold (newfile a.dat);
            # in an expression the parser reports a syntax error
            toks.append(Tok(kind, text, pos, m.end()))
        pos = m.end()
    toks.append(Tok("eof", "", n, n))
    return toks
