"""The parser of the spec language: tokens -> :mod:`.nodes` trees.

Words that start a built-in command (``mv``, ``ct``, ...) come from the one
command table, :data:`.commands.COMMANDS`; a name followed by words and not
by an operator is a macro call.
"""

from __future__ import annotations

import re

from . import nodes as N
from .commands import COMMANDS
from .lexer import Tok, tokenize
from .values import DataArray, SpecSyntaxError

MAX_SOURCE = 1 << 20
MAX_DEPTH = 100

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
    def parse_program(self) -> tuple[N.Stmt, ...]:
        stmts = []
        self.skip_terms()
        while self.tok.kind != "eof":
            stmts.append(self.statement())
            self.end_statement()
            self.skip_terms()
        return tuple(stmts)

    def end_statement(self) -> None:
        t = self.tok
        if t.kind in ("nl", "eof") or self.at(";") or self.at("}"):
            return
        self.error("unexpected token")

    def block_until_brace(self) -> tuple[N.Stmt, ...]:
        stmts = []
        self.skip_terms()
        while not self.at("}"):
            if self.tok.kind == "eof":
                self.error("missing '}'")
            stmts.append(self.statement())
            self.end_statement()
            self.skip_terms()
        self.advance()
        return tuple(stmts)

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
            return N.Block(self.block_until_brace())
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
                    return N.If(cond, then, self.statement())
                self.i = save
                return N.If(cond, then, None)
            if v == "while":
                self.advance()
                self.expect("(")
                cond = self.expr()
                self.expect(")")
                self.skip_nl()
                return N.While(cond, self.statement())
            if v == "for":
                return self.for_statement()
            if v in ("break", "continue"):
                self.advance()
                return N.Break() if v == "break" else N.Continue()
            if v == "return":
                self.advance()
                if self._at_end():
                    return N.Return(None)
                return N.Return(self.expr())
            if v == "exit":
                self.advance()
                return N.Exit()
            if v in ("local", "global", "unglobal", "constant"):
                return self.declaration()
            if v == "delete":
                self.advance()
                return N.Delete(self.postfix())
            if v == "def":
                return self.definition()
            if v == "undef":
                self.advance()
                names = []
                while self.tok.kind == "ident":
                    names.append(self.advance().value)
                return N.Undef(tuple(names))
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
                return N.Print(tuple(args))
            if v in COMMANDS and not (
                self.peek().kind == "op" and self.peek().value in ASSIGN_OPS | {"(", "["}
            ):
                self.advance()
                return N.Command(v, tuple(self.words()))
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
                return N.MacroCall(
                    v,
                    tuple(words),
                    self.src[start : self.toks[self.i - 1].end] if words else v,
                )
        return N.ExprStmt(self.expr())

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
            return N.ForIn(var, arr, self.statement())
        init = None if self.at(";") else self.expr_list()
        self.expect(";")
        cond = None if self.at(";") else self.expr()
        self.expect(";")
        step = None if self.at(")") else self.expr_list()
        self.expect(")")
        self.skip_nl()
        return N.For(init, cond, step, self.statement())

    def expr_list(self):
        items = [self.expr()]
        while self.at(","):
            self.advance()
            items.append(self.expr())
        return N.Seq(tuple(items))

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
                    names.append(decl)
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
            names.append(N.VarDecl(name, init))
            if self.at(","):
                self.advance()
                continue
            if self.tok.kind == "ident" and not self._at_end():
                continue
            break
        return N.Decl(kind, tuple(names))

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
        return N.ArrayDecl(scope, etype, name, tuple(dims))

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
        return N.Def(name, None if params is None else tuple(params), body)

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
            if not isinstance(left, N.Name | N.Index):
                self.error("assignment to something that is not a variable")
            self.advance()
            self.skip_nl()
            return N.Assign(t.value, left, self.assignment())
        return left

    def ternary(self):
        cond = self.binary(0)
        if self.at("?"):
            self.advance()
            a = self.expr()
            self.expect(":")
            b = self.ternary()
            return N.Cond(cond, a, b)
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
                    left = N.Concat(left, right)
                    continue
                return left
            if t.kind == "op" and t.value in ops:
                self.advance()
                self.skip_nl()
                right = self.binary(level + 1)
                left = N.Binary(t.value, left, right)
                continue
            return left

    def unary(self):
        t = self.tok
        if t.kind == "op" and t.value in ("-", "+", "!", "~"):
            self.advance()
            return N.Unary(t.value, self.unary())
        if t.kind == "op" and t.value in ("++", "--"):
            self.advance()
            target = self.unary()
            if not isinstance(target, N.Name | N.Index):
                self.error(f"{t.value} needs a variable")
            return N.Incr(t.value, target, True)
        return self.postfix()

    def postfix(self):
        node = self.primary()
        while True:
            if self.at("["):
                self.advance()
                idx = self.expr()
                self.expect("]")
                node = N.Index(node, idx)
            elif self.at("(") and isinstance(node, N.Name):
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
                node = N.Call(node.name, tuple(args))
            elif self.tok.kind == "op" and self.tok.value in ("++", "--"):
                if not isinstance(node, N.Name | N.Index):
                    return node
                op = self.advance().value
                node = N.Incr(op, node, False)
            else:
                return node

    def primary(self):
        t = self.tok
        if t.kind == "num":
            self.advance()
            v = t.value
            return N.Const(float(int(v, 16)) if v[:2] in ("0x", "0X") else float(v))
        if t.kind == "str":
            self.advance()
            return N.Const(t.value)
        if t.kind == "ident" and t.value not in KEYWORDS:
            self.advance()
            return N.Name(t.value)
        if t.kind == "dollar":
            self.advance()
            return N.Const("")  # unsubstituted macro argument
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
