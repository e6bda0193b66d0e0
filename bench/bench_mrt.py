"""Mr. T benchmarks, every figure a ratio against a baseline measured in the same run.

1. ZeroMQ ingest of EIGER2 4M and 500K bslz4 frames from ``eiger-zmq-sim``
   flat out: mr_t's frames per second (series start to end in its log)
   divided by a bare pyzmq PULL loop receiving the same simulator run.
2. UDP serving to one stop-and-wait client (``MrTClient``): bytes per second
   divided by a bare UDP request/reply loop (a minimal server process
   answering 9-byte requests with 17 + payload bytes) with the same payload;
   also mr_t served to a minimal client loop (the server's share alone).
3. HDF5 output: frames per second through mr_t's writer (queue, thread,
   NXmx files) divided by a bare h5py ``write_direct_chunk`` loop of the same
   blobs into a preallocated data set; also end to end (simulator -> mr_t
   process -> files, from mr_t's log), which ingest bounds as well.

4. The headline, end to end at detector rate: ``eiger-zmq-sim`` paced at
   560 frames/s with EIGER2 4M frames (2068x2162, 16-bit bslz4) for 3,000
   frames, through the mr_t process with HDF5 output and the default 1 GiB
   cache, while a UDP client (``MrTClient``) fetches at its own pace.
   Printed: the simulator's own rate (from its log), the sustained end to end
   rate (mr_t's series start to the master file complete), frames lost
   (sent - in the files), frames served from disk (mr_t's counters, read
   with SIGHUP), the client's frames checked against the simulator's, and
   mr_t's CPU per frame.

Every figure is the median of interleaved rounds with its range: the machine
is shared, so a single best or worst run says little.

``python -m bench mrt [--quick] [--headline-only]``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import h5py
import hdf5plugin
import zmq

from mrt import protocol
from mrt.protocol import Header, Image, SeriesEnd
from mrt.server import Hdf5Writer
from mrt.sim import FrameSource
from tests.support import mrt_rig as harness
from tests.support import procs

EIGER2_4M = (2068, 2162)
EIGER2_500K = (1028, 512)
REPEAT = 3
HEADLINE_RATE = 560
HEADLINE_FRAMES = 3000
#: the headline's UDP client fetches this many frames per second at most, a slow
#: client (an FPGA reading out at its own pace); a flat-out stop-and-wait client
#: needs a core of its own plus mr_t's UDP thread, which 2 shared cores do not have
CLIENT_FPS = 20


def verdict(ratio: float, target: float) -> str:
    return f"target >= {target}{'' if ratio >= target else ': NOT MET'}"


def spread(values) -> str:
    """``median (min-max)`` of a list of figures."""
    v = sorted(values)
    fmt = "{:.2f}" if v[-1] < 10 else "{:.0f}"
    return f"{fmt.format(statistics.median(v))} ({fmt.format(v[0])}-{fmt.format(v[-1])})"


TS = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) ")


def log_time(log: Path, needle: str, timeout: float = 120.0) -> float:
    """Timestamp (seconds) of the first log line containing ``needle``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        for line in text.splitlines():
            if needle in line:
                m = TS.match(line)
                if m:
                    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()
        time.sleep(0.05)
    raise TimeoutError(f"{needle!r} not in {log}")


def sim_args(shape, n: int) -> list:
    return ["--width", shape[0], "--height", shape[1], "--frames", n, "--rate", 0,
            "--distinct", 2]  # fmt: skip


def bare_pull(shape, n: int, keep: bool = False) -> float:
    """Frames per second a bare PULL loop receives from the simulator.

    With ``keep`` the loop holds on to every frame, as a cache must.
    """
    zp = procs.free_port()
    sim = harness.start_sim(zp, *sim_args(shape, n))
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.connect(harness.endpoint(zp))
    try:
        frames = 0
        kept = []
        t0 = None
        while True:
            parts = sock.recv_multipart(copy=False)
            if t0 is None:
                t0 = time.perf_counter()  # the header
                continue
            if len(parts) == 1:  # series end
                break
            frames += 1
            if keep:
                kept.append(parts[2])
        return frames / (time.perf_counter() - t0)
    finally:
        sock.close(0)
        ctx.term()
        procs.stop(sim)


