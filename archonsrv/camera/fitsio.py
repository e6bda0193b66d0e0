"""FITS output of camerad, written with astropy, atomically.

Every file is written under a hidden temporary name in its final directory,
flushed to disk, then linked to its final name (never replacing an existing
file) and the temporary name removed.  A reader therefore sees either no
file or the complete file, and a failed write (full disk, directory gone)
leaves nothing behind.  Unsigned 16-bit pixels are stored as BITPIX 16 with
BZERO 32768; 32-bit HDR pixels right-shifted by HDRSHIFT as BITPIX 32 with
BZERO 2147483648, so the values read back are exactly the unsigned ones.

Every HDU carries CHECKSUM and DATASUM (the FITS checksum convention, as the
original camerad writes them): astropy computes them for whole arrays; for a
streamed image :class:`Checksum` sums the data as it is written and the
header is rewritten in place at the end.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import threading
import time
import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyWarning

from .. import protocol as P

log = logging.getLogger("camerad.fits")

Card = tuple[str, object, str]


class FitsWriteError(Exception):
    pass


class Checksum:
    """The 32-bit ones' complement sum of the FITS checksum convention, fed in pieces."""

    def __init__(self) -> None:
        self.total = 0
        self._rest = b""  # bytes short of a whole 32-bit word

    def add(self, data) -> None:
        if isinstance(data, np.ndarray):
            data = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        buf = memoryview(data).cast("B")
        if self._rest:
            need = 4 - len(self._rest)
            self._rest += bytes(buf[:need])
            buf = buf[need:]
            if len(self._rest) < 4:
                return
            self.total += int.from_bytes(self._rest, "big")
            self._rest = b""
        whole = len(buf) - len(buf) % 4
        if whole:
            words = np.frombuffer(buf[:whole], dtype=">u4")
            self.total += int(words.sum(dtype=np.uint64))
        if whole < len(buf):
            self._rest = bytes(buf[whole:])

    @property
    def value(self) -> int:
        """The folded 32-bit sum (a partial last word padded with zero bytes)."""
        total = self.total
        if self._rest:
            total += int.from_bytes(self._rest.ljust(4, b"\0"), "big")
        while total >> 32:
            total = (total & 0xFFFFFFFF) + (total >> 32)
        return total


_EXCLUDE = set(range(0x3A, 0x41)) | set(range(0x5B, 0x61))


def encode_checksum(value: int) -> str:
    """The 16-character ASCII encoding of the complement of ``value`` (CHECKSUM card)."""
    value = ~value & 0xFFFFFFFF
    asc = [0] * 16
    for i in range(4):
        byte = (value >> (24 - 8 * i)) & 0xFF
        ch = [byte // 4 + 0x30] * 4
        ch[0] += byte % 4
        changed = True
        while changed:
            changed = False
            for j in (0, 2):
                if ch[j] in _EXCLUDE or ch[j + 1] in _EXCLUDE:
                    ch[j] += 1
                    ch[j + 1] -= 1
                    changed = True
        for j in range(4):
            asc[4 * j + i] = ch[j]
    return "".join(chr(asc[(i + 15) % 16]) for i in range(16))


def _header(cards: list[Card]) -> fits.Header:
    hdr = fits.Header()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)
        for key, value, comment in cards:
            if value is None:
                continue
            hdr[key] = (value, comment[:47] if comment else "")
    return hdr


def pixels(data: np.ndarray, bitpix: int, hdrshift: int) -> np.ndarray:
    """What goes into the file: uint16 as is, uint32 shifted right by hdrshift."""
    if bitpix == 16:
        return data.astype(np.uint16, copy=False)
    return (data.astype(np.uint32, copy=False) >> np.uint32(hdrshift)).astype(np.uint32)


def unique_name(directory: Path, name: str) -> Path:
    """``name``, or ``stem-1.fits``, ``stem-2.fits``... if it exists."""
    path = directory / name
    n = 0
    while path.exists():
        n += 1
        path = directory / P.with_counter(name, n)
        if n > 9999:
            raise FitsWriteError(f"too many files named like {name} in {directory}")
    return path


def _date_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())


