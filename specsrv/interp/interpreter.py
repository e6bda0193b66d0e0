"""The spec-language interpreter that runs the server's command thread.

It executes :mod:`.nodes` trees against global and local variables, macros,
the built-in functions (:mod:`.builtins`) and word commands
(:mod:`.commands`), and the instrument model (:mod:`specsrv.motors`).

The interpreter is driven by one command thread.  :meth:`Interp.abort`
(SV_ABORT, ^C) sets a flag checked at every statement, loop iteration and
wait, so even ``while (1) {}`` stops.  Hooks tell the server about variable
assignments (``on_var``) and output (``on_output``).
"""

from __future__ import annotations

import math
import os
import pwd
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

from ..motors import Instrument, MotionError
from ..protocol import ASSOC_SEP
from . import nodes as N
from .builtins import BUILTINS
from .commands import COMMANDS
from .parser import Parser, macro_substitute
from .values import (
    Assoc,
    DataArray,
    Limits,
    SpecAbort,
    SpecError,
    SpecExit,
    SpecSyntaxError,
    binary,
    fill_array,
    format_value,
    get_array_element,
    is_numeric,
    key_of,
    quote_word,
    set_array_element,
    to_num,
    to_str,
    truth,
    value_size,
)

MAX_OUTPUT = 1 << 20  # bytes of output captured for one reply


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


class _Return(Exception):
    def __init__(self, value) -> None:
        self.value = value


def _login_name() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except (KeyError, OSError):
        return os.environ.get("USER", "")


