"""Start programs of the suite as real processes on 127.0.0.1.

Used by the tests, ``make demo`` and the benchmarks alike: pick free
loopback ports, start ``python -m PACKAGE.MODULE ARGS`` with the suite on its
import path, wait until a port answers, and stop everything again (SIGTERM,
then SIGKILL) with bounded waits.  Loopback only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
LOOPBACK = "127.0.0.1"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def free_port_block(n: int, tries: int = 50) -> int:
    """A base port P such that P..P+n-1 are all free for TCP on 127.0.0.1."""
    for _ in range(tries):
        base = free_port()
        if base + n >= 65536:
            continue
        socks = []
        try:
            for i in range(n):
                s = socket.socket()
                s.bind((LOOPBACK, base + i))
                socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no block of {n} free ports found")


def wait_port(port: int, host: str = LOOPBACK, timeout: float = 10.0, proc=None) -> None:
    """Wait until a TCP connect to host:port succeeds (or raise TimeoutError)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with status {proc.returncode} before port {port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout} s")


def wait_until(pred, timeout: float = 10.0, step: float = 0.05) -> bool:
    """Poll ``pred()`` until it is true or ``timeout`` s pass; return its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return bool(pred())


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    e.setdefault("PYTHONUNBUFFERED", "1")
    return e


def command(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *map(str, args)]


def start(module: str, *args: str, stdout=None, stderr=None, **kw) -> subprocess.Popen:
    """Start ``python -m module args``; output to DEVNULL unless given."""
    return subprocess.Popen(
        command(module, *args),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL if stdout is None else stdout,
        stderr=subprocess.DEVNULL if stderr is None else stderr,
        env=env(),
        **kw,
    )


def run(module: str, *args: str, timeout: float = 30.0, input: bytes | None = None):
    """Run ``python -m module args`` to completion; return CompletedProcess (text)."""
    return subprocess.run(
        command(module, *args),
        input=input,
        capture_output=True,
        env=env(),
        timeout=timeout,
    )


def stop(proc: subprocess.Popen, timeout: float = 5.0) -> int | None:
    """SIGTERM, wait, SIGKILL; return the exit status."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(5)
    return proc.returncode


@contextlib.contextmanager
def running(module: str, *args: str, wait_for: int | None = None, timeout: float = 10.0, **kw):
    """Context manager: start, optionally wait for a TCP port, always stop."""
    proc = start(module, *args, **kw)
    try:
        if wait_for is not None:
            wait_port(wait_for, timeout=timeout, proc=proc)
        yield proc
    finally:
        stop(proc)
