"""A node's shared-memory object store: one file per large object under /dev/shm.

The process that creates a large value writes it once, straight from the pickle's
out-of-band buffers into a shared-memory file; readers on the node map the file and get
NumPy arrays that are read-only views of it (no copy). The node agent owns the node's
store directory and removes it when it exits; the driver that started a local cluster
removes the whole session directory at shutdown, so nothing stays in /dev/shm.

File layout: ``MAGIC | n_buffers:u32 | meta_len:u64 | (offset:u64, len:u64) * n | meta |
buffers`` with every buffer aligned to 64 bytes.
"""

from __future__ import annotations

import mmap
import os
import shutil
import struct

from raylite.core.serialization import Serialized

MAGIC = b"RLOBJ001"
_ALIGN = 64
SHM_ROOT = "/dev/shm" if os.path.isdir("/dev/shm") else None


def session_dir(session: str) -> str:
    root = SHM_ROOT or os.path.join(os.environ.get("TMPDIR", "/tmp"))
    return os.path.join(root, f"raylite_{session}")


def node_dir(session: str, node_id: str) -> str:
    return os.path.join(session_dir(session), node_id)


def _align(n: int) -> int:
    return (n + _ALIGN - 1) & ~(_ALIGN - 1)


def write(directory: str, name: str, s: Serialized) -> tuple[str, int]:
    """Write a serialized value into ``directory``; returns (path, size)."""
    n = len(s.buffers)
    header = len(MAGIC) + 12 + 16 * n
    pos = _align(header + len(s.meta))
    table = []
    for b in s.buffers:
        ln = memoryview(b).nbytes
        table.append((pos, ln))
        pos = _align(pos + ln)
    size = max(pos, 1)
    path = os.path.join(directory, name)
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, size)
        with mmap.mmap(fd, size) as m:
            struct.pack_into("<IQ", m, len(MAGIC), n, len(s.meta))
            m[: len(MAGIC)] = MAGIC
            off = len(MAGIC) + 12
            for i, (o, ln) in enumerate(table):
                struct.pack_into("<QQ", m, off + 16 * i, o, ln)
            m[header: header + len(s.meta)] = s.meta
            for (o, ln), b in zip(table, s.buffers, strict=False):
                m[o: o + ln] = memoryview(b).cast("B")
    finally:
        os.close(fd)
    os.rename(tmp, path)
    return path, size


def read(path: str) -> tuple[bytes, list[memoryview]]:
    """Map an object file; returns its meta and read-only views of its buffers."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        # copy-on-write: a reader that writes into a zero-copy tensor gets private pages
        # instead of a crash, and the stored object never changes; NumPy views are
        # read-only anyway (the memoryview is)
        m = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)
    return parse_bytes(memoryview(m).toreadonly())


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def parse_bytes(data) -> tuple[bytes, list[memoryview]]:
    """Split an object file's bytes (mapped, or fetched from another node) into meta and
    views of its buffers."""
    view = memoryview(data)
    if bytes(view[: len(MAGIC)]) != MAGIC:
        raise ValueError("not a raylite object")
    n, meta_len = struct.unpack_from("<IQ", view, len(MAGIC))
    off = len(MAGIC) + 12
    header = off + 16 * n
    bufs = []
    for i in range(n):
        o, ln = struct.unpack_from("<QQ", view, off + 16 * i)
        bufs.append(view[o: o + ln])
    return bytes(view[header: header + meta_len]), bufs


def delete(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def remove_dir(directory: str) -> None:
    shutil.rmtree(directory, ignore_errors=True)
