"""Mr. T's I/O layer: ZeroMQ receiver, UDP server, HDF5 writer, status port threads.

Threads (each owns its sockets or files; they share the
:class:`~mrt.series.SeriesStore` under one lock, :class:`StoreAccess`):

* ``zmq-receiver``: connects a PULL socket once and stays connected, decodes
  every message with :func:`mrt.protocol.decode_stream`, applies it to the
  store.  It reads the next message only while the cache has room.  Without
  HDF5 output a full cache stops the reading and ZeroMQ's flow control holds
  the detector back (no frame is ever dropped); with HDF5 output a full cache
  first releases frames the writer has safely put in the files (see
  :class:`Ingest`).  An unexpected error restarts the receiver.
  (``h5-replay`` does the same from a file.)
* ``udp``: answers pings and packet requests, datagram by datagram, reading
  released frames back from the files when a client asks for them.
* ``hdf5-writer``: writes each series to NXmx files from a queue of the
  cache's own buffers.
* ``status``: ``--status-port``, answers ``idle`` or ``running``.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable

import zmq

from common import runtime
from common.config import ConfigError
from common.options import LiveOptions
from common.ratelimit import LogLimiter
from common.server import NamesAddressOnBindError, ServerThread, address_allowed, parse_allow

from . import hdf5, protocol
from .protocol import Header, Image, SeriesEnd
from .series import Note, SeriesStore

log = logging.getLogger("mrt")
_DIGITS = re.compile(r"\d+")

ZMQ_RCVHWM = 64
#: frames the HDF5 writer's queue may hold.  Its frames are the cache's own
#: buffers (not copies), and its byte bound is the cache's, so a long queue
#: costs no memory beyond the cache: it lets the cache absorb a disk that
#: stalls for a moment instead of holding the detector back.
WRITER_QUEUE_FRAMES = 8192
MAX_ZMQ_MESSAGE = 1 << 30
#: seconds the HDF5 writer's queue stays empty before written frames are flushed
IDLE_FLUSH = 0.05
#: seconds before the ZeroMQ receiver starts again after an unexpected error
RESTART_DELAY = 0.5


class StoreAccess:
    """What the threads share: the store, its lock, the condition the receiver
    waits on for room, the stop flag and the log limiter."""

    def __init__(self, store: SeriesStore) -> None:
        self.store = store
        self.lock = threading.Lock()
        self.room = threading.Condition(self.lock)
        self.stopping = threading.Event()
        self.limiter = LogLimiter(log)

    def notes(self, notes: list[Note], key: str = "stream") -> None:
        for n in notes:
            if n.level >= logging.WARNING:
                # one key per kind of message: the text without its numbers
                kind = _DIGITS.sub("N", n.text)[:60]
                self.limiter.log(f"{key}: {kind}", n.level, "%s", n.text)
            else:
                log.log(n.level, "%s", n.text)


# -- HDF5 writer -----------------------------------------------------------------
class Hdf5Writer:
    """Writer thread fed through a queue bounded by frames and bytes."""

    def __init__(
        self,
        directory: str,
        frames_per_file: int,
        byte_limit: int,
        mask_path: str | None = None,
        max_frames: int = WRITER_QUEUE_FRAMES,
    ) -> None:
        self.directory = directory
        self.max_frames = max_frames
        self.mask_path = mask_path
        self.frames_per_file = frames_per_file
        self.byte_limit = byte_limit
        # one condition guards the queue and its bounds: the producer waits on it for
        # room, the writer thread for items (one lock round trip per frame each side)
        self._items: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._idle = False  # the writer thread waits for an item
        self._frames = 0
        self._bytes = 0
        self._thread = threading.Thread(target=self._run, name="hdf5-writer", daemon=True)
        self.current: hdf5.SeriesWriter | None = None
        self.last: hdf5.SeriesWriter | None = None  # closed, still readable for replies
        self.failed_series: int | None = None
        self.files_done = 0
        #: called (from the writer thread) after each frame is handled
        self.on_progress: Callable[[], None] | None = None

    def _series_writer(self, series_id: int) -> hdf5.SeriesWriter | None:
        for w in (self.current, self.last):
            if w is not None and w.series_id == series_id:
                return w
        return None

    def frames_on_disk(self, series_id: int) -> int:
        """Stream frames 0 .. n-1 of ``series_id`` are safely in its files."""
        w = self._series_writer(series_id)
        return w.on_disk if w is not None else 0

    def read_frame(self, series_id: int, frame: int):
        """A frame's blob read back from the files (any thread), or None."""
        w = self._series_writer(series_id)
        return w.read_frame(frame) if w is not None else None

    def start(self) -> None:
        self._thread.start()

    def has_room(self) -> bool:
        with self._cond:
            return self._room()

    def _room(self) -> bool:
        return self._frames == 0 or (
            self._frames < self.max_frames and self._bytes < self.byte_limit
        )

    def put(self, series_id: int, msg, stopping: threading.Event) -> bool:
        """Queue a message; blocks while the queue is full.  False if stopping."""
        is_image = isinstance(msg, Image)
        with self._cond:
            while not self._room():
                if stopping.is_set():
                    return False
                self._cond.wait(0.25)
            if is_image:
                self._frames += 1
                self._bytes += msg.nbytes
            self._items.append((series_id, msg))
            if self._idle:
                self._cond.notify_all()
        return True

    def _next(self):
        while True:
            with self._cond:
                w = self.current
                pending = w is not None and w.unflushed
                if not self._items:
                    self._idle = True
                    # frames written but not yet flushed: flush when the queue stays
                    # empty for a moment (so they count as on disk), not per frame
                    self._cond.wait(IDLE_FLUSH if pending else None)
                    self._idle = False
                if self._items:
                    return self._items.popleft()
            if pending:
                try:
                    w.flush()
                except Exception as exc:  # noqa: BLE001 - full disk: the next write reports it
                    log.debug("hdf5: flush: %s", exc)
                if self.on_progress is not None:
                    self.on_progress()

    def _done_with(self, msg) -> None:
        if isinstance(msg, Image):
            with self._cond:
                self._frames -= 1
                self._bytes -= msg.nbytes
                # wake a blocked producer only at the low-water mark: it then queues
                # a batch, instead of a thread switch for every frame written
                if self._frames <= self.max_frames // 2 and self._bytes <= self.byte_limit // 2:
                    self._cond.notify_all()

    def _run(self) -> None:
        while True:
            item = self._next()
            if item is None:
                break
            series_id, msg = item
            try:
                self._handle(series_id, msg)
            except Exception:  # noqa: BLE001 - a bug here must not stop the writer
                log.exception("hdf5: unexpected error")
            finally:
                self._done_with(msg)
                if self.on_progress is not None:
                    self.on_progress()
        self._close()

    def _close(self) -> None:
        w = self.current
        if w is None:
            return
        self.last, self.current = w, None  # read_frame waits on w.lock while it closes
        try:
            w.close()
            self.files_done += 1
            log.info(
                "hdf5: %s complete, %d frames in %d data files",
                w.master_path,
                w.written,
                len(w.data_paths),
            )
        except Exception as exc:  # noqa: BLE001 - disk full at close
            log.error("hdf5: closing %s failed, its files are incomplete: %s", w.master_path, exc)
            w.abandon()

    def _fail(self, series_id: int, what: str, exc: Exception) -> None:
        log.error("hdf5: %s failed (%s); series %d is not written further", what, exc, series_id)
        self.failed_series = series_id
        w, self.current = self.current, None
        if w is not None:
            w.abandon()
            self.last = w  # frames flushed before the failure can still be read back

    def _handle(self, series_id: int, msg) -> None:
        if isinstance(msg, Header):
            self._close()
            self.failed_series = None
            try:
                self.current = hdf5.SeriesWriter(
                    self.directory, msg, series_id, self.frames_per_file, self.mask_path
                )
                log.info("hdf5: series %d to %s", series_id, self.current.master_path)
            except Exception as exc:  # noqa: BLE001 - unwritable directory, full disk
                self._fail(series_id, "creating the master file", exc)
        elif isinstance(msg, Image):
            if self.current is None:
                return
            try:
                self.current.write(msg)
            except Exception as exc:  # noqa: BLE001 - full disk, I/O error
                self._fail(series_id, f"writing frame {self.current.written}", exc)
        elif isinstance(msg, SeriesEnd):
            self._close()

    def stop(self, timeout: float = 10.0) -> bool:
        with self._cond:
            self._items.append(None)
            self._cond.notify_all()
        self._thread.join(timeout)
        return self._thread.is_alive()


