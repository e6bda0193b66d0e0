"""The series state and frame cache of Mr. T, and the UDP reply rules (pure).

One :class:`SeriesStore` holds the current series and its cached frames.  The
server feeds it stream messages (``on_header``, ``on_image``, ``on_end``) and
UDP datagrams (``on_datagram``) under one lock; each call returns the reply
bytes (if any) and :class:`Note` values for the log.  No sockets, threads or
clocks in here.

Rules (the seed's, with the original's bugs fixed; see mr_t(1)):

* series ids count from 1 (0 = no series); a header starts a new series and
  drops the old one's cache;
* Mr. T numbers the frames of a series 0, 1, 2 ... in arrival order; the
  detector's own ``frame`` numbers are compared with the expected ones and a
  gap is reported;
* Ping -> Pong (series id, frame count; 0 and 0 with no series);
* Packet request with no series: no reply; frame cached: the byte range;
  frame not cached: an empty reply, with ``premature end`` set to the number
  of frames received when the series has ended (``0xFFFFFFFF`` when it ended
  without any frame);
* after a *data* reply for frame k, cached frames below k are released
  (an empty "not yet" or "ended" reply releases nothing: a client polling
  ahead must not release frames other clients still need), except when the
  cache is full and the request is for exactly the next frame to come;
* the cache holds at most ``frame_limit`` frames and ``byte_limit`` bytes
  (:meth:`has_room` tells the receiver whether to read the next message);
* with HDF5 output (``disk_backed``), a full cache releases its lowest frames
  that are already safely on disk (:meth:`spill_to_fit`) instead of holding the stream
  back; a request for such a frame is answered from the file: the store asks
  for it through ``wanted_from_disk`` and the I/O layer hands the blob back
  with :meth:`set_disk_frame`.
"""

from __future__ import annotations

import logging
import struct
from collections import OrderedDict
from dataclasses import dataclass, field

from . import protocol
from .protocol import (
    NO_FRAMES_ENDED,
    BadDatagram,
    BadMessage,
    ExtendedPong,
    Header,
    Image,
    JsonPong,
    PacketRequest,
    Ping,
    Pong,
    SeriesEnd,
)

_REQUEST = struct.Struct(">BII")
REQUEST_SIZE = _REQUEST.size
_unpack_request = _REQUEST.unpack
_pack_reply = struct.Struct(">BIIII").pack
_NO_NOTES: list = []  # shared and never appended to

DEFAULT_CACHE_BYTES = 1 << 30
NO_FRAME = 1 << 63  # above every frame number: "the cache is empty"
MAX_PAYLOAD = 65507 - protocol.REPLY_HEADER  # largest UDP/IPv4 datagram


@dataclass(frozen=True)
class Note:
    level: int
    text: str


@dataclass
class Series:
    id: int
    detector_series: object
    name: str
    frame_count: int
    header: Header
    received: int = 0
    ended: bool = False
    bits: int = 0
    shape: tuple[int, int] = (0, 0)
    encoding: str = ""
    dtype: str = ""
    next_detector_frame: int = 0
    gaps: int = 0


@dataclass
class Stats:
    pings: int = 0
    requests: int = 0
    data_replies: int = 0
    empty_replies: int = 0
    bad_datagrams: int = 0
    bytes_sent: int = 0
    series: int = 0
    frames: int = 0
    skipped_messages: int = 0
    evicted: int = 0
    spilled: int = 0  # frames released from memory because they were on disk
    served_from_disk: int = 0  # frames read back from the HDF5 files for a client
    refused_datagrams: int = 0  # from hosts outside the allow-list