class AtomicFits:
    """A FITS file being written: HDUs appended to a temp file, then committed."""

    def __init__(self, directory: Path, name: str) -> None:
        self.directory = Path(directory)
        self.name = name
        self.tmp = self.directory / f".{name}.{os.getpid()}.{id(self):x}.part"
        self._fh = None
        self.final: Path | None = None
        self.nhdu = 0
        try:
            fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            self._fh = os.fdopen(fd, "wb")
        except OSError as exc:
            raise FitsWriteError(f"cannot create {self.tmp}: {exc.strerror}") from None

    def _guard(self, what, *args, **kw) -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", AstropyWarning)
                what(*args, **kw)
        except OSError as exc:
            self.discard()
            raise FitsWriteError(f"cannot write {self.tmp.name}: {exc.strerror or exc}") from None
        except Exception as exc:
            self.discard()
            raise FitsWriteError(f"cannot write {self.tmp.name}: {exc}") from exc
        self.nhdu += 1

    def primary(self, data: np.ndarray | None, cards: list[Card]) -> None:
        hdr = _header(cards + [("DATE", _date_now(), "file write time (UTC)")])
        hdu = fits.PrimaryHDU(data=data, header=hdr)
        # extensions may follow: EXTEND now, so that appending them later does not
        # add it to a header whose CHECKSUM is already written
        hdu.header.set("EXTEND", True, after=f"NAXIS{hdu.header['NAXIS'] or ''}")
        hdul = fits.HDUList([hdu])
        self._guard(hdul.writeto, self._fh, checksum=True)
        try:
            self._fh.flush()
        except OSError as exc:
            self.discard()
            raise FitsWriteError(f"cannot write {self.tmp.name}: {exc.strerror or exc}") from None

    def extension(self, data: np.ndarray, cards: list[Card]) -> None:
        self._guard(fits.append, str(self.tmp), data, header=_header(cards), checksum=True)

    def stream_image(
        self, width: int, height: int, bitpix: int, hdrshift: int, cards: list[Card]
    ) -> StreamedImage:
        """Start a primary image whose pixels arrive later, block by block."""
        return StreamedImage(self, width, height, bitpix, hdrshift, cards)

    def commit(self) -> Path:
        """fsync, link to a unique final name, remove the temp name."""
        try:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
        except OSError as exc:
            self.discard()
            raise FitsWriteError(f"cannot write {self.tmp.name}: {exc.strerror or exc}") from None
        for _ in range(100):
            final = unique_name(self.directory, self.name)
            try:
                os.link(self.tmp, final)
            except FileExistsError:
                continue
            except OSError as exc:
                if exc.errno in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                    os.replace(self.tmp, final)
                    self.final = final
                    return final
                self.discard()
                raise FitsWriteError(f"cannot create {final}: {exc.strerror}") from None
            with contextlib.suppress(OSError):
                os.unlink(self.tmp)
            self.final = final
            with contextlib.suppress(OSError):
                dfd = os.open(self.directory, os.O_RDONLY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
            return final
        self.discard()
        raise FitsWriteError(f"cannot find a free file name for {self.name}")

    def discard(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.close()
        with contextlib.suppress(OSError):
            os.unlink(self.tmp)


class StreamedImage:
    """A primary HDU written while its pixels arrive from a FETCH.

    The header goes out first; :meth:`feed` takes the data parts of FETCH
    blocks (k x 1024 bytes, little-endian pixels), converts them to FITS
    (big-endian, BZERO offset) and appends them; :meth:`finish` pads the
    data to a whole FITS block.  The result is the same file that
    :meth:`AtomicFits.primary` writes from a whole array.
    """

    def __init__(self, f: AtomicFits, width: int, height: int, bitpix: int, hdrshift: int, cards):
        self.f = f
        self.bitpix = bitpix
        self.hdrshift = hdrshift
        self.left = width * height  # pixels still to come
        self.nbytes = 0
        dtype = np.uint16 if bitpix == 16 else np.uint32
        bzero = 32768 if bitpix == 16 else 2147483648
        hdr = fits.Header()
        hdr["SIMPLE"] = (True, "conforms to FITS standard")
        hdr["BITPIX"] = (bitpix, "array data type")
        hdr["NAXIS"] = (2, "number of array dimensions")
        hdr["NAXIS1"] = width
        hdr["NAXIS2"] = height
        hdr["EXTEND"] = True
        full = _header(cards + [("DATE", _date_now(), "file write time (UTC)")])
        for card in full.cards:
            if card.keyword not in hdr:
                hdr.append(card)
        hdr["BSCALE"] = 1
        hdr["BZERO"] = bzero
        stamp = _date_now()
        hdr["CHECKSUM"] = ("0" * 16, f"HDU checksum updated {stamp}")
        hdr["DATASUM"] = ("0", f"data unit checksum updated {stamp}")
        self._hdr = hdr
        self._zsum = 0  # sum of the data as native 32-bit words (see _add_sum)
        self._offset = f._fh.tell()
        self._flip = dtype(bzero)
        self._q: queue.Queue = queue.Queue(maxsize=1024)
        self._worker: threading.Thread | None = None
        self._error: BaseException | None = None
        self._dtype = dtype
        self._write(hdr.tostring().encode("ascii"))

    def _write(self, data) -> None:
        try:
            self.f._fh.write(data)
        except OSError as exc:
            self.f.discard()
            raise FitsWriteError(f"cannot write {self.f.tmp.name}: {exc.strerror or exc}") from None
        except ValueError as exc:  # file already discarded
            raise FitsWriteError(f"cannot write {self.f.tmp.name}: {exc}") from None

    # -- a writer thread converts and writes while the caller keeps receiving --
    def _ensure_worker(self) -> None:
        if self._worker is None:
            self._worker = threading.Thread(target=self._work, name="fits-writer", daemon=True)
            self._worker.start()

    def _work(self) -> None:
        while True:
            rows = self._q.get()
            if rows is None:
                return
            if self._error is not None:
                continue
            try:
                self._convert_write(rows)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                self._error = exc

    def feed(self, rows: np.ndarray) -> None:
        """Queue the data parts of verified blocks (views stay valid until finish)."""
        if self._error is not None:
            raise self._error
        if not len(rows):
            return
        self._ensure_worker()
        self._q.put(rows)

    def _join(self) -> None:
        if self._worker is not None:
            self._q.put(None)
            self._worker.join()
            self._worker = None
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        try:
            self._join()
        except BaseException:  # noqa: BLE001 - the file is discarded anyway
            pass
        self.f.discard()

    def _convert_write(self, rows: np.ndarray) -> None:
        if self.left <= 0:
            return
        little = "<u2" if self.bitpix == 16 else "<u4"
        src = rows.view(little)  # (k, n), rows strided
        # the FITS values (sign bit flipped for BZERO), still in native order
        if self.bitpix == 32 and self.hdrshift:
            num = src >> self._dtype(self.hdrshift)
            num ^= self._flip
        else:
            num = np.bitwise_xor(src, self._flip)
        num = num.reshape(-1)[: self.left]
        self._add_sum(num)
        px = num.astype(">u2" if self.bitpix == 16 else ">u4")
        self._write(memoryview(px))
        self.left -= len(px)
        self.nbytes += px.nbytes

    def finish(self) -> Path:
        self._join()
        if self.left:
            self.f.discard()
            raise FitsWriteError(f"image short by {self.left} pixels")
        pad = -self.nbytes % 2880
        if pad:
            self._write(bytes(pad))
        self._write_checksums()
        return self.f.commit()

    def _add_sum(self, num: np.ndarray) -> None:
        """Add the numeric FITS values of a chunk to the data checksum.

        Summing the values in native order avoids a byte-swapped pass: for
        32-bit data the native sum is the sum of the big-endian words.  For
        16-bit data a native 32-bit word holds p0 + 2**16 * p1 where the file's
        big-endian word is 2**16 * p0 + p1; the ones' complement sum (modulo
        2**32 - 1) of the latter is the former's times 2**16 (a 16-bit
        rotation), applied once at the end.  Chunks hold whole 1024-byte
        blocks, so only the last one can end in half a word.
        """
        if self.bitpix == 32:
            self._zsum += int(num.sum(dtype=np.uint64))
            return
        even = len(num) - len(num) % 2
        if even:
            self._zsum += int(num[:even].view("<u4").sum(dtype=np.uint64))
        if even < len(num):
            self._zsum += int(num[-1])  # p0 of a word whose p1 is padding (0)

    @property
    def datasum(self) -> int:
        total = self._zsum << 16 if self.bitpix == 16 else self._zsum
        while total >> 32:
            total = (total & 0xFFFFFFFF) + (total >> 32)
        return total

    def _write_checksums(self) -> None:
        """Rewrite the header in place with DATASUM and CHECKSUM (same size)."""
        hdr = self._hdr
        datasum = self.datasum
        hdr["DATASUM"] = str(datasum)
        hdr["CHECKSUM"] = "0" * 16
        head = Checksum()
        head.add(hdr.tostring().encode("ascii"))
        total = head.total + datasum
        while total >> 32:
            total = (total & 0xFFFFFFFF) + (total >> 32)
        hdr["CHECKSUM"] = encode_checksum(total)
        text = hdr.tostring().encode("ascii")
        fh = self.f._fh
        try:
            end = fh.tell()
            fh.seek(self._offset)
            fh.write(text)
            fh.seek(end)
        except OSError as exc:
            self.f.discard()
            raise FitsWriteError(f"cannot write {self.f.tmp.name}: {exc.strerror or exc}") from None