# -- stream input ------------------------------------------------------------------
class Ingest:
    """Applies stream messages to the store, with back-pressure; shared by the sources.

    Without HDF5 output a full cache holds the stream back (the original's
    rule: frames leave memory only when a client has fetched them).  With
    HDF5 output the store is *disk backed*: a full cache releases its lowest
    frames that the writer has safely put in the files, so archiving never
    waits for a UDP client; only a writer that cannot keep up holds the
    stream back.
    """

    def __init__(self, shared: StoreAccess, writer: Hdf5Writer | None) -> None:
        self.shared = shared
        self.writer = writer
        self._waiting = False
        if writer is not None:
            shared.store.disk_backed = True
            writer.on_progress = self._on_written

    def _on_written(self) -> None:
        # the writer thread, after each frame: wake the receiver only if it waits
        if self._waiting:
            with self.shared.room:
                self.shared.room.notify_all()

    def _make_room(self, nbytes: int) -> bool:
        """Under the lock: release frames already on disk until ``nbytes`` fit."""
        store = self.shared.store
        if self.writer is None or store.current is None:
            return False
        store.on_disk = self.writer.frames_on_disk(store.current.id)
        return store.spill_to_fit(nbytes) > 0

    def wait_for_room(self) -> bool:
        """Block until the cache (and the writer queue) can take one more frame."""
        sh = self.shared
        while not sh.stopping.is_set():
            # unlocked look first (the common case); apply() checks again under the lock
            if sh.store.has_room() and (self.writer is None or self.writer.has_room()):
                return True
            with sh.room:
                if not sh.store.has_room():
                    if self._make_room(1):
                        continue
                    self._waiting = True
                    sh.room.wait(0.1)
                    self._waiting = False
                    continue
            if self.writer is not None and not self.writer.has_room():
                time.sleep(0.005)
        return False

    def apply(self, msg) -> None:
        """Apply one message; an image waits until it fits in the cache."""
        sh = self.shared
        store = sh.store
        is_image = isinstance(msg, Image)
        with sh.room:
            while is_image and store.current is not None and not store.fits(msg.nbytes):
                if sh.stopping.is_set():
                    return
                if self._make_room(msg.nbytes):
                    continue
                self._waiting = True
                sh.room.wait(0.1)
                self._waiting = False
            skipped_before = store.stats.skipped_messages
            _, notes = store.on_stream(msg)
            # the store counts every message it skips (bad, stray, out of series):
            # only what it took goes on to the HDF5 output
            taken = store.stats.skipped_messages == skipped_before
            series = store.current.id if store.current is not None else 0
        if notes:
            sh.notes(notes)
        if self.writer is not None and taken:
            self.writer.put(series, msg, sh.stopping)