class Interp:
    """Executes spec commands against globals and the simulated hardware."""

    def __init__(
        self,
        hw: Instrument,
        *,
        name: str = "spec",
        port: int = 0,
        limits: Limits | None = None,
        data_dir: str | None = None,
    ) -> None:
        self.hw = hw
        self.limits = limits or Limits()
        #: files clients name (fprintf, on, newfile) are confined to this directory
        self.data_dir = data_dir or os.getcwd()
        #: the open scan data file (see scans.py), or None
        self.scan_file = None
        #: approximate bytes held by global variables, and by the locals of
        #: the running command (see Limits.max_memory)
        self.heap = 0
        self.local_heap = 0
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
        #: the built-in function table (shared, see builtins.py)
        self.functions = BUILTINS
        self.globals["A"] = Assoc({str(m.index): m.user for m in hw.motors})
        self.globals["S"] = Assoc({str(c.index): 0.0 for c in hw.counters})
        self.globals["DEBUG"] = 0.0
        self.globals["IS_SERVER"] = float(port)
        self.globals["SPEC"] = name
        self.globals["VERSION"] = "6.12.01"
        self.globals["PI"] = math.pi
        self.globals["COUNT_TIME"] = 1.0
        # what clients read at connect to discover the instrument
        self.globals["MOTORS"] = float(len(hw.motors))
        self.globals["COUNTERS"] = float(len(hw.counters))
        self.globals["USER"] = _login_name()
        # the standard macros' globals that scans use and clients read
        self.globals["EPOCH"] = float(int(time.time()))
        self.globals["DATAFILE"] = "/dev/null"
        self.globals["SCAN_N"] = 0.0
        self.globals["NPTS"] = 0.0
        self.builtin_assoc = {"A", "S"}
        self.constants.update({"PI", "SPEC", "VERSION", "MOTORS", "COUNTERS", "USER"})

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
        self.local_heap = 0
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
                self.append_file(f, text)

    def file_path(self, name: str) -> str:
        """The file a client names, confined to the data directory.

        Relative names are taken relative to ``data_dir``; a name (after
        symbolic links) outside it is refused.  ``/dev/null`` is allowed.  A
        data directory of ``/`` (a service started in / without
        ``--data-dir``) allows no file at all.
        """
        if name == "/dev/null":
            return name
        if not name or "\0" in name or len(name) > 4096:
            raise SpecError("Bad file name.")
        root = os.path.realpath(self.data_dir)
        if root == "/":
            # a service started in / (systemd, init scripts) without --data-dir:
            # confinement to / would be none at all
            raise SpecError(f'Can\'t open "{name}": no data directory (specsrv --data-dir DIR).')
        full = os.path.realpath(os.path.join(root, name))
        if full != root and not full.startswith(root.rstrip("/") + "/"):
            raise SpecError(f'Can\'t open "{name}": outside the data directory.')
        return full

    def append_file(self, path: str, text: str) -> None:
        full = self.file_path(path)
        try:
            with open(full, "a", encoding="utf-8") as fh:
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

    def charge(self, old, new, local: bool = False, extra: int = 0) -> None:
        """Account for ``old`` replaced by ``new``; a spec error (nothing
        stored) when all variables together would pass Limits.max_memory."""
        delta = (value_size(new) if new is not None else 0) + extra
        delta -= value_size(old) if old is not None else 0
        if delta > 0 and self.heap + self.local_heap + delta > self.limits.max_memory:
            raise SpecError(
                f"Out of memory: variables would use more than {self.limits.max_memory} bytes."
            )
        if local:
            self.local_heap = max(0, self.local_heap + delta)
        else:
            self.heap = max(0, self.heap + delta)

    def _release_frame(self, frame: dict) -> None:
        self.local_heap = max(0, self.local_heap - sum(value_size(v) for v in frame.values()))

    def set_var(self, name: str, value) -> None:
        frame = self._scope_of(name)
        if frame is not None:
            self.charge(frame.get(name), value, local=True)
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
                self.charge(old, value)
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
                    self.charge(None, Assoc(value))
                    old.update(value)
                    keys = list(value)
                else:
                    self.charge(old, Assoc(value))
                    self.globals[name] = Assoc(value)
                    keys = None
            elif isinstance(value, DataArray):
                self.charge(old, value)
                self.globals[name] = value
                keys = None
            else:
                if name in self.builtin_assoc or name in self.constants:
                    raise SpecError(f"Can't assign to {name}.")
                if isinstance(old, DataArray):
                    fill_array(old, value)
                else:
                    self.charge(old, value)
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
            old = arr.get(key)
            self.charge(old, value, extra=0 if old is not None else 80 + len(key))
            arr[key] = value
        if notify:
            self.on_var(name, key, False)

    def delete_global(self, name: str, key: str | None = None) -> bool:
        with self.lock:
            if name not in self.globals or name in self.builtin_assoc and key is None:
                return False
            if key is None:
                self.charge(self.globals.pop(name), None)
            else:
                arr = self.globals[name]
                if not isinstance(arr, Assoc) or key not in arr:
                    return False
                self.charge(arr.pop(key), None, extra=-(80 + len(key)))
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
                self._release_frame(self.frames.pop())

    def exec(self, s: N.Stmt) -> None:
        self.check()
        match s:
            case N.ExprStmt(expr):
                self.last_value = self.eval(expr)
            case N.Print(args):
                self.last_value = None
                self.write(" ".join(self.format_print(self.eval(a)) for a in args) + "\n")
            case N.Block(body):
                self.exec_block(body)
            case N.If(cond, then, other):
                if truth(self.eval(cond)):
                    self.exec(then)
                elif other is not None:
                    self.exec(other)
            case N.While(cond, body):
                while truth(self.eval(cond)):
                    self.check()
                    try:
                        self.exec(body)
                    except _Break:
                        break
                    except _Continue:
                        continue
            case N.For(init, cond, step, body):
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
            case N.ForIn(var, arr_node, body):
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
            case N.Break():
                raise _Break()
            case N.Continue():
                raise _Continue()
            case N.Return(value):
                raise _Return(None if value is None else self.eval(value))
            case N.Exit():
                raise SpecExit("exit")
            case N.Decl():
                self.exec_decl(s)
            case N.ArrayDecl():
                self.exec_arraydecl(s)
            case N.Delete(target):
                self.exec_delete(target)
            case N.Def(name, params, body):
                if name in BUILTINS or name in COMMANDS:
                    raise SpecError(f'Can\'t redefine built-in "{name}".')
                self.macros[name] = (None if params is None else list(params), body)
            case N.Undef(names):
                for n in names:
                    self.macros.pop(n, None)
            case N.Command(name, words):
                self.last_value = None
                self.run_command(name, list(words))
            case N.MacroCall(name, words, text):
                if name in self.macros or name in BUILTINS:
                    self.last_value = None
                    self.run_macro(name, list(words))
                elif self.lookup(name) is None:
                    # neither a macro, a function, a command nor a variable:
                    # an unknown command, as spec reports it
                    raise SpecError(f'Unknown command or macro "{name}".')
                else:
                    # a variable: the words were an expression (``x`` or ``x "abc"``)
                    self.last_value = self.eval_word(text) if not words else self.eval_concat(text)
            case _:  # pragma: no cover - the parser produces only the kinds above
                raise SpecError(f"unknown statement {type(s).__name__}")

    def run_command(self, name: str, words: list[str]) -> None:
        """Run the built-in word command ``name`` (see commands.py)."""
        COMMANDS[name].fn(self, name, words)

    def exec_decl(self, s: N.Decl) -> None:
        kind = s.kind
        for item in s.items:
            if isinstance(item, N.ArrayDecl):
                self.exec_arraydecl(item)
                continue
            name, init = item.name, item.init
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
                value = self.eval(init)
                with self.lock:
                    self.charge(self.globals.get(name), value)
                    self.globals[name] = value
                self.constants.add(name)
                self.on_var(name, None, False)

    def exec_arraydecl(self, s: N.ArrayDecl) -> None:
        etype, name = s.etype, s.name
        dims = [to_num(self.eval(d)) for d in s.dims]
        if not all(math.isfinite(n) and 0 < n < (1 << 40) for n in dims):
            raise SpecError(f"Bad array dimensions for {name}.")
        shape = [int(n) for n in dims]
        item = 1 if etype == "string" else np.dtype(DataArray.TYPES[etype]).itemsize
        if math.prod(shape) * item > self.limits.max_array:
            raise SpecError(
                f"Out of memory: array {name} would be larger than {self.limits.max_array} bytes."
            )
        if etype == "string":
            rows = shape[0] if len(shape) == 2 else 1
            width = shape[-1]
            arr = np.zeros(rows, dtype=f"S{width}") if len(shape) == 2 else np.zeros(1, f"S{width}")
        else:
            arr = np.zeros(shape, dtype=DataArray.TYPES[etype])
        da = DataArray(arr)
        if s.scope == "local" and self.frames:
            self.charge(self.frames[-1].get(name), da, local=True)
            self.frames[-1][name] = da
        else:
            with self.lock:
                self.charge(self.globals.get(name), da)
                self.globals[name] = da
            self.on_var(name, None, False)

    def exec_delete(self, node: N.Expr) -> None:
        if isinstance(node, N.Index) and isinstance(node.base, N.Name):
            name = node.base.name
            key = key_of(self.eval(node.key))
            frame = self._scope_of(name)
            if frame is not None:
                arr = frame[name]
                if isinstance(arr, Assoc):
                    arr.pop(key, None)
                return
            self.delete_global(name, key)
        elif isinstance(node, N.Index) and isinstance(node.base, N.Index):
            name, key = self.index_target(node)
            self.delete_global(name, key)
        elif isinstance(node, N.Name):
            arr = self.lookup(node.name)
            if isinstance(arr, Assoc) and node.name not in self.builtin_assoc:
                with self.lock:
                    keys = list(arr)
                for k in keys:
                    self.delete_global(node.name, k)
        else:
            raise SpecError("delete needs an array element.")

    def index_target(self, node) -> tuple[str, str]:
        """(array name, key) of ``arr[i]`` or ``arr[i][j]``."""
        keys = []
        while isinstance(node, N.Index):
            keys.append(key_of(self.eval(node.key)))
            node = node.base
        if not isinstance(node, N.Name):
            raise SpecError("Only named arrays can be indexed.")
        return node.name, ASSOC_SEP.join(reversed(keys))

    # -- expressions ---------------------------------------------------------------
    def eval(self, n: N.Expr):
        match n:
            case N.Const(value):
                return value
            case N.Name(name):
                return self.get_var(name)
            case N.Binary(op, left, right):
                return self.binop(op, self.eval(left), right)
            case N.Assign(op, target, value):
                return self.assign(op, target, self.eval(value))
            case N.Index():
                return self.get_index(n)
            case N.Call(name, args):
                return self.call(name, args)
            case N.Unary(op, operand):
                v = self.eval(operand)
                if op == "-":
                    return -to_num(v)
                if op == "+":
                    return to_num(v)
                if op == "!":
                    return 0.0 if truth(v) else 1.0
                return float(~int(to_num(v)) & 0xFFFFFFFF)
            case N.Concat(left, right):
                a, b = to_str(self.eval(left)), to_str(self.eval(right))
                if len(a) + len(b) > self.limits.max_string:
                    raise SpecError(f"String longer than {self.limits.max_string} characters.")
                return a + b
            case N.Cond(cond, then, other):
                return self.eval(then) if truth(self.eval(cond)) else self.eval(other)
            case N.Incr(op, target, prefix):
                old = to_num(self.eval(target))
                new = old + (1 if op == "++" else -1)
                self.store(target, new)
                return new if prefix else old
            case N.Seq(items):
                v = None
                for item in items:
                    v = self.eval(item)
                return v
        raise SpecError(f"cannot evaluate {type(n).__name__}")

    def get_index(self, n: N.Index):
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
        if isinstance(value, Assoc) and isinstance(target, N.Name):
            value = Assoc(value)
        self.store(target, value)
        return value

    def store(self, target, value) -> None:
        if isinstance(target, N.Name):
            self.set_var(target.name, value)
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
            old = arr.get(key)
            self.charge(old, value, local=True, extra=0 if old is not None else 80 + len(key))
            arr[key] = value
            return
        if name in self.hw.by_mne or name in self.constants:
            raise SpecError(f"{name} is not an array.")
        with self.lock:
            arr = self.globals.get(name)
            if arr is None or not isinstance(arr, Assoc | DataArray):
                self.globals[name] = Assoc()
        self.set_element(name, key, value, must_exist=False)

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
        fn = BUILTINS.get(name)
        if fn is not None:
            if fn.raw:
                return fn.fn(self, arg_nodes)
            return fn.fn(self, *[self.eval(a) for a in arg_nodes])
        macro = self.macros.get(name)
        if macro is not None:
            params, body = macro
            args = [self.eval(a) for a in arg_nodes]
            if params is None:
                return self.run_macro(name, [quote_word(a) for a in args])
            return self.call_function(name, params, body, args)
        if name in COMMANDS:
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
            for frame in self.frames:
                self._release_frame(frame)
            self.frames = saved

    def run_macro(self, name: str, words: list[str]):
        macro = self.macros.get(name)
        if macro is None:
            if name in BUILTINS:
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

    def sleep(self, seconds: float) -> None:
        """Wait, stopping at once on ^C."""
        if self.abort_event.wait(max(0.0, seconds)):
            self.check()

    def waitcount(self) -> None:
        self.hw.wait_count(self.aborted)
        self.check()

    def getcounts(self) -> None:
        for c in self.hw.counters:
            self.set_element("S", str(c.index), c.value, must_exist=True, notify=False)