def mrt_ingest(shape, n: int, tmp: Path) -> float:
    zp, up = procs.free_port(), procs.free_port(socket.SOCK_DGRAM)
    tmp.mkdir(parents=True, exist_ok=True)
    return rate_from_log(
        shape, n, tmp / "ingest.log", ("series 1 started", "series 1 ended"), zp, up
    )


def rate_from_log(shape, n: int, log: Path, needles, zp: int, up: int, *mrt_args) -> float:
    """Run the simulator into mr_t; frames per second between two log lines of mr_t."""
    server = harness.start_mrt(up, zp, "--frame-cache-bytes", "4G", "-l", log, *mrt_args)
    sim = harness.start_sim(zp, *sim_args(shape, n))
    try:
        t0 = log_time(log, needles[0])
        t1 = log_time(log, needles[1])
        return n / max(t1 - t0, 1e-3)
    finally:
        procs.stop(sim)
        procs.stop(server)


def bench_ingest(label: str, shape, n: int, tmp: Path) -> float:
    blob = FrameSource(*shape).blob(0)
    base, keep, ours, ratios = [], [], [], []
    for i in range(REPEAT):  # interleaved rounds: the machine is shared
        base.append(bare_pull(shape, n))
        keep.append(bare_pull(shape, n, keep=True))
        ours.append(mrt_ingest(shape, n, tmp / f"{shape[0]}-{i}"))
        ratios.append(ours[-1] / keep[-1])
    ratio = statistics.median(ratios)
    print(
        f"ingest {label} ({shape[0]}x{shape[1]} bslz4, {len(blob) / 1e6:.2f} MB/frame, "
        f"{n} frames): mr_t {spread(ours)} fps, bare PULL keeping every frame "
        f"{spread(keep)} fps, ratio {spread(ratios)} ({verdict(ratio, 0.8)}); "
        f"bare PULL dropping frames {spread(base)} fps"
    )
    return ratio