class ZmqReceiver(threading.Thread):
    """Reads the detector stream into the store.

    An unexpected exception is logged and the receiver starts again with a
    new socket after :data:`RESTART_DELAY` seconds, so mr_t never answers
    pings while it has silently stopped ingesting."""

    def __init__(
        self, endpoint: str, ingest: Ingest, context: zmq.Context, rcvhwm: int = ZMQ_RCVHWM
    ) -> None:
        super().__init__(name="zmq-receiver", daemon=True)
        self.endpoint = endpoint
        self.rcvhwm = rcvhwm
        self.ingest = ingest
        self.context = context
        self.restarts = 0
        #: test hook: a callable run on every decoded message (may raise)
        self.inspect: Callable[[object], None] | None = None

    def run(self) -> None:
        sh = self.ingest.shared
        while not sh.stopping.is_set():
            try:
                self._receive()
                return
            except zmq.ZMQError as exc:
                if sh.stopping.is_set():
                    return
                log.error("zmq: %s; receiver restarts", exc)
            except Exception:  # noqa: BLE001 - a bug must not stop ingest for good: log, restart
                log.exception("zmq receiver failed; it restarts")
            self.restarts += 1
            sh.stopping.wait(RESTART_DELAY)

    def _receive(self) -> None:
        sh = self.ingest.shared
        sock = self.context.socket(zmq.PULL)
        try:
            sock.setsockopt(zmq.RCVHWM, self.rcvhwm)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RECONNECT_IVL, 100)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
            sock.setsockopt(zmq.MAXMSGSIZE, MAX_ZMQ_MESSAGE)
            # a blocking receive that gives up after a while to look at ``stopping``:
            # one call per message, where a non-blocking try and a poll cost three
            sock.setsockopt(zmq.RCVTIMEO, 250)
            sock.connect(self.endpoint)
            log.info("zmq: PULL connected to %s", self.endpoint)
            recv = sock.recv_multipart
            decode = protocol.decode_stream
            apply = self.ingest.apply
            while not sh.stopping.is_set():
                if not self.ingest.wait_for_room():
                    break
                try:
                    parts = recv(copy=False)
                except zmq.Again:
                    continue
                # zero copy: the parts stay ZeroMQ's buffers; the cache keeps the blob's
                msg = decode([p.buffer for p in parts])
                if self.inspect is not None:
                    self.inspect(msg)
                apply(msg)
        finally:
            sock.close(0)


