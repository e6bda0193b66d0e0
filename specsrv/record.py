"""Packet recording (``specsrv --record FILE``): one JSON line per packet.

To compare what a real spec sends with what specsrv sends, every packet the
server reads or writes, and every packet of the gateway's links to other
spec servers, is appended to FILE as::

    {"t": 1764752400.123456, "dir": "R", "side": "server", "peer": "127.0.0.1:50312",
     "vers": 4, "cmd": "CHAN_READ", "sn": 7, "type": 2, "rows": 0, "cols": 0,
     "err": 0, "flags": 0, "name": "motor/tth/position", "len": 0, "data": ""}

``dir`` is R (received) or W (written), ``side`` is ``server`` (specsrv's
clients) or ``gateway`` (specsrv as the client of another server), ``data``
the first :data:`DATA_BYTES` bytes of the data as hex.  The file is bounded:
past ``max_bytes`` recording stops with one log line.
"""

from __future__ import annotations

import json
import logging
import threading
import time

from .protocol import Packet

log = logging.getLogger("specsrv")

DATA_BYTES = 256
DEFAULT_MAX_BYTES = 256 << 20


class PacketRecorder:
    def __init__(self, path: str, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 - open for the server's life
        self._lock = threading.Lock()
        self.written = 0
        self.full = False

    def record(self, direction: str, side: str, peer: str, pkt: Packet) -> None:
        if self.full:
            return
        line = json.dumps(
            {
                "t": round(time.time(), 6),
                "dir": direction,
                "side": side,
                "peer": peer,
                "vers": pkt.vers,
                "cmd": pkt.cmd_name,
                "sn": pkt.sn,
                "type": int(pkt.type),
                "rows": pkt.rows,
                "cols": pkt.cols,
                "err": pkt.err,
                "flags": pkt.flags,
                "name": pkt.name,
                "len": len(pkt.data),
                "data": bytes(pkt.data[:DATA_BYTES]).hex(),
            }
        )
        with self._lock:
            if self.full:
                return
            if self.written + len(line) + 1 > self.max_bytes:
                self.full = True
                log.warning(
                    "packet record %s reached %d bytes: recording stops", self.path, self.written
                )
                return
            try:
                self._fh.write(line + "\n")
                self._fh.flush()
            except OSError as exc:
                self.full = True
                log.warning("packet record %s: %s; recording stops", self.path, exc.strerror)
                return
            self.written += len(line) + 1

    def close(self) -> None:
        with self._lock:
            self.full = True
            try:
                self._fh.close()
            except OSError:
                pass