# -- UDP ----------------------------------------------------------------------------
def baseline_udp_server(port: int, payload: int) -> int:
    """A bare request/reply server: 9-byte request in, 17 + payload bytes out."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", port))
    reply = bytes(17 + payload)
    while True:
        data, addr = s.recvfrom(100)
        if data == b"quit":
            return 0
        s.sendto(reply, addr)


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of a process so far, in ns (Linux schedstat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that ended meanwhile
    return total


def bare_udp(total: int, payload: int) -> tuple[float, float]:
    """(bytes per second, server CPU µs per request) of the bare loop."""
    port = procs.free_port(socket.SOCK_DGRAM)
    srv = procs.start("bench.bench_mrt", "--udp-baseline", str(port), str(payload))
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect(("127.0.0.1", port))
    s.settimeout(0.2)
    try:
        req = struct.pack(">BII", 2, 0, 0)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # wait for the server
            try:
                s.send(req)
                s.recv(70000)
                break
            except OSError:
                time.sleep(0.05)
        got = requests = 0
        c0, t0 = cpu_ns(srv.pid), time.perf_counter()
        while got < total:
            s.send(req)
            requests += 1
            try:
                got += len(s.recv(70000)) - 17
            except TimeoutError:
                continue
        dt = time.perf_counter() - t0
        return got / dt, (cpu_ns(srv.pid) - c0) / requests / 1000
    finally:
        s.send(b"quit")
        s.close()
        procs.stop(srv)


def lean_fetch(sock: socket.socket, frames: int, pid: int) -> tuple[float, float]:
    """(bytes per second, server CPU µs per request) of a minimal stop-and-wait loop
    fetching a whole series from the server process ``pid``."""
    got = requests = 0
    c0, t0 = cpu_ns(pid), time.perf_counter()
    for frame in range(frames):
        start, total = 0, 1
        while start < total:
            sock.send(struct.pack(">BII", 2, frame, start))
            requests += 1
            try:
                data = sock.recv(70000)
            except TimeoutError:
                continue
            _, _, f, s, total = struct.unpack_from(">BIIII", data)
            if f == frame and s == start and total:
                start += len(data) - 17
                got += len(data) - 17
            elif not total:
                total = 1
    dt = time.perf_counter() - t0
    return got / dt, (cpu_ns(pid) - c0) / requests / 1000


def mrt_udp(shape, n: int, payload: int) -> dict:
    """Interleaved best of REPEAT: mr_t served to ``MrTClient``, to a minimal client
    loop, and the bare request/reply loop, one after the other in every round.

    The simulator sends 2 * REPEAT series; each is fetched once it is complete
    (only serving is measured), alternately by ``MrTClient`` and by the minimal
    loop, and each fetch is followed by a bare run of the same byte count.
    """
    zp, up = procs.free_port(), procs.free_port(socket.SOCK_DGRAM)
    server = harness.start_mrt(up, zp, "--frame-cache-bytes", "4G", "--udp-payload-size", payload)
    sim = harness.start_sim(zp, *sim_args(shape, n), "--encoding", "raw", "--series",
                            2 * REPEAT, "--pause", 2.5)  # fmt: skip
    best, nbytes, lean, base = [], 0, [], []
    lean_cpu, base_cpu = [], []  # server CPU per request
    try:
        with harness.MrTClient(procs.LOOPBACK, up) as c:
            for sid in range(1, 2 * REPEAT + 1):
                deadline = time.monotonic() + 60
                pong = None
                while time.monotonic() < deadline:
                    pong = c.ping()
                    if pong is not None and pong.series_id == sid:
                        break
                    time.sleep(0.01)
                # let the whole series arrive: only serving is measured (and the next
                # series, 2.5 s after this one, must not replace it during the fetch)
                time.sleep(0.5)
                if sid % 2 == 0:  # a minimal client loop: the server's cost alone
                    rate, cpu = lean_fetch(c.sock, pong.frame_count, server.pid)
                    lean.append(rate)
                    lean_cpu.append(cpu)
                else:
                    t0 = time.perf_counter()
                    data = c.fetch(pong)
                    dt = time.perf_counter() - t0
                    if data.resends:
                        print(f"  (series {sid}: {data.resends} requests resent after a timeout)")
                    if data.frame_count != len(data.frames):
                        raise RuntimeError(f"series {sid}: {len(data.frames)} of {n} frames")
                    best.append(data.nbytes / dt)
                    nbytes = data.nbytes
                rate, cpu = bare_udp(n * shape[0] * shape[1] * 2, payload)
                base.append(rate)
                base_cpu.append(cpu)
        return dict(ours=best, nbytes=nbytes, lean=lean, base=base, lean_cpu=lean_cpu,
                    base_cpu=base_cpu)  # fmt: skip
    finally:
        procs.stop(sim)
        procs.stop(server)


def bench_udp(payload: int, n: int) -> float:
    r = mrt_udp(EIGER2_500K, n, payload)
    # rounds alternate: odd series MrTClient, even series the minimal loop; each
    # followed by a bare run, so the bare runs pair up with both
    base = r["base"]
    ratios = [o / b for o, b in zip(r["ours"], base[0::2], strict=False)]
    lean_ratios = [o / b for o, b in zip(r["lean"], base[1::2], strict=False)]
    cpu_ratios = [b / o for o, b in zip(r["lean_cpu"], r["base_cpu"][1::2], strict=False)]
    ratio = statistics.median(lean_ratios)
    print(
        f"UDP serving, payload {payload} B, {r['nbytes'] / 1e6:.1f} MB a series: "
        f"mr_t with a minimal client loop {spread([x / 1e6 for x in r['lean']])} MB/s, bare "
        f"request/reply {spread([x / 1e6 for x in base])} MB/s, ratio {spread(lean_ratios)} "
        f"({verdict(ratio, 0.9)}); "
        f"with MrTClient {spread([x / 1e6 for x in r['ours']])} MB/s, ratio {spread(ratios)}; "
        f"server CPU per request bare/mr_t {spread(cpu_ratios)} "
        f"(mr_t {spread(r['lean_cpu'])} us)"
    )
    return ratio


# -- HDF5 ---------------------------------------------------------------------------
def bare_h5(shape, n: int, tmp: Path, durable: bool = False) -> float:
    """A bare loop: preallocated data set, one direct chunk write per frame.

    With ``durable`` the time includes an fsync of the file: the rate the disk
    itself sustains, not the page cache's."""
    src = FrameSource(*shape, distinct=2)
    blobs = [src.blob(0), src.blob(1)]
    path = tmp / "bare.h5"
    os.sync()  # every run starts without the previous runs' dirty pages
    t0 = time.perf_counter()
    with h5py.File(path, "w") as f:
        d = f.create_dataset(
            "entry/data/data",
            shape=(n, shape[1], shape[0]),
            chunks=(1, shape[1], shape[0]),
            dtype="<u2",
            **hdf5plugin.Bitshuffle(nelems=0, cname="lz4"),
        )
        for k in range(n):
            d.id.write_direct_chunk((k, 0, 0), blobs[k % 2])
    if durable:
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    dt = time.perf_counter() - t0
    path.unlink()
    return n / dt


