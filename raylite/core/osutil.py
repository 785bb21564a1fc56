"""Process helpers: die with the parent, free ports, terminate -> wait -> kill."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM, watch: bool = True) -> None:
    """Ask the kernel to send ``sig`` when our parent exits, and watch it as a backstop.

    ``RAYLITE_PARENT_PID`` names the expected parent: if it is already gone when we get
    here (it died while we started), exit at once.
    """
    expected = int(os.environ.get("RAYLITE_PARENT_PID", "0") or 0)
    if not expected:
        return
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        except OSError:
            pass
    if os.getppid() != expected:
        os._exit(1)
    if not watch:  # e.g. a process that must stay single-threaded to fork safely
        return

    def watcher():
        while True:
            time.sleep(1.0)
            if os.getppid() != expected:
                os.kill(os.getpid(), sig)
                time.sleep(2.0)
                os._exit(1)
    threading.Thread(target=watcher, daemon=True, name="raylite-parent-watch").start()


def free_port_pair(host: str = "127.0.0.1") -> int:
    """A port P such that P and P+1 are both free now."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port >= 65535:
            continue
        try:
            with socket.socket() as s2:
                s2.bind((host, port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no free pair of ports found")


def stop_processes(procs, timeout: float = 2.0) -> None:
    """SIGTERM, wait up to ``timeout``, then SIGKILL what is left (subprocess.Popen list)."""
    for p in procs:
        if p.poll() is None:
            try:
                p.terminate()
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except Exception:
            try:
                p.kill()
                p.wait(1.0)
            except Exception:
                pass


def signal_wakeup_fd() -> int:
    """A file descriptor that becomes readable when a signal arrives, so a poll loop
    notices SIGTERM at once instead of at its next timeout (main thread only)."""
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    signal.set_wakeup_fd(w)
    return r


def drain_fd(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def accelerator_type() -> str | None:
    """The GPU model of this machine in Ray's short form (``"H100"``, ``"A10G"``), from
    ``RAYLITE_ACCELERATOR_TYPE`` or ``nvidia-smi``; None without a GPU."""
    import re
    import shutil
    import subprocess

    forced = os.environ.get("RAYLITE_ACCELERATOR_TYPE")
    if forced:
        return forced
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=5, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    name = out.strip().splitlines()[0] if out.strip() else ""
    m = re.search(r"\b([A-Z]+\d+[A-Z]*)\b", name.replace("NVIDIA", ""))
    return m.group(1) if m else (name or None)
