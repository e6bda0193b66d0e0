"""A threaded client for spec servers, with spec's own function names.

    from specsrv import client
    client.remote_eval("localhost:fourc", "2+2")          # -> 4
    client.prop_get("localhost:fourc", "motor/tth/position")
    client.prop_watch("localhost:fourc", "var/TEMP", print)

``host`` is ``host:port`` or ``host:name``; with a name the default port
range 6510-6530 is scanned for the server whose HELLO_REPLY carries that
name.  A missing host (``:fourc`` or ``fourc``) means localhost.  One
:class:`SpecConnection` per host string is kept by the module functions;
it reconnects after a lost connection and registers its watched properties
again.  The ``spec-remote`` command (:func:`main`) is the shell front end.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable

import numpy as np

from common import cli

from . import protocol as P
from . import wire
from .protocol import Cmd, Packet

log = logging.getLogger("specsrv.client")

DEFAULT_TIMEOUT = 4.0  # remote_eval's default, as in spec
HELLO_TIMEOUT = 0.5
CONNECT_TIMEOUT = 0.5
NATIVE = P.LITTLE if sys.byteorder == "little" else P.BIG


class RemoteError(Exception):
    """The server answered with SV_ERROR; ``err`` is the header's err code."""

    def __init__(self, message: str, err: int = 1) -> None:
        super().__init__(message)
        self.err = err


def parse_address(address: str) -> tuple[str, int | None, str | None]:
    """``host:port`` / ``host:name`` / ``name`` -> (host, port or None, name or None)."""
    host, sep, rest = address.rpartition(":")
    if not sep:
        host, rest = "", address
    host = host or "localhost"
    if rest.isdigit():
        return host, int(rest), None
    if not rest:
        raise ValueError(f"no server name or port in {address!r}")
    return host, None, rest


def python_value(value):
    """Decoded packet value -> what a Python caller wants (numbers parsed)."""
    if isinstance(value, P.ErrorValue):
        return value
    if isinstance(value, str):
        return text_value(value)
    if isinstance(value, dict):
        return {
            k: text_value(v) if isinstance(v, str) else v for k, v in P.nest_assoc(value).items()
        }
    return value


def text_value(text: str):
    t = text.strip()
    try:
        return int(t)
    except ValueError:
        pass
    try:
        return float(t)
    except ValueError:
        return text


def _nest_values(d):
    return {k: (_nest_values(v) if isinstance(v, dict) else text_value(v)) for k, v in d.items()}


class _Flag:
    """A one-shot event on a bare lock (cheaper to hand over than threading.Event)."""

    __slots__ = ("_lock", "_set")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self._set = False

    def set(self) -> None:
        if not self._set:
            self._set = True
            try:
                self._lock.release()
            except RuntimeError:
                pass  # set by two threads at once (a reply racing a close)

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float | None = None) -> bool:
        if self._set:
            return True
        if self._lock.acquire(timeout=-1 if timeout is None else max(timeout, 0)):
            self._lock.release()
        return self._set


class _Waiter:
    __slots__ = ("event", "packet", "error")

    def __init__(self) -> None:
        self.event = _Flag()
        self.packet: Packet | None = None
        self.error: Exception | None = None