class H5Replay(threading.Thread):
    """``--input-h5-file``: one series from a file, then keep serving it."""

    def __init__(self, path: str, ingest: Ingest) -> None:
        super().__init__(name="h5-replay", daemon=True)
        self.path = path
        self.ingest = ingest

    def run(self) -> None:
        try:
            n = hdf5.frame_count(self.path)
            frames = hdf5.read_frames(self.path)
            first = next(frames, None)
            cfg = {"nimages": n, "ntrigger": 1}
            if first is not None:
                cfg.update(x_pixels_in_detector=first.shape[1], y_pixels_in_detector=first.shape[0])
            self.ingest.apply(Header(series=1, detail="basic", config=cfg))
            k = 0
            while first is not None and not self.ingest.shared.stopping.is_set():
                f = first
                self.ingest.apply(Image(1, k, f.shape, f.dtype, f.encoding, f.blob))
                k += 1
                first = next(frames, None)
            if not self.ingest.shared.stopping.is_set():
                self.ingest.apply(SeriesEnd(1))
                log.info("h5 replay: %d frames of %s delivered", k, self.path)
        except Exception as exc:  # noqa: BLE001 - a broken file: log, keep the UDP side up
            log.error("h5 replay of %s failed: %s", self.path, exc)


# -- UDP ---------------------------------------------------------------------------
class UdpServer(NamesAddressOnBindError, socketserver.UDPServer):
    """One thread answers every client, datagram by datagram."""

    # requests are 9 bytes; anything longer is wrong anyway and is seen truncated
    max_packet_size = 2048
    allow_reuse_address = False

    def __init__(self, addr, shared: StoreAccess, allow=None) -> None:
        self.shared = shared
        #: networks whose datagrams are answered (None: all); --udp-allow, live on SIGHUP
        self._allow = allow
        self._verdicts: dict[str, bool] = {}  # per host, bounded; cleared with the list
        #: reads a frame back from the HDF5 files: (series id, frame) -> blob or None
        self.read_frame: Callable[[int, int], object] | None = None
        self._stop_requested = False
        self._stopped = threading.Event()
        self._stopped.set()
        super().__init__(addr, socketserver.BaseRequestHandler)

    @property
    def allow(self):
        return self._allow

    @allow.setter
    def allow(self, value) -> None:
        self._allow = value
        self._verdicts = {}

    def allowed(self, host: str) -> bool:
        ok = self._verdicts.get(host)
        if ok is None:
            ok = address_allowed(host, self._allow)
            if len(self._verdicts) >= 4096:
                self._verdicts = {}
            self._verdicts[host] = ok
        return ok

    def process_request(self, request, client_address) -> None:
        data, sock = request
        self.on_datagram(data, sock, client_address)

    def serve_forever(self, poll_interval: float = 0.25) -> None:
        """Blocking receive loop: one ``recvfrom`` and one send per request.

        Stop-and-wait clients send one datagram per round trip, so a selector
        (or a socket timeout, which polls before every call) would double the
        system calls per request.  :meth:`shutdown` wakes the loop with an
        empty datagram to itself.
        """
        self._stopped.clear()
        self.socket.settimeout(None)
        recvfrom, size = self.socket.recvfrom, self.max_packet_size
        on_datagram = self.on_datagram
        try:
            while not self._stop_requested:
                try:
                    data, addr = recvfrom(size)
                except OSError as exc:
                    if self._stop_requested:
                        break
                    self.shared.limiter.log("udp-recv", logging.WARNING, "udp: receive: %s", exc)
                    time.sleep(0.01)
                    continue
                if self._stop_requested:
                    break
                try:
                    on_datagram(data, self.socket, addr)
                except Exception:  # noqa: BLE001 - one bad datagram must not stop serving
                    self.handle_error((data, self.socket), addr)
        finally:
            self._stopped.set()

    def shutdown(self) -> None:
        self._stop_requested = True
        host, port = self.server_address[:2]
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        for _ in range(10):
            try:
                with socket.socket(self.address_family, socket.SOCK_DGRAM) as s:
                    s.sendto(b"", (host, port))
            except OSError as exc:
                log.debug("udp: wake-up datagram: %s", exc)
            if self._stopped.wait(0.2):
                return

    def on_datagram(self, data: bytes, sock, addr) -> None:
        sh = self.shared
        if self._allow is not None and not self.allowed(addr[0]):
            sh.store.stats.refused_datagrams += 1
            sh.limiter.log(
                f"refused {addr[0]}",
                logging.WARNING,
                "udp: refused a datagram from %s (not in --udp-allow); %d refused in all",
                addr[0],
                sh.store.stats.refused_datagrams,
            )
            return
        store = sh.store
        with sh.lock:
            replies, notes, evicted = store.on_datagram(data)
            if evicted:
                sh.room.notify_all()
            want = store.wanted_from_disk
            if want is not None:
                series_id = store.current.id if store.current is not None else 0
        if want is not None:
            # a frame that left memory after the writer put it on disk: read it
            # back outside the lock (the receiver keeps going), then answer
            blob = self.read_frame(series_id, want) if self.read_frame is not None else None
            with sh.lock:
                if store.current is not None and store.current.id == series_id:
                    store.set_disk_frame(series_id, want, blob)
                replies, notes, evicted = store.on_datagram(data)
                store.wanted_from_disk = None
                if evicted:
                    sh.room.notify_all()
        if notes:
            self._log(notes, addr)
        for r in replies:
            try:
                sock.sendto(r, addr)
            except OSError as exc:
                sh.limiter.log(
                    f"udp-send {addr[0]}", logging.WARNING, "udp: send to %s: %s", addr, exc
                )

    def _log(self, notes: list[Note], addr) -> None:
        for n in notes:
            if n.level >= logging.WARNING:
                self.shared.limiter.log(
                    f"udp {addr[0]}", n.level, "%s from %s:%s", n.text, addr[0], addr[1]
                )
            else:
                log.log(n.level, "%s (from %s:%s)", n.text, addr[0], addr[1])

    def handle_error(self, request, client_address) -> None:
        self.shared.limiter.log(
            f"udp error {client_address[0]}",
            logging.ERROR,
            "udp: error serving %s: %r",
            client_address,
            sys.exc_info()[1],
        )
        log.debug("udp: error serving %s", client_address, exc_info=True)


