"""A bounded outgoing queue per client, drained by gathered writes.

Servers that push records to many clients (marserver's fan-out, spec server
mode's events) must never wait for the slowest client.  :class:`OutQueue`
gives one client:

* a queue of byte records (``bytes``, ``bytearray`` or ``memoryview``; kept by
  reference, never copied), bounded by **bytes** (``max_bytes``) and by
  **records** (``max_records``);
* a *fast path*: when nothing is queued or being sent, :meth:`put` hands the
  record to the kernel at once with a non-blocking ``sendmsg`` from the
  caller's thread (no thread hand-off, lowest latency); what the kernel does
  not take is queued;
* a writer thread, the only one ever to block on this client, that sends
  everything queued with one ``socket.sendmsg`` (a gathered write of up to
  :data:`IOV_MAX` records or :data:`GATHER_BYTES` bytes; a partial write
  continues from a ``memoryview`` slice, no record is copied or joined);
* the policy when a client falls behind: a :meth:`put` that would pass
  either bound **drops the client** (the queue is cleared and the socket shut
  down, :attr:`reason` says why, ``on_overflow`` is called or a WARNING
  logged) and nothing else waits for it;
* an optional ``on_progress`` callback after each send that moved bytes, so
  that a producer using back-pressure (marserver ``--backpressure``) can wait
  for :attr:`backlog` to fall and be woken when it does.

Usage::

    q = OutQueue(sock, max_bytes=4 << 20, name="DATA 127.0.0.1:4711")
    q.start()
    q.put(record)              # False once the client is gone
    q.put(header, payload)     # several parts queued together, in order
    q.flush_and_close(2.0)     # or q.close("reason")

Per-client memory is at most ``max_bytes`` of queued records (shared with the
producer, which usually hands the same record to every client) plus
``max_records`` queue slots.
"""

from __future__ import annotations

import array
import collections
import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import select
import socket
import sys
import termios
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

#: default bound on queued bytes per client
DEFAULT_MAX_BYTES = 4 * 1024 * 1024
#: default bound on queued records per client
DEFAULT_MAX_RECORDS = 65536
#: at most this many records go into one gathered write (Linux IOV_MAX is 1024)
IOV_MAX = 1024
#: ... and at most about this many bytes
GATHER_BYTES = 1 << 20
#: largest pipe a :class:`PipeOutQueue` asks for (the unprivileged kernel limit)
PIPE_MAX = 1 << 20
#: socket timeout a :class:`PipeOutQueue` sets when there is none (see there)
SOCKET_WAIT = 86400.0
#: how long the pipe writer waits for socket space between checks, ms
POLL_MS = 200

Buffer = bytes | bytearray | memoryview


def _quiet_shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def send_gathered(sock: socket.socket, parts: list[Buffer], flags: int = 0) -> int:
    """One ``sendmsg`` of ``parts``; returns bytes sent (0 if it would block)."""
    try:
        return sock.sendmsg(parts, [], flags)
    except (BlockingIOError, InterruptedError):
        return 0