class SpecConnection:
    """One connection to a spec server (thread-safe)."""

    def __init__(
        self,
        address: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        ports: list[int] | range | None = None,
        debug: int = 0,
        debug_out: Callable[[str], None] | None = None,
        reconnect: bool = True,
        order: str = NATIVE,
        version: int = P.SV_VERSION,
        max_data: int = P.DEFAULT_MAX_DATA,
    ) -> None:
        self.address = address
        self.host, self.port, self.name = parse_address(address)
        self.ports = (
            list(ports) if ports is not None else list(range(P.SV_PORT_FIRST, P.SV_PORT_LAST + 1))
        )
        self.timeout = timeout
        self.debug = debug
        self.debug_out = debug_out or (lambda line: print(line, file=sys.stderr, flush=True))
        self.reconnect = reconnect
        self.order = order
        self.version = version
        self.max_data = max_data
        self.server_version = P.SV_VERSION
        self.server_name: str | None = None
        self.connected_port: int | None = None
        self.state = "not connected"
        self._sock: socket.socket | None = None
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._sn = itertools.count(1)
        self._waiters: dict[int, _Waiter] = {}
        self._watch: dict[str, list[Callable]] = {}
        self._values: dict[str, object] = {}
        self._async: dict[int, _Waiter] = {}
        self._closing = False
        self._reader: threading.Thread | None = None
        self._reconnector: threading.Thread | None = None
        self._pktlog = P.PacketLog("c")
        self._ever_up = False
        #: called with ("R"|"W", packet) for every packet (specsrv --record)
        self.recorder: Callable[[str, Packet], None] | None = None

    # -- connection ----------------------------------------------------------------
    def connect(self) -> None:
        """Connect (scanning the port range for a name) and say HELLO."""
        with self._lock:
            if self.state == "up":
                return
            self._closing = False
            self.state = "trying"
        try:
            sock, port, name = self._open()
        except OSError:
            with self._lock:
                self.state = "lost" if self._ever_up else "no connection"
            raise
        with self._lock:
            self._sock = sock
            self.connected_port = port
            self.server_name = name
            self.state = "up"
            self._ever_up = True
        self._reader = threading.Thread(
            target=self._read_loop, args=(sock,), name="spec-client", daemon=True
        )
        self._reader.start()
        for prop in list(self._watch):
            self._send(Packet(cmd=Cmd.REGISTER, name=prop))

    def _open(self) -> tuple[socket.socket, int, str]:
        ports = [self.port] if self.port is not None else self.ports
        last: OSError | None = None
        for port in ports:
            try:
                sock = socket.create_connection((self.host, port), timeout=CONNECT_TIMEOUT)
            except OSError as exc:
                last = exc
                continue
            try:
                name = self._hello(sock, port)
            except OSError as exc:
                sock.close()
                last = exc
                continue
            if self.name is not None and name != self.name:
                sock.close()
                continue
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            return sock, port, name
        if self.name is not None:
            raise ConnectionError(
                f"no spec server named {self.name!r} on {self.host} ports {ports[0]}-{ports[-1]}"
            )
        raise last or ConnectionError(f"cannot connect to {self.address}")

    def _hello(self, sock: socket.socket, port: int) -> str:
        """HELLO / HELLO_REPLY exchange on a fresh socket; returns the server name."""
        sock.settimeout(
            HELLO_TIMEOUT if self.name is not None else max(HELLO_TIMEOUT, self.timeout)
        )
        sn = self._next_sn()
        pkt = Packet(cmd=Cmd.HELLO, sn=sn, name="specsrv.client")
        self._write(sock, pkt)
        dec = P.Decoder(max_data=1 << 16)
        deadline = time.monotonic() + (sock.gettimeout() or HELLO_TIMEOUT)
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(4096)
            except TimeoutError:
                break
            if not chunk:
                raise ConnectionError("closed during HELLO")
            try:
                items = P.events(dec, chunk)
            except P.ProtocolError as exc:
                raise ConnectionError(f"bad HELLO_REPLY: {exc}") from None
            for item in items:
                if isinstance(item, P.BadPacket):
                    raise ConnectionError(f"bad HELLO_REPLY: {item}")
                self._trace("R", item)
                if item.cmd == Cmd.HELLO_REPLY and item.sn == sn:
                    self.server_version = item.vers
                    return item.name or item.text()
        raise TimeoutError(f"no HELLO_REPLY from port {port}")

    def close(self) -> None:
        """remote_par(host, "close"): SV_CLOSE and no reconnection."""
        with self._lock:
            self._closing = True
            sock, self._sock = self._sock, None
            self.state = "not connected"
        if sock is not None:
            try:
                self._write(sock, Packet(cmd=Cmd.CLOSE))
            except OSError:
                pass
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(2)
        self._fail_all(ConnectionError("connection closed"))

    def __enter__(self) -> SpecConnection:
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- low level -----------------------------------------------------------------
    def _next_sn(self) -> int:
        sn = next(self._sn)
        if sn >= 1 << 30:
            self._sn = itertools.count(1)
            sn = next(self._sn)
        return sn

    def _trace(self, direction: str, pkt: Packet, raw: bytes = b"") -> None:
        if self.recorder is not None:
            self.recorder(direction, pkt)
        if self.debug & P.DEBUG_PACKETS:
            self.debug_out(self._pktlog.line(direction, pkt, time.monotonic()))

    def _write(self, sock: socket.socket, pkt: Packet) -> None:
        now = time.time()
        pkt.sec, pkt.usec = int(now), int((now % 1) * 1e6)
        data = P.encode_packet(pkt, self.order, self.version)
        self._trace("W", pkt)
        if self.debug & P.DEBUG_SOCKET:
            for line in P.socket_lines(
                "send", f"{self.host}:{self.connected_port}", data, self.debug
            ):
                self.debug_out(line)
        with self._send_lock:
            sock.sendall(data)

    def _send(self, pkt: Packet) -> None:
        sock = self._sock
        if sock is None:
            if self.state != "up" and self.reconnect and not self._closing:
                self.connect()
                sock = self._sock
            if sock is None:
                raise ConnectionError(f"not connected to {self.address}")
        try:
            self._write(sock, pkt)
        except OSError as exc:
            raise ConnectionError(f"lost connection to {self.address}: {exc}") from None

    def _ensure(self) -> None:
        if self.state != "up":
            self.connect()

    def _waiter(self, pkt: Packet) -> _Waiter:
        """Give ``pkt`` a fresh serial number and wait for a REPLY to it."""
        pkt.sn = self._next_sn()
        w = _Waiter()
        with self._lock:
            self._waiters[pkt.sn] = w
        return w

    def _forget(self, pkt: Packet) -> None:
        with self._lock:
            self._waiters.pop(pkt.sn, None)

    def request(self, pkt: Packet, timeout: float | None = None, abort_on_timeout: bool = False):
        """Send a packet that gets a REPLY; return the reply packet.

        With ``abort_on_timeout`` a timeout or ^C (KeyboardInterrupt) sends
        SV_ABORT, as spec's remote_eval() does.
        """
        self._ensure()
        w = self._waiter(pkt)
        try:
            self._send(pkt)
            limit = self.timeout if timeout is None else timeout
            try:
                arrived = w.event.wait(limit)
            except KeyboardInterrupt:
                if abort_on_timeout:
                    self._abort_quietly()
                raise
            if not arrived:
                if abort_on_timeout:
                    self._abort_quietly()
                raise TimeoutError(f"no reply from {self.address} within {limit} s")
        finally:
            self._forget(pkt)
        if w.error is not None:
            raise w.error
        return w.packet

    def _abort_quietly(self) -> None:
        try:
            self._send(Packet(cmd=Cmd.ABORT))
        except ConnectionError:
            pass

    def _read_loop(self, sock: socket.socket) -> None:
        dec = P.Decoder(max_data=self.max_data)
        peer = f"{self.host}:{self.connected_port}"
        reason = "closed by server"
        try:
            while True:
                try:
                    if not wire.fill(sock, dec):
                        break
                    items = P.events(dec)
                except OSError as exc:
                    reason = str(exc)
                    break
                except P.ProtocolError as exc:
                    log.warning("%s: %s", peer, exc)
                    reason = str(exc)
                    return
                for item in items:
                    if isinstance(item, P.BadPacket):
                        log.warning("%s: %s", peer, item)
                        continue
                    if self.debug & P.DEBUG_SOCKET:
                        for line in P.socket_lines(
                            "get", peer, item.raw_header, self.debug, len(item.raw_header)
                        ):
                            self.debug_out(line)
                        if item.data:
                            for line in P.socket_lines(
                                "get", peer, item.data, self.debug, len(item.data)
                            ):
                                self.debug_out(line)
                    self._trace("R", item)
                    self._dispatch(item)
        finally:
            self._lost(sock, reason)

    def _dispatch(self, pkt: Packet) -> None:
        if pkt.cmd == Cmd.REPLY:
            with self._lock:
                w = self._waiters.get(pkt.sn) or self._async.get(pkt.sn)
            if w is not None:
                w.packet = pkt
                w.event.set()
        elif pkt.cmd == Cmd.EVENT:
            raw = P.decode_value(pkt)
            if isinstance(raw, P.BadValue):
                log.warning("bad event for %s: %s", pkt.name, raw)
                return
            value = python_value(raw)
            if isinstance(value, dict) and not (pkt.flags & (P.SV_DELETED | P.SV_DELETED_ALT)):
                old = self._values.get(pkt.name)
                if isinstance(old, dict):
                    merged = dict(old)
                    merged.update(value)
                    self._values[pkt.name] = merged
                else:
                    self._values[pkt.name] = value
            elif pkt.flags & (P.SV_DELETED | P.SV_DELETED_ALT):
                old = self._values.get(pkt.name)
                if isinstance(old, dict) and isinstance(value, dict):
                    self._values[pkt.name] = {k: v for k, v in old.items() if k not in value}
                else:
                    self._values.pop(pkt.name, None)
            else:
                self._values[pkt.name] = value
            for cb in list(self._watch.get(pkt.name, ())):
                try:
                    cb(value, pkt.name, pkt.flags)
                except Exception:  # noqa: BLE001 - a user callback must not kill the reader
                    log.exception("watch callback for %s failed", pkt.name)
        elif pkt.cmd == Cmd.HELLO_REPLY:
            pass

    def _lost(self, sock: socket.socket, reason: str) -> None:
        with self._lock:
            if self._sock is sock:
                self._sock = None
                if not self._closing:
                    self.state = "lost"
            closing = self._closing
        try:
            sock.close()
        except OSError:
            pass
        self._fail_all(ConnectionError(f"connection to {self.address} lost: {reason}"))
        if not closing and self.reconnect:
            log.info("connection to %s lost (%s); reconnecting", self.address, reason)
            self._reconnector = threading.Thread(
                target=self._reconnect_loop, name="spec-reconnect", daemon=True
            )
            self._reconnector.start()

    def _reconnect_loop(self) -> None:
        delay = 0.2
        while not self._closing and self.state != "up":
            try:
                self.connect()
                log.info("reconnected to %s", self.address)
                return
            except OSError:
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _fail_all(self, exc: Exception) -> None:
        with self._lock:
            waiters = list(self._waiters.values())
            self._waiters.clear()
            for w in self._async.values():
                if not w.event.is_set():
                    w.error = exc
        for w in waiters:
            w.error = exc
            w.event.set()

    # -- spec's functions -------------------------------------------------------
    def prop_get(self, prop: str, timeout: float | None = None):
        reply = self.request(Packet(cmd=Cmd.CHAN_READ, name=prop), timeout)
        return self._result(reply)

    def prop_put(self, prop: str, value, check: bool = False) -> None:
        """SV_CHAN_SEND (no reply on success).

        With ``check`` the packet carries a serial number and a CHAN_READ of
        ``status/ready`` follows; an SV_ERROR answer to the send, which the
        server sends before that reply, raises RemoteError.
        """
        self._ensure()
        pkt = P.make_packet(Cmd.CHAN_SEND, value, name=prop, order=self.order)
        if not check:
            self._send(pkt)
            return
        w = self._waiter(pkt)
        try:
            self._send(pkt)
            self.request(Packet(cmd=Cmd.CHAN_READ, name="status/ready"))
        finally:
            self._forget(pkt)
        if w.packet is not None:
            self._result(w.packet)

    def prop_watch(self, prop: str, callback: Callable | None = None) -> None:
        """Register ``prop``; ``callback(value, prop, flags)`` runs on each event."""
        first = prop not in self._watch
        lst = self._watch.setdefault(prop, [])
        if callback is not None:
            lst.append(callback)
        if first:
            self._ensure()
            self._send(Packet(cmd=Cmd.REGISTER, name=prop))
        elif callback is not None and prop in self._values:
            # already registered: the new callback starts from the cached value
            callback(self._values[prop], prop, 0)

    def prop_unwatch(self, prop: str) -> None:
        if self._watch.pop(prop, None) is not None and self.state == "up":
            self._send(Packet(cmd=Cmd.UNREGISTER, name=prop))
        self._values.pop(prop, None)

    def watched_value(self, prop: str, default=None):
        """Latest value received in an event for a watched property."""
        return self._values.get(prop, default)

    def remote_cmd(self, cmd: str) -> None:
        self._ensure()
        self._send(Packet(cmd=Cmd.CMD, data=P.encode_text(cmd)))

    def remote_eval(self, cmd: str, timeout: float | None = None):
        """Run ``cmd`` on the server and return its result (RemoteError on SV_ERROR)."""
        reply = self.request(
            Packet(cmd=Cmd.CMD_WITH_RETURN, data=P.encode_text(cmd)), timeout, abort_on_timeout=True
        )
        return self._result(reply)

    def remote_func(self, name: str, *args, timeout: float | None = None):
        """SV_FUNC_WITH_RETURN: ``name`` and its arguments separated by NULs."""
        parts = [name] + [_func_arg(a) for a in args]
        data = b"".join(P.encode_text(p) for p in parts)
        cmd = (
            Cmd.FUNC_WITH_RETURN
            if self.server_version >= P.FUNC_MIN_VERSION
            else Cmd.CMD_WITH_RETURN
        )
        if cmd == Cmd.CMD_WITH_RETURN:
            data = P.encode_text(f"{name}({', '.join(parts[1:])})")
        reply = self.request(Packet(cmd=cmd, data=data), timeout, abort_on_timeout=True)
        return self._result(reply)

    def remote_async(self, cmd: str) -> int:
        self._ensure()
        sn = self._next_sn()
        w = _Waiter()
        with self._lock:
            self._async[sn] = w
            if len(self._async) > 10000:
                self._async.pop(next(iter(self._async)))
        self._send(Packet(cmd=Cmd.CMD_WITH_RETURN, sn=sn, data=P.encode_text(cmd)))
        return sn

    def remote_poll(self, ident: int, what: str | None = None):
        with self._lock:
            w = self._async.get(ident)
        if what == "status":
            if w is None or w.error is not None:
                return -1
            return 1 if w.event.is_set() else 0
        if w is None or w.error is not None:
            return -1
        with self._lock:
            self._async.pop(ident, None)
        if not w.event.is_set():
            return 0
        return self._result(w.packet)

    def remote_stat(self, what: str | None = None):
        if what == "?":
            return self.state
        return 1 if self.state == "up" else 0

    def remote_par(self, what: str, value=None):
        if what == "connect":
            self.connect()
            return 1
        if what == "close":
            self.close()
            return 0
        if what == "abort":
            self._ensure()
            self._send(Packet(cmd=Cmd.ABORT))
            return 0
        if what == "timeout":
            if value is not None:
                self.timeout = float(value)
            return self.timeout
        raise ValueError(f"remote_par: unknown option {what!r}")

    def _result(self, reply: Packet):
        value = P.decode_value(reply)
        if isinstance(value, P.BadValue):
            raise RemoteError(f"bad reply: {value}", 2)
        if isinstance(value, P.ErrorValue) or reply.err > 0:
            msg = value.message if isinstance(value, P.ErrorValue) else str(value)
            raise RemoteError(msg, reply.err or 1)
        if isinstance(value, dict):
            return _nest_values(P.nest_assoc(value))
        return python_value(value)