# -- status port -------------------------------------------------------------------
class StatusServer(NamesAddressOnBindError, socketserver.TCPServer):
    """``--status-port``: each connection gets ``idle`` or ``running``, then is closed.

    ``running`` while a series has started and not ended.  No newline; the
    answer is 4 or 7 bytes, so one accept loop serves everyone."""

    allow_reuse_address = True
    request_queue_size = 16

    def __init__(self, addr, shared: StoreAccess, allow=None) -> None:
        self.shared = shared
        self.allow = allow
        super().__init__(addr, socketserver.BaseRequestHandler)

    def verify_request(self, request, client_address) -> bool:
        if self.allow is None or address_allowed(client_address[0], self.allow):
            return True
        self.shared.limiter.log(
            f"status refused {client_address[0]}",
            logging.WARNING,
            "status: refused a connection from %s (not in --udp-allow)",
            client_address[0],
        )
        return False

    def process_request(self, request, client_address) -> None:
        word = b"running" if self.shared.store.running else b"idle"
        try:
            request.settimeout(1.0)
            request.sendall(word)
        except OSError as exc:
            log.debug("status: %s: %s", client_address, exc)
        finally:
            self.shutdown_request(request)

    def handle_error(self, request, client_address) -> None:
        log.exception("status: error serving %s", client_address)