class OutQueue:
    """One client's bounded outgoing queue and the writer thread that drains it."""

    def __init__(
        self,
        sock: socket.socket,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_records: int = DEFAULT_MAX_RECORDS,
        name: str = "client",
        on_progress: Callable[[], None] | None = None,
        on_overflow: Callable[[OutQueue, int, int], None] | None = None,
        fast_path: bool = True,
    ) -> None:
        if max_bytes <= 0 or max_records <= 0:
            raise ValueError("max_bytes and max_records must be positive")
        self.sock = sock
        self.max_bytes = max_bytes
        self.max_records = max_records
        self.name = name
        self.on_progress = on_progress
        self.on_overflow = on_overflow
        self.fast_path = fast_path
        self._queue: collections.deque[Buffer] = collections.deque()
        self._queued = 0
        self._busy = False  # a send (fast path or writer) is in progress
        self._cond = threading.Condition()
        self.closed = False
        self.reason = ""
        self.sent = 0
        #: when a send last moved bytes (monotonic), for telling slow from stalled
        self.last_progress = time.monotonic()
        self.thread = threading.Thread(target=self._run, name=f"writer-{name}", daemon=True)

    def start(self) -> OutQueue:
        self.thread.start()
        return self

    # -- state -------------------------------------------------------------
    @property
    def backlog(self) -> int:
        """Bytes waiting (read without the lock: a hint for flow control)."""
        return self._queued

    def __len__(self) -> int:
        return len(self._queue)

    # -- producer side -----------------------------------------------------
    def put(self, record: Buffer, *more: Buffer) -> bool:
        """Queue ``record`` (and ``more``, in order) without blocking.

        Returns False if the client is gone, or is dropped now because the
        records would pass ``max_bytes`` or ``max_records``.
        """
        parts = [record, *more] if more else [record]
        size = sum(len(p) for p in parts) if more else len(record)
        with self._cond:
            if self.closed:
                return False
            if self._queue or self._busy or not self.fast_path:
                if (
                    self._queued + size > self.max_bytes
                    or len(self._queue) + len(parts) > self.max_records
                ):
                    self._overflow_locked(size)
                    return False
                self._queue.extend(parts)
                self._queued += size
                self._cond.notify()
                return True
            self._busy = True
        try:
            n = self.sock.sendmsg(parts, [], socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as exc:
            with self._cond:
                self._busy = False
                self._close_locked(f"send failed: {exc.strerror or exc}")
            return False
        with self._cond:
            self._busy = False
            self.sent += n
            if n < size and not self.closed:
                rest = _after(parts, n)
                self._queue.extendleft(reversed(rest))
                self._queued += size - n
            if self._queue:  # records queued meanwhile or a remainder: wake the writer
                self._cond.notify()
        if n:
            self._progressed()
        return True

    def close(self, reason: str = "closed") -> None:
        with self._cond:
            self._close_locked(reason)

    def flush_and_close(self, timeout: float, reason: str = "closed") -> bool:
        """Wait up to ``timeout`` s for the queue to drain, then close; True if it drained."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while (self._queue or self._busy) and not self.closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.05))
            drained = not self._queue and not self._busy
            self._close_locked(reason)
        return drained

    def join(self, timeout: float | None = None) -> None:
        if self.thread.is_alive():
            self.thread.join(timeout)

    # -- internals ---------------------------------------------------------
    def _progressed(self) -> None:
        self.last_progress = time.monotonic()
        if self.on_progress is not None:
            self.on_progress()

    def _overflow_locked(self, size: int) -> None:
        queued, records = self._queued, len(self._queue)
        self._close_locked(
            f"fell behind: {queued} bytes in {records} records queued"
            f" (limits {self.max_bytes} bytes, {self.max_records} records)"
        )
        if self.on_overflow is not None:
            self.on_overflow(self, queued, records)
        else:
            log.warning(
                "%s: disconnecting slow client: %d bytes in %d records queued, limits %d bytes,"
                " %d records",
                self.name,
                queued,
                records,
                self.max_bytes,
                self.max_records,
            )

    def _close_locked(self, reason: str) -> None:
        if not self.closed:
            self.closed = True
            self.reason = reason
            self._queue.clear()
            self._queued = 0
            self._cond.notify_all()
            _quiet_shutdown(self.sock)

    def _take(self) -> list[Buffer] | None:
        with self._cond:
            while (not self._queue or self._busy) and not self.closed:
                self._cond.wait()
            if self.closed:
                return None
            self._busy = True
            return self._pop_batch_locked()

    def _pop_batch_locked(self) -> list[Buffer]:
        """Up to IOV_MAX queued records (about GATHER_BYTES) for one gathered write."""
        q = self._queue
        parts = [q.popleft()]
        size = len(parts[0])
        while q and len(parts) < IOV_MAX and size < GATHER_BYTES:
            parts.append(q.popleft())
            size += len(parts[-1])
        self._queued -= size
        return parts

    def _run(self) -> None:
        while True:
            parts = self._take()
            if parts is None:
                return
            try:
                self._send_parts(parts)
            except OSError as exc:
                with self._cond:
                    self._busy = False
                    self._close_locked(f"send failed: {exc.strerror or exc}")
                return
            with self._cond:
                self._busy = False
                self._cond.notify_all()  # the next batch, or flush_and_close waiters
            self._progressed()

    def _send_parts(self, parts: list[Buffer]) -> None:
        """One gathered write of ``parts``, continued after partial sends (no copies)."""
        left = sum(len(p) for p in parts)
        while True:
            n = self.sock.sendmsg(parts)
            self.sent += n
            if n >= left:
                return
            parts = _after(parts, n)
            left -= n


def _after(parts: list[Buffer], n: int) -> list[Buffer]:
    """``parts`` without their first ``n`` bytes (a memoryview slice, no copy)."""
    i = 0
    while i < len(parts) and n >= len(parts[i]):
        n -= len(parts[i])
        i += 1
    rest = parts[i:]
    if n and rest:
        rest[0] = memoryview(rest[0])[n:]
    return rest


# ---------------------------------------------------------------------------
# by reference: a kernel pipe in front of the queue (Linux tee/splice)


def _load_tee():
    """libc ``tee(2)`` through ctypes, or None where there is none."""
    if not hasattr(os, "splice") or not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.tee
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_uint]
    fn.restype = ctypes.c_ssize_t
    return fn


_tee = _load_tee()
SPLICE_F_NONBLOCK = 2


def pipe_fill(fd: int) -> int:
    """Bytes waiting in a pipe (FIONREAD)."""
    buf = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, buf)
    return buf[0]


def make_pipe(capacity: int) -> tuple[int, int, int]:
    """A pipe of about ``capacity`` bytes (as far as the kernel allows): (r, w, size)."""
    r, w = os.pipe2(os.O_CLOEXEC)
    capacity = max(4096, min(capacity, 1 << 30))  # a C int for fcntl
    try:
        size = fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, capacity)
    except OSError:  # over the per-user pipe allowance: keep the default size
        size = fcntl.fcntl(w, fcntl.F_GETPIPE_SZ)
    return r, w, size


def tee_available() -> bool:
    return _tee is not None


def tee(src: int, dst: int, n: int) -> int:
    """Duplicate up to ``n`` bytes from pipe ``src`` into pipe ``dst`` without copying
    or consuming them; 0 if ``dst`` is full."""
    got = _tee(src, dst, n, SPLICE_F_NONBLOCK)
    if got < 0:
        err = ctypes.get_errno()
        if err in (errno.EAGAIN, errno.EINTR):
            return 0
        raise OSError(err, os.strerror(err))
    return got


class PipeOutQueue(OutQueue):
    """An :class:`OutQueue` whose records can also arrive by reference.

    A producer that holds its records in a kernel pipe (a fan-out reading
    the source with ``splice``) duplicates them into this client's pipe with
    :meth:`offer_pipe` (``tee(2)``: no byte is copied), and the writer thread
    moves them on to the socket with ``splice(2)``.  When the client's pipe
    has no room for a chunk, the producer gives the bytes to :meth:`put`
    instead: the client is then served from the ordinary queue (its pipe is
    drained first, so the order is kept) until that queue is empty, and then
    by reference again.  The bound is the same as :class:`OutQueue`'s: pipe
    contents plus queued bytes may not pass ``max_bytes``.

    The socket gets a timeout (:data:`SOCKET_WAIT`) if it has none: its
    descriptor is then non-blocking, and a reader of the same socket sees
    ``TimeoutError`` after that long without data.
    """

    def __init__(self, sock: socket.socket, **kw) -> None:
        kw["fast_path"] = False
        super().__init__(sock, **kw)
        # a socket timeout makes the descriptor non-blocking (Python waits in
        # poll instead), so that splice never sleeps holding the pipe
        if sock.gettimeout() is None:
            sock.settimeout(SOCKET_WAIT)
        cap = min(self.max_bytes, PIPE_MAX)
        self._r, self._w, self.pipe_size = make_pipe(cap)
        self._by_pipe = True  # False while records go through the ordinary queue
        self._kicked = False  # bytes in the pipe for the writer thread
        self._fast = False  # the producer is moving pipe bytes to the socket itself
        self.thread = threading.Thread(target=self._run_pipe, name=self.thread.name, daemon=True)

    @property
    def backlog(self) -> int:
        try:
            return self._queued + (pipe_fill(self._r) if not self.closed else 0)
        except OSError:
            return self._queued

    def offer_pipe(self, src: int, n: int) -> int:
        """tee ``n`` bytes from pipe ``src``; returns how many went (``n``, fewer, or 0).

        Like :meth:`OutQueue.put`, the bytes go straight on to the socket from
        the caller's thread when the writer is idle (no thread hand-off); what
        the socket does not take stays in the pipe for the writer thread.
        """
        with self._cond:
            if self.closed or not self._by_pipe:
                return 0
            if pipe_fill(self._r) + n > self.pipe_size:
                return 0
            got = tee(src, self._w, n)
            if not got:
                return 0
            if self._busy:  # the writer is sending: it looks at the pipe again after
                self._kicked = True
                self._cond.notify_all()
                return got
            self._fast = True
        try:
            left = self._splice_out()
        except OSError as exc:
            with self._cond:
                self._fast = False
                self._close_locked(f"send failed: {exc.strerror or exc}")
                self._cond.notify_all()
            return got
        with self._cond:
            self._fast = False
            if left:
                self._kicked = True
            self._cond.notify_all()
        return got

    def _splice_out(self) -> bool:
        """Move the pipe's bytes to the socket until it would block; True if some are left."""
        fd = self.sock.fileno()
        while True:
            try:
                n = os.splice(self._r, fd, self.pipe_size, flags=SPLICE_F_NONBLOCK)
            except BlockingIOError:
                # the pipe is empty, or the socket full (its descriptor is non-blocking)
                return pipe_fill(self._r) > 0
            if n <= 0:
                return False
            self.sent += n
            self._progressed()

    def put(self, record: Buffer, *more: Buffer) -> bool:
        parts = [record, *more]
        size = sum(len(p) for p in parts)
        with self._cond:
            if self.closed:
                return False
            in_pipe = pipe_fill(self._r)
            if (
                in_pipe + self._queued + size > self.max_bytes
                or len(self._queue) + len(parts) > self.max_records
            ):
                self._queued += in_pipe  # for the message: everything waiting
                self._overflow_locked(size)
                return False
            self._by_pipe = False
            self._queue.extend(parts)
            self._queued += size
            self._cond.notify()
            return True

    def _run_pipe(self) -> None:
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLOUT)
        try:
            while True:
                with self._cond:
                    while self._fast or not (self._kicked or self._queue or self.closed):
                        self._cond.wait()
                    if self.closed:
                        return
                    self._kicked = False
                    self._busy = True
                # the pipe first: what is in it is older than anything queued;
                # wait for socket space outside splice, which would hold the
                # pipe (and with it the producer) meanwhile
                while self._splice_out():
                    poller.poll(POLL_MS)
                    if self.closed:
                        return
                with self._cond:
                    if not self._queue:
                        self._busy = False
                        if not self._by_pipe and pipe_fill(self._r) == 0:
                            self._by_pipe = True
                        continue
                    parts = self._pop_batch_locked()
                self._send_parts(parts)
                with self._cond:
                    self._busy = False
                self._progressed()
        except OSError as exc:
            with self._cond:
                self._close_locked(f"send failed: {exc.strerror or exc}")
        finally:
            with self._cond:
                self._close_locked(self.reason or "closed")
                self._busy = False
                self._cond.notify_all()
                # close the pipe once the producer's fast path is out of it
                while self._fast:
                    self._cond.wait(0.05)
                for p in (self._r, self._w):
                    with contextlib.suppress(OSError):
                        os.close(p)
                self._r = self._w = -1