@dataclass
class SeriesStore:
    frame_limit: int = 0  # 0 = no limit on the count
    byte_limit: int = DEFAULT_CACHE_BYTES
    payload_size: int = protocol.DEFAULT_PAYLOAD
    extended_pong: bool = False
    pong_format: str = "plain"  # plain, extended or json (protocol.PONG_FORMATS)
    mask_path: str = ""  # --mask-path, echoed in the JSON pong
    disk_backed: bool = False  # frames on disk may leave memory (HDF5 output on)
    on_disk: int = 0  # frames 0 .. on_disk-1 of the current series are in the files
    #: the highest on_disk seen in this series: frames below it that left memory are
    #: asked for from the files even after a write failure stopped further spilling
    disk_readable: int = 0
    current: Series | None = None
    last_series_id: int = 0
    cache: OrderedDict = field(default_factory=OrderedDict)
    cache_bytes: int = 0
    stats: Stats = field(default_factory=Stats)

    _lowest: int = field(default=0, repr=False)  # lowest cached frame, NO_FRAME if none
    #: a frame the last request needed from disk (the I/O layer reads it), or None
    wanted_from_disk: int | None = None
    _last_size: int = field(default=0, repr=False)  # the latest frame's bytes
    _disk_frame: tuple | None = field(default=None, repr=False)  # (series, frame, blob)

    def __post_init__(self) -> None:
        self._lowest = NO_FRAME
        if self.extended_pong and self.pong_format == "plain":
            self.pong_format = "extended"
        if self.pong_format not in protocol.PONG_FORMATS:
            raise ValueError(f"pong format must be one of {', '.join(protocol.PONG_FORMATS)}")
        if not 1 <= self.payload_size <= MAX_PAYLOAD:
            raise ValueError(f"payload size must be 1..{MAX_PAYLOAD}")

    # -- cache bounds --------------------------------------------------------
    def has_room(self) -> bool:
        """True when the receiver may take one more frame."""
        if not self.cache:
            return True
        if self.frame_limit and len(self.cache) >= self.frame_limit:
            return False
        return self.cache_bytes < self.byte_limit

    def fits(self, nbytes: int) -> bool:
        """True when a frame of ``nbytes`` can go into the cache now."""
        if not self.cache:
            return True
        if self.frame_limit and len(self.cache) >= self.frame_limit:
            return False
        return self.cache_bytes + nbytes <= self.byte_limit

    def _drop_cache(self) -> None:
        self.cache.clear()
        self.cache_bytes = 0
        self._lowest = NO_FRAME
        self._disk_frame = None
        self.on_disk = 0
        self.disk_readable = 0

    @property
    def running(self) -> bool:
        """A series has started and not ended (``--status-port`` says ``running``)."""
        return self.current is not None and not self.current.ended

    def spill_to_fit(self, nbytes: int) -> int:
        """Release the lowest cached frames that are on disk until ``nbytes`` fit.

        Only with ``spill`` (HDF5 output); returns the frames released.  A
        frame still only in memory is never released here."""
        if not self.disk_backed:
            return 0
        self.disk_readable = max(self.disk_readable, self.on_disk)
        n = 0
        cache = self.cache
        while cache and not self.fits(nbytes):
            k = next(iter(cache))
            if k >= self.on_disk:
                break
            self.cache_bytes -= len(cache.pop(k))
            n += 1
        self._lowest = next(iter(cache)) if cache else NO_FRAME
        self.stats.spilled += n
        return n

    def set_disk_frame(self, series_id: int, frame: int, blob) -> None:
        """The blob of ``frame`` read back from the HDF5 files (None: not readable)."""
        if blob is not None and not isinstance(blob, memoryview):
            blob = memoryview(blob).cast("B")
        self._disk_frame = (series_id, frame, blob)
        if blob is not None:
            self.stats.served_from_disk += 1

    def _evict_below(self, frame: int) -> int:
        if frame <= self._lowest:  # nothing below it (the common case): no work
            return 0
        n = 0
        cache = self.cache
        while cache:
            k = next(iter(cache))
            if k >= frame:
                self._lowest = k
                break
            self.cache_bytes -= len(cache.pop(k))
            n += 1
        else:
            self._lowest = NO_FRAME
        self.stats.evicted += n
        return n

    # -- stream side ---------------------------------------------------------
    def on_stream(self, msg) -> tuple[int | None, list[Note]]:
        """Apply one decoded stream message; returns (frame number or None, notes)."""
        if isinstance(msg, BadMessage):
            self.stats.skipped_messages += 1
            return None, [Note(logging.WARNING, f"stream: skipped {msg.reason}")]
        if isinstance(msg, Header):
            return None, self.on_header(msg)
        if isinstance(msg, Image):
            return self.on_image(msg)
        if isinstance(msg, SeriesEnd):
            return None, self.on_end(msg)
        return None, [Note(logging.ERROR, f"stream: unknown message {type(msg).__name__}")]

    def on_header(self, h: Header) -> list[Note]:
        notes = [Note(logging.WARNING, f"stream header: {w}") for w in h.warnings]
        old = self.current
        if old is not None and not old.ended:
            notes.append(
                Note(
                    logging.WARNING,
                    f"series {old.id} replaced by a new header before its end "
                    f"({old.received} of {old.frame_count or '?'} frames received)",
                )
            )
        self._drop_cache()
        self.last_series_id = self.last_series_id + 1 if self.last_series_id < 0xFFFFFFFF else 1
        self.current = Series(
            id=self.last_series_id,
            detector_series=h.series,
            name=h.name,
            frame_count=h.frame_count,
            header=h,
        )
        self.stats.series += 1
        notes.append(
            Note(
                logging.INFO,
                f"series {self.current.id} started: detector series {h.series!r}, "
                f"header_detail {h.detail}, "
                f"{h.frame_count or 'unknown number of'} frames, name {self.current.name!r}",
            )
        )
        return notes

    def on_image(self, img: Image) -> tuple[int | None, list[Note]]:
        s = self.current
        notes = [Note(logging.WARNING, f"image: {w}") for w in img.warnings]
        if s is None:
            self.stats.skipped_messages += 1
            notes.append(Note(logging.WARNING, "image before any series header: skipped"))
            return None, notes
        if s.ended:
            self.stats.skipped_messages += 1
            notes.append(Note(logging.WARNING, f"image after the end of series {s.id}: skipped"))
            return None, notes
        if s.received == 0:
            s.bits, s.shape, s.encoding, s.dtype = img.bits, img.shape, img.encoding, img.dtype
        elif (img.shape, img.encoding, img.dtype) != (s.shape, s.encoding, s.dtype):
            notes.append(
                Note(
                    logging.WARNING,
                    f"series {s.id} frame {s.received}: {img.dtype} {img.shape} {img.encoding} "
                    f"differs from the first frame's {s.dtype} {s.shape} {s.encoding}",
                )
            )
        if img.frame is not None:
            if img.frame != s.next_detector_frame:
                s.gaps += 1
                notes.append(
                    Note(
                        logging.WARNING,
                        f"series {s.id}: detector frame {img.frame} where {s.next_detector_frame} "
                        f"was expected (frame gap; served as frame {s.received})",
                    )
                )
            s.next_detector_frame = img.frame + 1
        else:
            s.next_detector_frame += 1
        number = s.received
        s.received += 1
        # a memoryview, so that a packet reply slices without copying
        data = img.data
        if not (isinstance(data, memoryview) and data.format == "B" and data.ndim == 1):
            data = memoryview(data).cast("B")
        if not self.cache:
            self._lowest = number
        self.cache[number] = data
        self.cache_bytes += len(data)
        self._last_size = len(data)
        self.stats.frames += 1
        if s.frame_count and s.received > s.frame_count:
            notes.append(
                Note(logging.WARNING, f"series {s.id}: frame {number} beyond the announced count")
            )
        return number, notes

    def on_end(self, end: SeriesEnd) -> list[Note]:
        s = self.current
        if s is None or s.ended:
            self.stats.skipped_messages += 1
            return [Note(logging.WARNING, "series end without a running series: skipped")]
        s.ended = True
        level = logging.INFO
        text = f"series {s.id} ended: {s.received} frames"
        if s.frame_count and s.received < s.frame_count:
            level = logging.WARNING
            text += f" of {s.frame_count} (ended early)"
        if s.gaps:
            text += f", {s.gaps} frame gaps"
        return [Note(level, text)]

    # -- UDP side ------------------------------------------------------------
    def pong(self) -> bytes:
        s = self.current
        if self.pong_format == "json":
            if s is None or s.received == 0:
                return JsonPong().encode()
            return JsonPong(
                s.id,
                s.frame_count,
                name=s.name,
                width=s.shape[1],
                height=s.shape[0],
                bits=s.bits,
                mask_path=self.mask_path,
            ).encode()
        if self.pong_format == "extended":
            if s is None or s.received == 0:
                return ExtendedPong().encode()
            return ExtendedPong(
                s.id, s.frame_count, s.bits, s.shape[1], s.shape[0], s.name
            ).encode()
        if s is None:
            return Pong().encode()
        return Pong(s.id, s.frame_count).encode()

    def on_datagram(self, data: bytes) -> tuple[list[bytes], list[Note], int]:
        """One datagram from a client -> (reply datagrams, notes, frames evicted).

        A reply is one ``bytes`` (header and payload joined): on Linux one
        ``sendto`` of a joined buffer costs less than a two-buffer ``sendmsg``.
        """
        if len(data) == REQUEST_SIZE and data[0] == protocol.PACKET_REQUEST:
            # the hot path (a stop-and-wait client sends these at wire speed): the
            # rules are decode_request's and on_request's, without the objects
            _, frame, start = _unpack_request(data)
            self.stats.requests += 1
            blob = self.cache.get(frame)
            s = self.current
            if blob is not None and s is not None and start <= len(blob):
                total = len(blob)
                payload = blob[start : start + self.payload_size]
                st = self.stats
                st.data_replies += 1
                st.bytes_sent += len(payload)
                out = _pack_reply(protocol.PACKET_REPLY, 0, frame, start, total) + payload
                if frame <= self._lowest:
                    return [out], _NO_NOTES, 0
                return [out], _NO_NOTES, self._evict_below(frame)
            self.stats.requests -= 1  # counted again below
        msg = protocol.decode_request(data)
        if isinstance(msg, BadDatagram):
            self.stats.bad_datagrams += 1
            return [], [Note(logging.WARNING, f"udp: ignored {msg.reason}")], 0
        if isinstance(msg, Ping):
            self.stats.pings += 1
            return [self.pong()], [], 0
        assert isinstance(msg, PacketRequest)
        return self.on_request(msg)

    def on_request(self, req: PacketRequest) -> tuple[list[bytes], list[Note], int]:
        self.stats.requests += 1
        s = self.current
        if s is None:
            return [], [Note(logging.DEBUG, "udp: packet request with no series: ignored")], 0
        blob = self.cache.get(req.frame)
        notes: list[Note] = []
        self.wanted_from_disk = None
        if blob is None and self.disk_backed and req.frame < self.disk_readable:
            d = self._disk_frame
            if d is not None and d[0] == s.id and d[1] == req.frame:
                blob = d[2]  # None: the file could not give it; answered as not cached
            else:
                self.wanted_from_disk = req.frame
                return [], notes, 0
        if blob is None:
            premature = 0
            if s.ended:
                premature = s.received if s.received else NO_FRAMES_ENDED
            self.stats.empty_replies += 1
            out = protocol.encode_reply_header(premature, req.frame, req.start, 0)
        else:
            total = len(blob)
            if req.start > total:
                notes.append(
                    Note(
                        logging.DEBUG,
                        f"udp: start byte {req.start} past the end of frame {req.frame} "
                        f"({total} bytes)",
                    )
                )
                payload = b""
            else:
                payload = blob[req.start : req.start + self.payload_size]
            out = protocol.encode_reply_header(0, req.frame, req.start, total) + payload
            self.stats.data_replies += 1
            self.stats.bytes_sent += len(payload)
            return [out], notes, self._evict_below(req.frame)
        # an empty reply ("not yet", "ended") releases nothing, with one exception
        # that keeps a lone client from waiting for ever: the cache is full and
        # the client asks for exactly the next frame to come, so it has every
        # cached frame already, and the stream waits for room
        if not s.ended and req.frame == s.received and not self.fits(self._last_size):
            return [out], notes, self._evict_below(req.frame)
        return [out], notes, 0
