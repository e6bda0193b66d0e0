"""HDF5 files of Mr. T: NXmx series output, and frames read back for replay.

Output: ``NAME_master.h5`` (NXmx) and data files ``NAME_data_000001.h5`` ...
The master's ``/entry/data`` (NXdata, ``@signal="data"``) holds exactly one
frame data set, ``data``: a virtual data set over the data files (made for
the announced frame count with the first frame, set to the frames written at
the end), so every reader (h5py, fabio, NeXus tools) counts each frame once.
The DECTRIS-style external links ``data_000001`` ... to each data file's
``/entry/data/data`` are in ``/entry/instrument/detector/data_files`` (in
``/entry/data`` fabio would count every frame twice).  The NXmx fields and
where their values come from are listed in mr_t(1).  Each data set is
``(n, Y, X)``, one frame per chunk, filter 32008 (bitshuffle) with options
(0, 2) (LZ4).  The stream's
bslz4 blobs go in unchanged with direct chunk writes; ``lz4<`` and raw frames
are decoded and written through the filter.  A series' files are closed (and
complete) at its end, at an early end, at a new header and at shutdown.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import h5py
import hdf5plugin
import numpy as np

from . import codec
from .protocol import Header, Image

log = logging.getLogger(__name__)

BITSHUFFLE = 32008
BSLZ4_OPTS = (0, 2)
DEFAULT_FRAMES_PER_FILE = 1000
GROW_FRAMES = 64

#: config keys that NXmx places directly in the NXdetector group
DETECTOR_KEYS = {
    "beam_center_x",
    "beam_center_y",
    "bit_depth_readout",
    "count_time",
    "countrate_correction_applied",
    "description",
    "detector_distance",
    "detector_number",
    "detector_readout_time",
    "flatfield_correction_applied",
    "frame_time",
    "pixel_mask_applied",
    "sensor_material",
    "sensor_thickness",
    "threshold_energy",
    "virtual_pixel_correction_applied",
    "x_pixel_size",
    "y_pixel_size",
}
UNITS = {
    "count_time": "s",
    "frame_time": "s",
    "detector_readout_time": "s",
    "detector_distance": "m",
    "sensor_thickness": "m",
    "x_pixel_size": "m",
    "y_pixel_size": "m",
    "threshold_energy": "eV",
    "photon_energy": "eV",
    "incident_energy": "eV",
}
_ARRAY_TYPES = {"float32": "<f4", "uint32": "<u4", "uint16": "<u2", "uint8": "<u1"}


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", str(text))[:100] or "series"


def _store_value(group: h5py.Group, key: str, value) -> None:
    if value is None:
        return
    if isinstance(value, dict | list) and not (
        isinstance(value, list) and value and all(isinstance(v, int | float) for v in value)
    ):
        value = json.dumps(value)
    if isinstance(value, bool):
        value = np.bool_(value)
    path = key.strip("/")
    if not path or path in group:
        return
    try:
        try:
            ds = group.create_dataset(path, data=value)
        except (TypeError, ValueError):
            ds = group.create_dataset(path, data=str(value))
    except (TypeError, ValueError, KeyError) as exc:
        # e.g. "a/b" after a value "a": the path cannot exist in HDF5
        log.warning("config key %r not stored in the HDF5 master file: %s", key, exc)
        return
    unit = UNITS.get(key)
    if unit:
        ds.attrs["units"] = unit


def _nx(group: h5py.Group, cls: str) -> h5py.Group:
    group.attrs["NX_class"] = cls
    return group


def _clean_text(value: str, what: str) -> str:
    """A string HDF5 can store: NUL bytes (which h5py refuses) are dropped, with a log line."""
    if "\0" in value:
        log.warning("%s contains NUL bytes: stored without them", what)
        value = value.replace("\0", "")
    return value


def _put(group: h5py.Group, path: str, value, units: str | None = None, **attrs) -> None:
    """Create one field; a value HDF5 cannot take is skipped with a log line."""
    if isinstance(value, str):
        value = _clean_text(value, path)
    try:
        ds = group.create_dataset(path, data=value)
        if units:
            ds.attrs["units"] = units
        for k, v in attrs.items():
            ds.attrs[k] = v
    except (TypeError, ValueError, KeyError, OSError) as exc:
        log.warning("master field %s not written: %s", path, exc)


def _number(cfg: dict, key: str) -> float | None:
    v = cfg.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float) or not np.isfinite(v):
        return None
    return float(v)


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def read_mask(path: str, max_bytes: int = 1 << 28) -> np.ndarray:
    """A pixel mask from ``--mask-path``: ``.npy``, or HDF5 (the NXmx pixel_mask,
    ``/mask``, ``/data`` or the only 2-D data set).  Raises OSError/ValueError."""
    if os.path.getsize(path) > max_bytes:
        raise ValueError(f"larger than {max_bytes} bytes")
    if path.endswith(".npy"):
        arr = np.load(path, allow_pickle=False)
    else:
        with h5py.File(path, "r") as f:
            arr = None
            for name in ("entry/instrument/detector/pixel_mask", "mask", "data", "pixel_mask"):
                if name in f and isinstance(f[name], h5py.Dataset):
                    arr = f[name][()]
                    break
            if arr is None:
                found = []
                f.visititems(
                    lambda n, o: (
                        found.append(o) if isinstance(o, h5py.Dataset) and o.ndim == 2 else None
                    )
                )
                if len(found) != 1:
                    raise ValueError("no pixel_mask, mask or data set, nor one 2-D data set")
                arr = found[0][()]
    arr = np.asarray(arr)
    if arr.ndim != 2 or arr.dtype.kind not in "uib":
        raise ValueError(f"a mask is a 2-D integer array, not {arr.dtype} {arr.shape}")
    return arr.astype(np.uint32)


class SeriesWriter:
    """Writes one series: NXmx master file plus data files.  Not thread-safe
    except :meth:`read_frame` (under :attr:`lock`).

    Files stay readable while the series is written: data files are written in
    SWMR mode (``h5py.File(..., swmr=True)`` readers get a consistent view),
    and every file is opened without HDF5 file locking, so a plain read-only
    reader is not refused; the master is opened only to add to it and closed
    again.  A write error renames the series' files to ``*.incomplete``, so no
    partial file is left under a final name.
    """

    def __init__(
        self,
        directory: str,
        header: Header,
        series_id: int,
        frames_per_file: int = DEFAULT_FRAMES_PER_FILE,
        mask_path: str | None = None,
    ) -> None:
        self.directory = directory
        self.mask_path = mask_path
        self.header = header
        self.series_id = series_id
        self.frames_per_file = max(1, frames_per_file)
        base = safe_name(f"series_{header.series}")
        name = base
        n = 1
        while os.path.exists(os.path.join(directory, f"{name}_master.h5")) or os.path.exists(
            os.path.join(directory, f"{name}_master.h5.incomplete")
        ):
            n += 1
            name = f"{base}_{n}"
        self.name = name
        self.master_path = os.path.join(directory, f"{name}_master.h5")
        self.data_paths: list[str] = []
        self.written = 0
        self.skipped = 0
        self.shape: tuple[int, int] | None = None
        self.dtype: np.dtype | None = None
        self._data_file: h5py.File | None = None
        self._dset = None
        self._file_first = 0
        self._capacity = 0
        self._kind: tuple | None = None  # (shape, type, encoding) checked by _check_kind
        self._direct = False
        self._total = 0
        self._write_chunk = None
        # frames of the stream handled (written or skipped), and the stream
        # numbers of those skipped: stream frame k is file frame k - skips below k
        self.processed = 0
        self._skipped_frames: list[int] = []
        #: stream frames 0 .. on_disk-1 are in flushed files (readable by read_frame)
        self.on_disk = 0
        self._all_direct = True
        self.lock = threading.Lock()  # write/close vs read_frame from the UDP thread
        self._reader: tuple[str, h5py.File] | None = None
        self._vds_frames = 0  # frames the master's /entry/data/data spans now
        self._readable = 0  # frames readable back after a failure (see abandon)
        self.closed = False
        self.start_time = _now_iso()
        with self._open_master("w") as m:
            self._write_master(m)

    def _open_master(self, mode: str = "a") -> h5py.File:
        return h5py.File(self.master_path, mode, locking=False)

    # -- master ------------------------------------------------------------------
    def _write_master(self, m: h5py.File) -> None:
        """Everything the header gives; the parts that need the frame shape come
        with the first frame (:meth:`_write_frame_geometry`)."""
        h = self.header
        cfg = {k: v for k, v in (h.config or {}).items() if isinstance(k, str)}
        m.attrs["creator"] = "mr_t (beamline-servers)"
        m.attrs["default"] = "entry"
        entry = _nx(m.create_group("entry"), "NXentry")
        entry.attrs["default"] = "data"
        _put(entry, "definition", "NXmx")
        date = cfg.get("data_collection_date")
        _put(entry, "start_time", date if isinstance(date, str) and date else self.start_time)
        n = h.frame_count
        ft = _number(cfg, "frame_time")
        if n and ft:
            t0 = time.time()
            end = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0 + n * ft))
            _put(entry, "end_time_estimated", end)
        data = _nx(entry.create_group("data"), "NXdata")
        data.attrs["signal"] = "data"
        # instrument, source, beam, sample
        inst = _nx(entry.create_group("instrument"), "NXinstrument")
        iname = cfg.get("instrument_name")
        _put(inst, "name", iname if isinstance(iname, str) and iname else "unknown")
        src = _nx(entry.create_group("source"), "NXsource")
        sname = cfg.get("source_name")
        _put(src, "name", sname if isinstance(sname, str) and sname else "unknown")
        inst["source"] = src  # the same group, where older NXmx readers look
        sample = _nx(entry.create_group("sample"), "NXsample")
        sname = h.name
        _put(sample, "name", sname)
        beam = _nx(sample.create_group("beam"), "NXbeam")
        wl = _number(cfg, "wavelength")
        energy = _number(cfg, "photon_energy") or _number(cfg, "incident_energy")
        if not wl and energy:
            wl = 12398.419843320026 / energy  # hc in eV*Angstrom
        _put(beam, "incident_wavelength", wl or 1.0, "angstrom")
        inst["beam"] = beam
        # goniometer: omega from the header, a rotation about -x (DECTRIS convention)
        tr = _nx(sample.create_group("transformations"), "NXtransformations")
        o0 = _number(cfg, "omega_start") or 0.0
        oi = _number(cfg, "omega_increment") or 0.0
        count = max(n, 1)
        _put(tr, "omega", o0 + oi * np.arange(count), "deg", transformation_type="rotation",
             vector=np.array([-1.0, 0.0, 0.0]), depends_on=".")  # fmt: skip
        _put(sample, "depends_on", "/entry/sample/transformations/omega")
        # detector
        det = _nx(inst.create_group("detector"), "NXdetector")
        spec = _nx(det.create_group("detectorSpecific"), "NXcollection")
        _put(spec, "mrt_series_id", np.uint32(self.series_id))
        _put(spec, "series_name", h.name)
        _put(spec, "header_detail", h.detail)
        if h.series is not None:
            _store_value(spec, "detector_series", h.series)
        for key, value in cfg.items():
            if isinstance(value, str):
                value = _clean_text(value, f"config key {key!r}")
            _store_value(det if key in DETECTOR_KEYS else spec, _clean_text(key, "a key"), value)
        for k in ("beam_center_x", "beam_center_y"):
            if k in det:
                det[k].attrs["units"] = "pixel"
        dist = _number(cfg, "detector_distance")
        if "distance" not in det:
            _put(det, "distance", dist if dist is not None else 0.0, "m")
        det_tr = _nx(det.create_group("transformations"), "NXtransformations")
        _put(det_tr, "translation", dist if dist is not None else 0.0, "m",
             transformation_type="translation", vector=np.array([0.0, 0.0, 1.0]),
             depends_on=".")  # fmt: skip
        _put(det, "depends_on", "/entry/instrument/detector/transformations/translation")
        if h.appendix is not None:
            try:
                spec.create_dataset("header_appendix", data=np.void(bytes(h.appendix)))
            except (ValueError, TypeError) as exc:
                log.warning("header appendix not written: %s", exc)

    def _header_array(self, arr, label: str, shape: tuple[int, int]):
        """A header array (flatfield, mask, countrate) as numpy, or None with a log line."""
        dims, typ, data = arr
        dt = np.dtype(_ARRAY_TYPES.get(typ, "<u1"))
        want = int(np.prod(dims)) * dt.itemsize
        if len(data) != want:
            log.warning("header %s: %d bytes, expected %d: not written", label, len(data), want)
            return None
        a = np.frombuffer(data, dtype=dt).reshape(list(reversed(dims)))
        if label != "countrate_correction_table" and a.shape != shape:
            log.warning(
                "header %s of shape %s does not match the frames' %s: not written",
                label,
                a.shape,
                shape,
            )
            return None
        return a

    def _write_frame_geometry(self) -> None:
        """With the first frame: module geometry, masks, saturation, the data view."""
        h = self.header
        cfg = h.config or {}
        y, x = self.shape
        with self._open_master() as m:
            det = m["entry/instrument/detector"]
            spec = det["detectorSpecific"]
            bits = self.dtype.itemsize * 8
            cutoff = _number(cfg, "countrate_correction_count_cutoff")
            _put(det, "saturation_value", int(cutoff) if cutoff else (1 << bits) - 1)
            mod = _nx(det.create_group("module"), "NXdetector_module")
            _put(mod, "data_origin", np.array([0, 0], dtype=np.int32))
            _put(mod, "data_size", np.array([y, x], dtype=np.int32))
            px = _number(cfg, "x_pixel_size") or 7.5e-5
            py = _number(cfg, "y_pixel_size") or 7.5e-5
            bx = _number(cfg, "beam_center_x")
            by = _number(cfg, "beam_center_y")
            bx = x / 2 if bx is None else bx
            by = y / 2 if by is None else by
            # pixel (0, 0) sits where the beam centre is reached going -x fast, -y slow
            origin = np.array([bx * px, by * py, 0.0])
            length = float(np.linalg.norm(origin))
            _put(mod, "module_offset", length, "m", transformation_type="translation",
                 vector=origin / length if length else np.array([1.0, 0.0, 0.0]),
                 offset=np.array([0.0, 0.0, 0.0]),
                 depends_on="/entry/instrument/detector/transformations/translation")  # fmt: skip
            _put(mod, "fast_pixel_direction", px, "m", transformation_type="translation",
                 vector=np.array([-1.0, 0.0, 0.0]), offset=np.array([0.0, 0.0, 0.0]),
                 depends_on="/entry/instrument/detector/module/module_offset")  # fmt: skip
            _put(mod, "slow_pixel_direction", py, "m", transformation_type="translation",
                 vector=np.array([0.0, -1.0, 0.0]), offset=np.array([0.0, 0.0, 0.0]),
                 depends_on="/entry/instrument/detector/module/module_offset")  # fmt: skip
            # masks: the header's, then --mask-path; a shape that does not fit is skipped
            mask = None
            if h.pixel_mask is not None:
                mask = self._header_array(h.pixel_mask, "pixel_mask", (y, x))
            if self.mask_path:
                try:
                    extra = read_mask(self.mask_path)
                except (OSError, ValueError, KeyError) as exc:
                    log.warning("--mask-path %s not used: %s", self.mask_path, exc)
                    extra = None
                if extra is not None and extra.shape != (y, x):
                    log.warning(
                        "--mask-path %s: shape %s does not match the frames' %s: not used",
                        self.mask_path,
                        extra.shape,
                        (y, x),
                    )
                    extra = None
                if extra is not None:
                    mask = extra if mask is None else (mask | extra)
                    _put(spec, "mask_path", self.mask_path)
            if mask is None:
                mask = np.zeros((y, x), dtype=np.uint32)
            det.create_dataset("pixel_mask", data=mask, compression="gzip", compression_opts=1)
            if "pixel_mask_applied" not in det:
                _put(det, "pixel_mask_applied", bool(cfg.get("pixel_mask_applied", False)))
            for label, arr in (
                ("flatfield", h.flatfield),
                ("countrate_correction_table", h.countrate),
            ):
                if arr is None or label in spec:
                    continue
                a = self._header_array(arr, label, (y, x))
                if a is not None:
                    spec.create_dataset(label, data=a, compression="gzip", compression_opts=1)
            if h.frame_count:
                self._set_view(m, h.frame_count)

    def _set_view(self, m: h5py.File, frames: int) -> None:
        """``/entry/data/data``: one virtual data set over the data files.

        Made with the first frame for the announced count (frames not yet written
        read as 0), grown when more come, and set to the frames written at the end.
        """
        y, x = self.shape
        data = m["entry/data"]
        if "data" in data:
            if frames == self._vds_frames:
                return  # as announced: nothing to change
            del data["data"]
        self._vds_frames = frames
        if frames <= 0:
            return
        layout = h5py.VirtualLayout(shape=(frames, y, x), dtype=self.dtype)
        pos, i = 0, 1
        while pos < frames:
            n = min(self.frames_per_file, frames - pos)
            path = f"{self.name}_data_{i:06d}.h5"
            src = h5py.VirtualSource(path, "/entry/data/data", shape=(n, y, x))
            layout[pos : pos + n] = src
            pos += n
            i += 1
        ds = data.create_virtual_dataset("data", layout, fillvalue=0)
        ds.attrs["units"] = "counts"

    def _link_data_file(self, idx: int, path: str) -> None:
        """The DECTRIS-style external link to a data file, in ``data_files``."""
        with self._open_master() as m:
            files = m["entry/instrument/detector"].require_group("data_files")
            files.attrs["NX_class"] = "NXcollection"
            files[f"data_{idx:06d}"] = h5py.ExternalLink(os.path.basename(path), "/entry/data/data")
            # the view covers the announced count from the first frame on; only a
            # series without a count, or with more frames, needs it grown (files
            # still being written are not touched otherwise)
            if self.written >= self._vds_frames:
                self._set_view(m, idx * self.frames_per_file)

    # -- data ------------------------------------------------------------------------
    def _open_data_file(self) -> None:
        idx = len(self.data_paths) + 1
        path = os.path.join(self.directory, f"{self.name}_data_{idx:06d}.h5")
        # the master first, while none of the series' data files is open: HDF5
        # (2.0) can crash deleting a virtual data set whose source file is open
        self._close_reader()
        if idx == 1:
            self._write_frame_geometry()
        self._link_data_file(idx, path)
        f = h5py.File(path, "w", libver="latest", locking=False)
        entry = _nx(f.create_group("entry"), "NXentry")
        data = _nx(entry.create_group("data"), "NXdata")
        data.attrs["signal"] = "data"
        y, x = self.shape
        self._dset = data.create_dataset(
            "data",
            shape=(0, y, x),
            maxshape=(None, y, x),
            chunks=(1, y, x),
            dtype=self.dtype,
            compression=BITSHUFFLE,
            compression_opts=BSLZ4_OPTS,
        )
        self._dset.attrs["image_nr_low"] = np.int64(self.written + 1)
        self._dset.attrs["image_nr_high"] = np.int64(self.written)
        f.swmr_mode = True  # readers with swmr=True follow the series as it is written
        self._data_file = f
        self._write_chunk = self._dset.id.write_direct_chunk
        self._capacity = 0
        self._file_first = self.written
        self.data_paths.append(path)

    def _close_data_file(self) -> None:
        if self._data_file is None:
            return
        try:
            self._dset.resize(self.written - self._file_first, axis=0)  # drop the spare room
            self._dset.attrs["image_nr_high"] = np.int64(self.written)
        finally:
            f, self._data_file, self._dset = self._data_file, None, None
            self._write_chunk = None
            f.close()

    def _check_kind(self, img: Image) -> str | None:
        """Validate a frame's shape, type and encoding (once per kind); None if writable.

        Sets ``self._direct`` (the blob goes in as it is) and ``self._total``
        (its uncompressed size) for the frames of this kind.
        """
        bits = img.bits
        dtype = np.dtype(codec.DTYPES.get(bits, np.dtype("<u4")))
        if self.shape is None:
            self.shape, self.dtype = img.shape, dtype
        elif img.shape != self.shape or dtype != self.dtype:
            return f"frame {self.written} has another shape or type"
        try:
            enc = codec.parse_encoding(img.encoding)
        except codec.CodecError as exc:
            return str(exc)
        self._direct = enc.is_bslz4 and enc.little_endian and enc.bitshuffle_bits == bits
        self._total = self.shape[0] * self.shape[1] * dtype.itemsize
        self._kind = (img.shape, img.dtype, img.encoding)
        return None

    def write(self, img: Image) -> bool:
        """Append one frame; False (and a log line) if it cannot go in this series."""
        with self.lock:
            ok = self._write(img)
            if not ok:
                self._skipped_frames.append(self.processed)
            self.processed += 1
            return ok

    def _write(self, img: Image) -> bool:
        if (img.shape, img.dtype, img.encoding) != self._kind:
            problem = self._check_kind(img)
            if problem is not None:
                self._kind = None
                self.skipped += 1
                log.warning("hdf5 %s: %s: not written", self.name, problem)
                return False
        blob = pixels = None
        if self._direct:
            blob = img.data
            try:
                total, _ = codec.bslz4_header(blob)
            except codec.CodecError as exc:
                self.skipped += 1
                log.warning("hdf5 %s: %s: not written", self.name, exc)
                return False
            if total != self._total:
                self.skipped += 1
                log.warning("hdf5 %s: bslz4 blob of the wrong size: not written", self.name)
                return False
        else:
            try:
                pixels = codec.decode_frame(img.data, img.encoding, img.shape, img.bits)
            except codec.CodecError as exc:
                self.skipped += 1
                log.warning("hdf5 %s: frame does not decode (%s): not written", self.name, exc)
                return False
        k = self.written - self._file_first
        if self._data_file is None or k >= self.frames_per_file:
            self._close_data_file()
            self._open_data_file()
            k = 0
        if k >= self._capacity:
            # grow in steps: a resize per frame costs more than the write; the
            # frames written so far are flushed first, so they are safely in the
            # file (a reader, or read_frame, sees them)
            if self._all_direct and k:
                self._data_file.flush()
                self.on_disk = self.processed
            self._capacity = min(k + GROW_FRAMES, self.frames_per_file)
            self._dset.resize(self._capacity, axis=0)
        if blob is not None:
            self._write_chunk((k, 0, 0), blob, filter_mask=0)
        else:
            self._all_direct = False
            self.on_disk = 0
            self._dset[k] = pixels
        self.written += 1
        return True

    @property
    def unflushed(self) -> bool:
        """Frames written since the last flush (not yet counted in :attr:`on_disk`)."""
        return self._all_direct and self._data_file is not None and self.on_disk < self.processed

    def flush(self) -> None:
        """Flush the data file: every frame written so far is safely in it."""
        with self.lock:
            if self._data_file is not None:
                self._data_file.flush()
                if self._all_direct:
                    self.on_disk = self.processed

    def read_frame(self, frame: int):
        """Stream frame ``frame`` as written (its bslz4 chunk), or None.

        Only frames counted in :attr:`on_disk` and written as direct chunks
        (the stream's own bslz4 blobs) can be read back."""
        with self.lock:
            if frame >= max(self.on_disk, self._readable) or not self._all_direct:
                return None
            i = bisect.bisect_left(self._skipped_frames, frame)
            if i < len(self._skipped_frames) and self._skipped_frames[i] == frame:
                return None
            index = frame - i
            n = index // self.frames_per_file
            if n >= len(self.data_paths):
                return None
            k = index - n * self.frames_per_file
            try:
                if n == len(self.data_paths) - 1 and self._dset is not None:
                    return self._dset.id.read_direct_chunk((k, 0, 0))[1]
                path = self.data_paths[n]
                if self._reader is None or self._reader[0] != path:
                    self._close_reader()
                    self._reader = (path, h5py.File(path, "r"))
                return self._reader[1]["entry/data/data"].id.read_direct_chunk((k, 0, 0))[1]
            except (OSError, KeyError, ValueError) as exc:
                log.warning("hdf5 %s: frame %d cannot be read back: %s", self.name, frame, exc)
                return None

    def _close_reader(self) -> None:
        r, self._reader = self._reader, None
        if r is not None:
            r[1].close()

    def close(self) -> None:
        """Close the data file and the master file (always both, even after errors)."""
        with self.lock:
            self._close_locked()
            if self._all_direct:
                self.on_disk = self.processed

    def _close_locked(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._close_reader()
        self._close_data_file()  # an error here: the caller abandons the series
        with self._open_master() as m:
            entry = m["entry"]
            _put(entry, "end_time", _now_iso())
            spec = m["entry/instrument/detector/detectorSpecific"]
            _put(spec, "nimages_written", np.int64(self.written))
            if self.shape is not None:
                self._set_view(m, self.written)

    def abandon(self) -> None:
        """After a write error (a full disk): close what can be closed and rename
        the series' files to ``NAME.incomplete``, so no partial file is left
        under a final name.  Frames already flushed can still be read back (from
        the renamed files) for clients; no further frame counts as on disk."""
        with self.lock:  # read_frame (UDP thread) must not see half of this
            self._readable = max(self._readable, self.on_disk)
            self.on_disk = 0
            self.closed = True
            self._close_reader()
            f, self._data_file, self._dset = self._data_file, None, None
            if f is not None:
                try:
                    f.close()
                except Exception as exc:  # noqa: BLE001 - the file is lost anyway; keep going
                    log.debug("closing after an error: %s", exc)
            renamed = []
            for path in [self.master_path, *self.data_paths]:
                try:
                    if os.path.exists(path):
                        os.replace(path, path + ".incomplete")
                except OSError as exc:
                    log.error("hdf5: cannot rename %s away: %s", path, exc)
                renamed.append(path + ".incomplete")
            self.data_paths = renamed[1:]


# -- reading frames back (replay) ---------------------------------------------------
@dataclass
class StoredFrame:
    blob: bytes
    encoding: str
    shape: tuple[int, int]
    dtype: str


def _datasets(f: h5py.File, path: str) -> list[h5py.Dataset]:
    if path in f and isinstance(f[path], h5py.Dataset):
        return [f[path]]
    group = f.get(os.path.dirname(path) or "/")
    if group is None:
        raise KeyError(f"no dataset {path} in {f.filename}")
    names = sorted(k for k in group if re.fullmatch(r"data_\d{6}", k))
    if not names:
        raise KeyError(f"no dataset {path} (nor data_NNNNNN links) in {f.filename}")
    return [group[n] for n in names]


def frame_count(path: str, dataset: str = "/entry/data/data") -> int:
    with h5py.File(path, "r") as f:
        return sum(d.shape[0] for d in _datasets(f, dataset))


def read_frames(path: str, dataset: str = "/entry/data/data") -> Iterator[StoredFrame]:
    """Frames of an HDF5 file as stream blobs.

    Bitshuffle/LZ4 data sets chunked one frame per chunk give their chunks
    unchanged (``bs<bits>-lz4<``, exactly what the detector sent); anything
    else is read through h5py and given as raw ``<`` pixels.
    """
    with h5py.File(path, "r") as f:
        for ds in _datasets(f, dataset):
            if ds.ndim != 3 or ds.dtype.kind != "u" or ds.dtype.itemsize not in (1, 2, 4):
                raise ValueError(f"{ds.name}: need (n, y, x) unsigned 8/16/32-bit pixels")
            y, x = ds.shape[1:]
            bits = ds.dtype.itemsize * 8
            dtype = f"uint{bits}"
            plist = ds.id.get_create_plist()
            filters = [plist.get_filter(i) for i in range(plist.get_nfilters())]
            # bitshuffle options: version, version, element size, block size, compression (2=LZ4)
            direct = (
                len(filters) == 1
                and filters[0][0] == BITSHUFFLE
                and len(filters[0][2]) >= 5
                and filters[0][2][4] == 2
                and ds.chunks == (1, y, x)
            )
            direct = direct and ds.dtype.byteorder in ("<", "|", "=")
            for k in range(ds.shape[0]):
                if direct:
                    mask, chunk = ds.id.read_direct_chunk((k, 0, 0))
                    if mask == 0:
                        yield StoredFrame(chunk, codec.encoding_name("bslz4", bits), (y, x), dtype)
                        continue
                pixels = np.ascontiguousarray(ds[k], dtype=ds.dtype.newbyteorder("<"))
                yield StoredFrame(pixels.tobytes(), "<", (y, x), dtype)


__all__ = ["SeriesWriter", "read_frames", "frame_count", "read_mask", "hdf5plugin"]