def _func_arg(a) -> str:
    if isinstance(a, str):
        return repr(a)
    if isinstance(a, dict):
        return "[" + ", ".join(f"{_func_arg(k)}: {_func_arg(v)}" for k, v in a.items()) + "]"
    if isinstance(a, float | int):
        return P.format_number(a)
    return repr(a)


# -- spec-style module functions ------------------------------------------------------

_connections: dict[str, SpecConnection] = {}
_conn_lock = threading.Lock()
_async_hosts: dict[int, SpecConnection] = {}


def connection(host: str, **kw) -> SpecConnection:
    """The shared connection for ``host`` (created on first use)."""
    with _conn_lock:
        c = _connections.get(host)
        if c is None:
            c = _connections[host] = SpecConnection(host, **kw)
    return c


def prop_get(host: str, prop: str):
    return connection(host).prop_get(prop)


def prop_put(host: str, prop: str, value) -> None:
    connection(host).prop_put(prop, value)


def prop_watch(host: str, prop: str, callback: Callable | None = None) -> None:
    connection(host).prop_watch(prop, callback)


def remote_cmd(host: str, cmd: str) -> None:
    connection(host).remote_cmd(cmd)


def remote_eval(host: str, cmd: str):
    return connection(host).remote_eval(cmd)


def remote_async(host: str, cmd: str) -> int:
    c = connection(host)
    ident = c.remote_async(cmd)
    _async_hosts[ident] = c
    return ident


