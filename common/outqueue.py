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

import collections
import logging
import socket
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
        if n and self.on_progress is not None:
            self.on_progress()
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
            q = self._queue
            parts = [q.popleft()]
            size = len(parts[0])
            while q and len(parts) < IOV_MAX and size < GATHER_BYTES:
                nxt = q.popleft()
                parts.append(nxt)
                size += len(nxt)
            self._queued -= size
            self._busy = True
        return parts

    def _run(self) -> None:
        while True:
            parts = self._take()
            if parts is None:
                return
            left = sum(len(p) for p in parts)
            sent = 0
            try:
                while True:
                    n = self.sock.sendmsg(parts)
                    sent += n
                    if n >= left:
                        break
                    parts = _after(parts, n)
                    left -= n
            except OSError as exc:
                with self._cond:
                    self._busy = False
                    self.sent += sent
                    self._close_locked(f"send failed: {exc.strerror or exc}")
                return
            with self._cond:
                self._busy = False
                self.sent += sent
                self._cond.notify_all()  # the next batch, or flush_and_close waiters
            if self.on_progress is not None:
                self.on_progress()


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
