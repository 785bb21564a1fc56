"""Physical limits of this machine: what no framework on it can beat.

Run from the repository root:

    python benchmarks/limits.py [--quick] [--json PATH]

Measured in this process and one child, as medians of repeats after a warm-up:

- **pyzmq round trip**: a DEALER in this process and a ROUTER echo in a child process
  over ``tcp://127.0.0.1`` (raylite's transport), one 64-byte message out and back at a
  time: the floor of a synchronous task or actor call (one request, one reply);
- **pyzmq pipelined**: the same pair, 10,000 messages sent before any reply is read:
  round trips per second, the ceiling of async tasks or actor calls per second;
- **pipe round trip**: the same over a ``multiprocessing.Pipe`` (what multiprocessing
  uses): the floor of any round trip between two processes, below pyzmq's;
- **memcpy**: ``np.copyto`` of 64 MiB into an already-touched array (GB/s), in one
  thread and split over one thread per CPU (numpy copies without the GIL; raylite and
  Ray split large copies so): what a copy of an object costs;
- **first-touch shared memory**: the same copy into a fresh ``/dev/shm`` file mapped for
  the purpose, page faults included (GB/s): the floor of a ``put`` of a new object;
- **Python start-up**: ``python -c pass``, and ``python -c "import zmq, cloudpickle,
  numpy"`` (what a worker must at least import): the floor of starting a worker.

Results go to ``benchmarks/results/limits.json``.
"""

from __future__ import annotations

import argparse
import mmap
import multiprocessing as mp
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._runner import write_json  # noqa: E402
from benchmarks.core import RESULTS, _samples, _shown, machine_info  # noqa: E402

MSG = b"x" * 64
BIG = 64 << 20
SHM_DIR = "/dev/shm"

# key: (label, unit, higher is better)
METRICS = {
    "zmq_rtt": ("pyzmq round trip, 2 processes", "us", False),
    "zmq_pipelined": ("pyzmq pipelined round trips", "msgs/s", True),
    "pipe_rtt": ("pipe round trip, 2 processes", "us", False),
    "memcpy": ("memcpy 64 MiB", "GB/s", True),
    "memcpy_parallel": (f"memcpy 64 MiB, {os.cpu_count()} threads", "GB/s", True),
    "first_touch_shm": ("first-touch /dev/shm copy 64 MiB", "GB/s", True),
    "python_startup": ("python -c pass", "s", False),
    "python_imports": ("python -c 'import zmq, cloudpickle, numpy'", "s", False),
}


def _echo(port_q: Any) -> None:
    """Child: a ROUTER that sends every message straight back."""
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    port_q.put(sock.bind_to_random_port("tcp://127.0.0.1"))
    while True:
        frames = sock.recv_multipart(copy=False)
        if frames[-1].bytes == b"stop":
            break
        sock.send_multipart(frames, copy=False)
    sock.close(linger=0)
    ctx.term()


def measure_zmq(repeats: int, round_trips: int, pipelined: int) -> dict[str, list[float]]:
    import zmq

    fork = mp.get_context("fork")
    port_q = fork.Queue()
    child = fork.Process(target=_echo, args=(port_q,), daemon=True)
    child.start()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    try:
        sock.connect(f"tcp://127.0.0.1:{port_q.get(timeout=30)}")

        def rtt() -> float:
            start = time.perf_counter()
            for _ in range(round_trips):
                sock.send(MSG)
                sock.recv()
            return 1e6 * (time.perf_counter() - start) / round_trips

        def pipe() -> float:
            start = time.perf_counter()
            for _ in range(pipelined):
                sock.send(MSG)
            for _ in range(pipelined):
                sock.recv()
            return pipelined / (time.perf_counter() - start)

        return {"zmq_rtt": _samples(rtt, repeats), "zmq_pipelined": _samples(pipe, repeats)}
    finally:
        sock.send(b"stop")
        child.join(10)
        if child.is_alive():
            child.kill()
        sock.close(linger=0)
        ctx.term()


def _pipe_echo(conn: Any) -> None:
    while (msg := conn.recv_bytes()) != b"stop":
        conn.send_bytes(msg)