def writer_h5(shape, n: int, tmp: Path) -> float:
    """mr_t's HDF5 output path (queue, writer thread, NXmx files) fed in process."""
    src = FrameSource(*shape, distinct=2)
    out = tmp / "writer"
    out.mkdir(exist_ok=True)
    blobs = [src.blob(0), src.blob(1)]  # encoded before timing, as in bare_h5
    os.sync()
    w = Hdf5Writer(str(out), 1000, 1 << 32)
    w.start()
    stop = threading.Event()
    t0 = time.perf_counter()
    w.put(1, Header(1, "basic", {"nimages": n, "ntrigger": 1}), stop)
    for k in range(n):
        w.put(1, Image(1, k, src.shape, src.dtype, src.encoding, blobs[k % 2]), stop)
    w.put(1, SeriesEnd(1), stop)
    w.stop(120)
    dt = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    return n / dt


def mrt_h5(shape, n: int, tmp: Path) -> float:
    """End to end: simulator flat out -> mr_t process -> files (bounded by ingest too)."""
    zp, up = procs.free_port(), procs.free_port(socket.SOCK_DGRAM)
    out = tmp / "h5"
    out.mkdir(exist_ok=True)
    needles = ("hdf5: series 1 to", "series_1_master.h5 complete")
    try:
        return rate_from_log(shape, n, tmp / "h5.log", needles, zp, up, "--hdf5-output", out)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def bench_h5(n: int, tmp: Path) -> float:
    base, ours, ratios = [], [], []
    for i in range(REPEAT):  # alternating which runs first
        if i % 2:
            ours.append(writer_h5(EIGER2_4M, n, tmp))
            base.append(bare_h5(EIGER2_4M, n, tmp))
        else:
            base.append(bare_h5(EIGER2_4M, n, tmp))
            ours.append(writer_h5(EIGER2_4M, n, tmp))
        ratios.append(ours[-1] / base[-1])
    ratio = statistics.median(ratios)
    print(
        f"HDF5 output, 4M bslz4, {n} frames: mr_t writer {spread(ours)} fps, bare "
        f"direct-chunk loop {spread(base)} fps, ratio {spread(ratios)} ({verdict(ratio, 0.9)})"
    )
    return ratio


# -- the headline: EIGER2 4M at 560 frames/s through mr_t into HDF5 --------------------
def proc_cpu_s(pid: int) -> float:
    return cpu_ns(pid) / 1e9


