"""The syntax tree of the spec language: frozen node classes.

The parser builds these; the interpreter dispatches on their class.  Nodes
are immutable (tuples inside, never lists), so a parsed command can be
cached and run again, by any number of macros, without copying.
"""

from __future__ import annotations

from dataclasses import dataclass


class Node:
    """Base of every node."""

    __slots__ = ()


class Expr(Node):
    """Base of expression nodes."""

    __slots__ = ()


class Stmt(Node):
    """Base of statement nodes."""

    __slots__ = ()


# -- expressions ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Const(Expr):
    value: float | str


@dataclass(frozen=True, slots=True)
class Name(Expr):
    name: str


@dataclass(frozen=True, slots=True)
class Binary(Expr):
    op: str
    left: Expr
    right: Expr


@dataclass(frozen=True, slots=True)
class Concat(Expr):
    """Two values written side by side (``"a" x``): string concatenation."""

    left: Expr
    right: Expr


@dataclass(frozen=True, slots=True)
class Unary(Expr):
    op: str
    operand: Expr


@dataclass(frozen=True, slots=True)
class Assign(Expr):
    op: str  # "=", "+=", ...
    target: Name | Index
    value: Expr


@dataclass(frozen=True, slots=True)
class Incr(Expr):
    op: str  # "++" or "--"
    target: Name | Index
    prefix: bool


@dataclass(frozen=True, slots=True)
class Index(Expr):
    base: Expr
    key: Expr


@dataclass(frozen=True, slots=True)
class Call(Expr):
    name: str
    args: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Cond(Expr):
    cond: Expr
    then: Expr
    other: Expr


@dataclass(frozen=True, slots=True)
class Seq(Expr):
    """Comma-separated expressions of a ``for`` header."""

    items: tuple[Expr, ...]


# -- statements -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExprStmt(Stmt):
    expr: Expr


@dataclass(frozen=True, slots=True)
class Print(Stmt):
    args: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Block(Stmt):
    body: tuple[Stmt, ...]


@dataclass(frozen=True, slots=True)
class If(Stmt):
    cond: Expr
    then: Stmt
    other: Stmt | None


@dataclass(frozen=True, slots=True)
class While(Stmt):
    cond: Expr
    body: Stmt


@dataclass(frozen=True, slots=True)
class For(Stmt):
    init: Expr | None
    cond: Expr | None
    step: Expr | None
    body: Stmt


@dataclass(frozen=True, slots=True)
class ForIn(Stmt):
    var: str
    array: Expr
    body: Stmt


@dataclass(frozen=True, slots=True)
class Break(Stmt):
    pass


@dataclass(frozen=True, slots=True)
class Continue(Stmt):
    pass


@dataclass(frozen=True, slots=True)
class Return(Stmt):
    value: Expr | None


@dataclass(frozen=True, slots=True)
class Exit(Stmt):
    pass


@dataclass(frozen=True, slots=True)
class ArrayDecl(Stmt):
    scope: str  # "global" or "local"
    etype: str  # "double", "float", ..., "string"
    name: str
    dims: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class VarDecl:
    """One name of a ``local``/``global``/``unglobal``/``constant`` line."""

    name: str
    init: Expr | None


@dataclass(frozen=True, slots=True)
class Decl(Stmt):
    kind: str  # "local", "global", "unglobal", "constant"
    items: tuple[VarDecl | ArrayDecl, ...]


@dataclass(frozen=True, slots=True)
class Delete(Stmt):
    target: Expr


@dataclass(frozen=True, slots=True)
class Def(Stmt):
    name: str
    params: tuple[str, ...] | None  # None: a word macro ($1 ... $*)
    body: str


@dataclass(frozen=True, slots=True)
class Undef(Stmt):
    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Command(Stmt):
    """A built-in word command (``mv tth 10``): see commands.py."""

    name: str
    words: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MacroCall(Stmt):
    """``NAME words...``: a macro, or (when none is defined) an expression."""

    name: str
    words: tuple[str, ...]
    text: str