def remote_poll(ident: int, what: str | None = None):
    c = _async_hosts.get(ident)
    if c is None:
        return -1
    r = c.remote_poll(ident, what)
    if what != "status":
        _async_hosts.pop(ident, None)
    return r


def remote_stat(host: str, what: str | None = None):
    c = _connections.get(host)
    if c is None:
        return "not connected" if what == "?" else 0
    return c.remote_stat(what)


def remote_par(host: str, what: str, value=None):
    c = connection(host)
    r = c.remote_par(what, value)
    if what == "close":
        with _conn_lock:
            _connections.pop(host, None)
    return r


# -- spec-remote -------------------------------------------------------------------------

EXIT_OK, EXIT_CONN, EXIT_USAGE, EXIT_TIMEOUT, EXIT_REMOTE = 0, 1, 2, 3, 4


def format_result(value) -> str:
    if isinstance(value, dict):
        lines = []
        for k, v in value.items():
            if isinstance(v, dict):
                lines.extend(f"{k}[{k2}]={format_result(v2)}" for k2, v2 in v.items())
            else:
                lines.append(f"{k}={format_result(v)}")
        return "\n".join(lines)
    if isinstance(value, np.ndarray):
        if value.ndim == 2:
            return "\n".join(" ".join(_fmt_scalar(x) for x in row) for row in value)
        return "\n".join(_fmt_scalar(x) for x in value)
    return _fmt_scalar(value)