def measure_pipe(repeats: int, round_trips: int) -> dict[str, list[float]]:
    """A ``multiprocessing.Pipe`` (a Unix socket pair, no framing library): below pyzmq,
    the floor of any round trip between two processes here."""
    fork = mp.get_context("fork")
    mine, theirs = fork.Pipe()
    child = fork.Process(target=_pipe_echo, args=(theirs,), daemon=True)
    child.start()

    def rtt() -> float:
        start = time.perf_counter()
        for _ in range(round_trips):
            mine.send_bytes(MSG)
            mine.recv_bytes()
        return 1e6 * (time.perf_counter() - start) / round_trips

    try:
        return {"pipe_rtt": _samples(rtt, repeats)}
    finally:
        mine.send_bytes(b"stop")
        child.join(10)
        if child.is_alive():
            child.kill()


def measure_memory(repeats: int, size: int = BIG) -> dict[str, list[float]]:
    import numpy as np

    src = np.ones(size, dtype=np.uint8)
    dst = np.zeros(size, dtype=np.uint8)

    def memcpy() -> float:
        start = time.perf_counter()
        np.copyto(dst, src)
        return size / (time.perf_counter() - start) / 1e9

    from concurrent.futures import ThreadPoolExecutor

    ways = os.cpu_count() or 1
    bounds = [(i * size // ways, (i + 1) * size // ways) for i in range(ways)]
    pool = ThreadPoolExecutor(ways)

    def memcpy_parallel() -> float:  # numpy releases the GIL while it copies
        start = time.perf_counter()
        list(pool.map(lambda b: np.copyto(dst[b[0]:b[1]], src[b[0]:b[1]]), bounds))
        return size / (time.perf_counter() - start) / 1e9

    def first_touch(i: list[int] = [0]) -> float:  # noqa: B006 (a counter for unique names)
        i[0] += 1
        path = os.path.join(SHM_DIR if os.path.isdir(SHM_DIR) else "/tmp",
                            f"raylite-bench-limits-{os.getpid()}-{i[0]}")
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            start = time.perf_counter()
            os.ftruncate(fd, size)
            with mmap.mmap(fd, size) as m:
                view = np.frombuffer(m, dtype=np.uint8)
                np.copyto(view, src)
                elapsed = time.perf_counter() - start
                del view
            return size / elapsed / 1e9
        finally:
            os.close(fd)
            os.unlink(path)

    try:
        return {"memcpy": _samples(memcpy, repeats),
                "memcpy_parallel": _samples(memcpy_parallel, repeats),
                "first_touch_shm": _samples(first_touch, repeats)}
    finally:
        pool.shutdown()


def measure_startup(repeats: int) -> dict[str, list[float]]:
    def run(code: str) -> Callable[[], float]:
        def sample() -> float:
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True)
            return time.perf_counter() - start
        return sample

    return {"python_startup": _samples(run("pass"), repeats),
            "python_imports": _samples(run("import zmq, cloudpickle, numpy"), repeats)}


def measure(quick: bool) -> dict[str, Any]:
    repeats = 3 if quick else 9
    samples = {**measure_zmq(repeats, 1000 if quick else 5000, 10_000 if quick else 50_000),
               **measure_pipe(repeats, 1000 if quick else 5000),
               **measure_memory(repeats), **measure_startup(repeats)}
    import numpy
    import zmq

    metrics = {}
    for key, values in samples.items():
        label, unit, higher = METRICS[key]
        metrics[key] = {"label": label, "unit": unit, "higher_is_better": higher,
                        "median": statistics.median(values), "min": min(values),
                        "max": max(values)}
    return {"machine": machine_info(), "loadavg": os.getloadavg(),
            "versions": {"python": platform.python_version(), "pyzmq": zmq.__version__,
                         "libzmq": zmq.zmq_version(), "numpy": numpy.__version__},
            "config": {"quick": quick, "repeats": repeats, "bytes": BIG},
            "samples": samples, "metrics": metrics}


def print_table(result: dict[str, Any]) -> None:
    print(f"\nPhysical limits, medians of {result['config']['repeats']} [min-max]")
    for m in result["metrics"].values():
        print(f"  {m['label'] + ' (' + m['unit'] + ')':<52}{m['median']:>12,.4g} "
              f"[{m['min']:,.4g}-{m['max']:,.4g}]")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer repeats and messages")
    p.add_argument("--json", type=Path, default=RESULTS / "limits.json")
    args = p.parse_args(argv)
    result = measure(args.quick)
    print_table(result)
    write_json(args.json, result)
    print(f"saved {_shown(args.json)}")


if __name__ == "__main__":
    main()