def headline(
    tmp: Path, n: int = HEADLINE_FRAMES, rate: float = HEADLINE_RATE, client_fps=CLIENT_FPS
) -> dict:
    """One end-to-end run; returns its figures (see the module docstring)."""
    zp, up = procs.free_port(), procs.free_port(socket.SOCK_DGRAM)
    out = tmp / "headline"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    log, simlog = tmp / "headline.log", tmp / "headline-sim.log"
    for p in (log, simlog):
        p.unlink(missing_ok=True)
    server = harness.start_mrt(up, zp, "--hdf5-output", out, "-l", log)
    fetched: list = []
    stop = threading.Event()

    def client() -> None:  # a UDP client fetching at its own pace, frame by frame
        with harness.MrTClient(procs.LOOPBACK, up) as c:
            pong = c.wait_series(60)
            if pong is None:
                return
            st = protocol.FrameFetch(pong.frame_count)
            t_start = time.monotonic()
            while not stop.is_set() and not st.done:
                ahead = t_start + st.frame / client_fps - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
                c.sock.send(st.next_request().encode())
                msg = c._recv(time.monotonic() + 0.2)
                if isinstance(msg, protocol.PacketReply) and st.on_reply(msg) == "wait":
                    time.sleep(0.002)
            fetched.extend(st.frames)

    try:
        log_time(log, "mr_t started", 30)
        os.sync()  # start without the previous runs' dirty pages
        th = threading.Thread(target=client, daemon=True)
        th.start()
        c0 = proc_cpu_s(server.pid)
        with open(simlog, "wb") as f:
            sim = harness.start_sim(zp, "--width", EIGER2_4M[0], "--height", EIGER2_4M[1],
                                    "--frames", n, "--rate", rate, stderr=f)  # fmt: skip
            sim.wait(timeout=n / rate * 20 + 120)
        t0 = log_time(log, "series 1 started", 60)
        t_in = log_time(log, "series 1 ended", 300)
        t1 = log_time(log, "series_1_master.h5 complete", 300)
        cpu = proc_cpu_s(server.pid) - c0
        time.sleep(5)  # the client keeps fetching (from disk) for a while
        stop.set()
        th.join(30)
        server.send_signal(signal.SIGHUP)  # the reload line carries the counters
        text = ""
        deadline = time.monotonic() + 10
        while "served from disk" not in text and time.monotonic() < deadline:
            text = log.read_text()
            time.sleep(0.1)
        m = re.search(r"(\d+) served from disk", text)
        spilled = re.search(r"(\d+) frames released to disk", text)
        sim_rate = re.search(r"frames in [\d.]+ s \(([\d.]+) Hz\)", simlog.read_text())
        late = re.search(r"(\d+) frames more than one period late", simlog.read_text())
        with h5py.File(out / "series_1_master.h5", "r") as f:
            in_files = f["entry/data/data"].shape[0]
        src = FrameSource(*EIGER2_4M)
        good = sum(fetched[k] == src.blob(k) for k in range(len(fetched)))
        return dict(
            sim=float(sim_rate.group(1)) if sim_rate else 0.0,
            late=int(late.group(1)) if late else 0,
            e2e=n / max(t1 - t0, 1e-3),
            ingest=n / max(t_in - t0, 1e-3),
            lost=n - in_files,
            from_disk=int(m.group(1)) if m else -1,
            spilled=int(spilled.group(1)) if spilled else -1,
            fetched=len(fetched),
            good=good,
            cpu_ms=cpu / n * 1e3,
        )
    finally:
        stop.set()
        procs.stop(server)
        shutil.rmtree(out, ignore_errors=True)


def bench_headline(tmp: Path, rounds: int, n: int) -> None:
    disk = []
    runs = []
    for _ in range(rounds):
        disk.append(bare_h5(EIGER2_4M, n, tmp, durable=True))
        runs.append(headline(tmp, n))
    col = lambda k: [r[k] for r in runs]  # noqa: E731
    held = [r for r in runs if r["late"] > n // 100]
    print(
        f"headline, EIGER2 4M bslz4 at {HEADLINE_RATE} fps, {n} frames, default cache, HDF5 "
        f"on, a UDP client fetching {CLIENT_FPS} frames/s meanwhile ({rounds} runs): "
        f"simulator's own rate "
        f"{spread(col('sim'))} fps (frames more than a period late {spread(col('late'))}); "
        f"received by mr_t {spread(col('ingest'))} fps; sustained end to end (until the "
        f"master is complete) {spread(col('e2e'))} fps; frames lost {spread(col('lost'))}; "
        f"released to disk {spread(col('spilled'))}; served from disk "
        f"{spread(col('from_disk'))}; client fetched {spread(col('fetched'))} frames, "
        f"{sum(col('good'))} of {sum(col('fetched'))} byte-identical; "
        f"mr_t CPU per frame {spread(col('cpu_ms'))} ms; "
        f"simulator held back in {len(held)} of {rounds} runs; for scale, the disk: a bare "
        f"direct-chunk loop of the same {n} frames including fsync {spread(disk)} fps"
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--udp-baseline"]:
        return baseline_udp_server(int(argv[1]), int(argv[2]))
    quick = "--quick" in argv
    tmp = Path(tempfile.mkdtemp(prefix="bench-mrt-"))
    try:
        print(
            "figures are ratios against baselines measured in this run: median (range) "
            f"of {REPEAT} interleaved rounds (noisy shared machine)"
        )
        if "--headline-only" not in argv:
            bench_ingest("EIGER2 4M", EIGER2_4M, 150 if quick else 600, tmp)
            bench_ingest("EIGER2 500K", EIGER2_500K, 300 if quick else 2000, tmp)
            bench_udp(10000, 20 if quick else 60)
            bench_h5(100 if quick else 600, tmp)
        bench_headline(tmp, 1 if quick else REPEAT, 600 if quick else HEADLINE_FRAMES)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