def _fmt_scalar(x) -> str:
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float):
        return P.format_number(x)
    return str(x)


def build_parser() -> argparse.ArgumentParser:
    p = cli.make_parser(
        "spec-remote",
        "Talk to a spec server from the shell: eval, cmd, get, put, watch, abort, stat.\n\n"
        "  spec-remote HOST:NAME eval 'wa'\n"
        "  spec-remote HOST:NAME get motor/tth/position\n"
        "  spec-remote HOST:NAME put var/TEMP 25\n"
        "  spec-remote HOST:NAME watch motor/tth/position -n 10",
    )
    p.add_argument("address", metavar="HOST:NAME|HOST:PORT", help="the server")
    p.add_argument(
        "action",
        choices=("eval", "cmd", "func", "get", "put", "watch", "abort", "stat"),
        help="what to do",
    )
    p.add_argument("args", nargs="*", help="command text, property, value")
    p.add_argument(
        "-t",
        "--timeout",
        dest="timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"reply timeout; for watch, how long to watch (default {DEFAULT_TIMEOUT:g})",
    )
    p.add_argument(
        "-n",
        dest="count",
        type=cli.positive_int,
        default=None,
        metavar="N",
        help="watch: stop after N events",
    )
    p.add_argument(
        "-a",
        "--assoc",
        dest="assoc",
        action="store_true",
        help="put: the values are KEY=VALUE words of an associative array",
    )
    p.add_argument(
        "-o",
        "--output",
        dest="output",
        action="store_true",
        help="eval: also print the server's tty output as it happens",
    )
    p.add_argument(
        "-D",
        dest="debug",
        type=lambda s: int(s, 0),
        default=0,
        metavar="LEVEL",
        help="debug level as in spec (0x1000 packets)",
    )
    p.add_argument(
        "--ports",
        dest="ports",
        default=None,
        metavar="LOW-HIGH",
        help="port range scanned for a server name (default 6510-6530)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = cli.parse_or_exit(build_parser(), argv)
    ports = None
    if args.ports:
        from .cli import parse_ports

        try:
            ports = parse_ports(args.ports)
        except argparse.ArgumentTypeError as exc:
            print(f"spec-remote: --ports: {exc}", file=sys.stderr)
            return EXIT_USAGE
    try:
        conn = SpecConnection(
            args.address, timeout=args.timeout, ports=ports, debug=args.debug, reconnect=False
        )
    except ValueError as exc:
        print(f"spec-remote: {exc}", file=sys.stderr)
        return EXIT_USAGE
    need = {"eval": 1, "cmd": 1, "func": 1, "get": 1, "put": 2, "watch": 1, "abort": 0, "stat": 0}[
        args.action
    ]
    if len(args.args) < need or (args.action in ("get",) and len(args.args) != 1):
        print(f"spec-remote: {args.action} needs {need} argument(s)", file=sys.stderr)
        return EXIT_USAGE
    if args.action == "stat":
        try:
            conn.connect()
        except OSError:
            pass
        print(conn.remote_stat("?"))
        conn.close()
        return EXIT_OK if conn.server_name else EXIT_CONN
    try:
        conn.connect()
    except OSError as exc:
        print(f"spec-remote: {exc}", file=sys.stderr)
        return EXIT_CONN
    try:
        return _act(conn, args)
    except RemoteError as exc:
        print(f"spec-remote: {exc}", file=sys.stderr)
        return EXIT_REMOTE
    except TimeoutError as exc:
        print(f"spec-remote: {exc}", file=sys.stderr)
        return EXIT_TIMEOUT
    except (ConnectionError, OSError) as exc:
        print(f"spec-remote: {exc}", file=sys.stderr)
        return EXIT_CONN
    except KeyboardInterrupt:
        try:
            conn.remote_par("abort")
        except OSError:
            pass
        return 130
    finally:
        conn.close()


def _act(conn: SpecConnection, args) -> int:
    a = args.args
    if args.action in ("eval", "cmd"):
        text = " ".join(a)
        if args.action == "cmd":
            conn.remote_cmd(text)
            return EXIT_OK
        if args.output:
            conn.prop_watch("output/tty", lambda v, p, f: print(v, end="", flush=True))
            value = conn.remote_eval(text)
            if isinstance(value, str) and value:
                return EXIT_OK  # the text came as output events already
        else:
            value = conn.remote_eval(text)
        out = format_result(value)
        print(out, end="" if out.endswith("\n") else "\n")
        return EXIT_OK
    if args.action == "func":
        value = conn.remote_func(a[0], *[text_value(x) for x in a[1:]])
        print(format_result(value))
        return EXIT_OK
    if args.action == "get":
        print(format_result(conn.prop_get(a[0])))
        return EXIT_OK
    if args.action == "put":
        if args.assoc:
            items = {}
            for w in a[1:]:
                k, sep, v = w.partition("=")
                if not sep:
                    print(f"spec-remote: expected KEY=VALUE, got {w!r}", file=sys.stderr)
                    return EXIT_USAGE
                items[k] = v
            conn.prop_put(a[0], items, check=True)
        else:
            conn.prop_put(a[0], " ".join(a[1:]), check=True)
        return EXIT_OK
    if args.action == "watch":
        done = threading.Event()
        count = [0]

        def show(value, prop, flags):
            tag = " (deleted)" if flags & (P.SV_DELETED | P.SV_DELETED_ALT) else ""
            print(f"{prop} {format_result(value)}{tag}", flush=True)
            count[0] += 1
            if args.count and count[0] >= args.count:
                done.set()

        for prop in a:
            conn.prop_watch(prop, show)
        done.wait(args.timeout)
        return EXIT_OK
    if args.action == "abort":
        conn.remote_par("abort")
        return EXIT_OK
    return EXIT_USAGE  # pragma: no cover - argparse limits the choices


if __name__ == "__main__":
    sys.exit(main())