# -- the service -------------------------------------------------------------------
class MrT(runtime.Service):
    name = "mr_t"

    def __init__(
        self,
        *,
        udp_host: str,
        udp_port: int,
        endpoint: str | None = None,
        input_h5: str | None = None,
        frame_limit: int = 0,
        byte_limit: int,
        payload_size: int = protocol.DEFAULT_PAYLOAD,
        extended_pong: bool = False,
        pong_format: str = "plain",
        mask_path: str | None = None,
        status_port: int | None = None,
        allow=None,
        hdf5_dir: str | None = None,
        frames_per_file: int = hdf5.DEFAULT_FRAMES_PER_FILE,
        zmq_rcvhwm: int = ZMQ_RCVHWM,
        options: LiveOptions | None = None,
    ) -> None:
        self.zmq_rcvhwm = zmq_rcvhwm
        self.udp_addr = (udp_host, udp_port)
        self.endpoint = endpoint
        # absolute now: as a daemon (-d) the process works in / after the fork
        self.input_h5 = os.path.abspath(input_h5) if input_h5 is not None else None
        self.mask_path = os.path.abspath(mask_path) if mask_path else None
        self.store = SeriesStore(
            frame_limit=frame_limit,
            byte_limit=byte_limit,
            payload_size=payload_size,
            extended_pong=extended_pong,
            pong_format=pong_format,
            mask_path=mask_path or "",
        )
        self.shared = StoreAccess(self.store)
        self.hdf5_dir = os.path.abspath(hdf5_dir) if hdf5_dir is not None else None
        self.frames_per_file = frames_per_file
        self.status_port = status_port
        self.allow = allow
        self.options = options
        if options is not None:
            options.live.update(
                frame_cache_limit=self._set_frame_limit,
                frame_cache_bytes=self._set_byte_limit,
                udp_allow=self._set_allow,
            )
        self.udp: UdpServer | None = None
        self.udp_thread: ServerThread | None = None
        self.status: StatusServer | None = None
        self.status_thread: ServerThread | None = None
        self.writer: Hdf5Writer | None = None
        self.source: threading.Thread | None = None
        self.context: zmq.Context | None = None
        self.on_stopped: Callable[[], None] | None = None

    # -- live options (SIGHUP) -----------------------------------------------------
    def _set_frame_limit(self, value) -> None:
        with self.shared.room:
            self.store.frame_limit = int(value or 0)
            self.shared.room.notify_all()
        log.info("frame cache limit now %s frames", value or "no")

    def _set_byte_limit(self, value) -> None:
        with self.shared.room:
            self.store.byte_limit = int(value)
            self.shared.room.notify_all()
        if self.writer is not None:
            self.writer.byte_limit = int(value)
        log.info("frame cache limit now %d bytes", value)

    def _set_allow(self, value) -> None:
        allow = parse_allow(value)
        self.allow = allow
        for srv in (self.udp, self.status):
            if srv is not None:
                srv.allow = allow
        log.info("allow-list now %s", ", ".join(map(str, allow)) if allow else "every host")

    def bind(self) -> list:
        if self.hdf5_dir is not None and not os.path.isdir(self.hdf5_dir):
            raise ConfigError(f"--hdf5-output {self.hdf5_dir}: not a directory")
        if self.input_h5 is not None:
            try:
                hdf5.frame_count(self.input_h5)
            except Exception as exc:  # noqa: BLE001 - any reason the file cannot be used
                raise ConfigError(f"--input-h5-file {self.input_h5}: {exc}") from None
        self.udp = UdpServer(self.udp_addr, self.shared, self.allow)
        servers: list = [self.udp]
        if self.status_port is not None:
            try:
                self.status = StatusServer(
                    (self.udp_addr[0], self.status_port), self.shared, self.allow
                )
            except OSError:
                self.udp.server_close()
                raise
            servers.append(self.status)
        return servers

    def start(self) -> None:
        if self.hdf5_dir is not None:
            self.writer = Hdf5Writer(
                self.hdf5_dir, self.frames_per_file, self.store.byte_limit, self.mask_path
            )
            self.writer.start()
            self.udp.read_frame = self.writer.read_frame
        ingest = Ingest(self.shared, self.writer)
        if self.input_h5 is not None:
            self.source = H5Replay(self.input_h5, ingest)
        else:
            self.context = zmq.Context()
            self.source = ZmqReceiver(self.endpoint, ingest, self.context, self.zmq_rcvhwm)
        self.udp_thread = ServerThread(self.udp, "udp")
        self.udp_thread.start()
        if self.status is not None:
            self.status_thread = ServerThread(self.status, "status")
            self.status_thread.start()
            log.info("status port on %s:%d", *self.status.server_address[:2])
        log.info(
            "UDP on %s:%d, payload %d bytes, %s pongs, cache limit %s frames / %d bytes%s",
            self.udp.server_address[0],
            self.udp.server_address[1],
            self.store.payload_size,
            self.store.pong_format,
            self.store.frame_limit or "no",
            self.store.byte_limit,
            ", frames on disk may leave memory" if self.writer is not None else "",
        )
        self.source.start()

    def reload(self) -> str:
        st = self.store.stats
        counts = (
            f"{st.series} series, {st.frames} frames, {st.data_replies} data replies, "
            f"{st.bad_datagrams} bad datagrams, {st.refused_datagrams} refused, "
            f"{st.spilled} frames released to disk, {st.served_from_disk} served from disk"
        )
        if self.options is None:
            return f"nothing to reload; {counts}"
        return f"{self.options.reload()}; {counts}"

    def stop(self) -> int:
        self.shared.stopping.set()
        with self.shared.room:
            self.shared.room.notify_all()
        left = 0
        if self.source is not None:
            self.source.join(2.0)
            left += self.source.is_alive()
        if self.udp_thread is not None:
            self.udp_thread.stop()
            left += self.udp_thread.thread.is_alive()
        elif self.udp is not None:
            self.udp.server_close()
        if self.status_thread is not None:
            self.status_thread.stop()
            left += self.status_thread.thread.is_alive()
        elif self.status is not None:
            self.status.server_close()
        if self.writer is not None:
            left += self.writer.stop()
        if self.context is not None:
            if self.source is not None and self.source.is_alive():
                log.warning("zmq receiver still running at stop; ZeroMQ context left open")
            else:
                self.context.term()
        return int(left)
