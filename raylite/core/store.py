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
import tempfile
import warnings

from raylite.core.serialization import Serialized

MAGIC = b"RLOBJ001"
_ALIGN = 64
SHM_ROOT = "/dev/shm"
ROOT_ENV = "RAYLITE_STORE_ROOT"
MIN_SHM_FREE = int(os.environ.get("RAYLITE_MIN_SHM_FREE", str(256 << 20)))


def store_root() -> str:
    """Where stores live: /dev/shm, or a temporary directory when /dev/shm is missing or
    too small (Docker and Binder give 64 MiB). Decided once by the process that starts a
    cluster and inherited through the environment, so every process agrees."""
    root = os.environ.get(ROOT_ENV)
    if root is None:
        root = os.environ[ROOT_ENV] = _choose_root()
    return root


def _choose_root() -> str:
    fallback = tempfile.gettempdir()
    if not os.path.isdir(SHM_ROOT):
        return fallback
    st = os.statvfs(SHM_ROOT)
    free = st.f_bavail * st.f_frsize
    if free >= MIN_SHM_FREE:
        return SHM_ROOT
    warnings.warn(f"/dev/shm has only {free >> 20} MiB free, so raylite's object store uses "
                  f"{fallback} instead (disk-backed: slower, and not zero-copy across "
                  "processes' page cache misses). Give the machine or container more shared "
                  "memory (e.g. `docker run --shm-size=2g`) to fix this.", stacklevel=3)
    return fallback


def session_dir(session: str) -> str:
    return os.path.join(store_root(), f"raylite_{session}")


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
    head = bytearray(header)
    head[: len(MAGIC)] = MAGIC
    struct.pack_into("<IQ", head, len(MAGIC), n, len(s.meta))
    for i, (o, ln) in enumerate(table):
        struct.pack_into("<QQ", head, len(MAGIC) + 12 + 16 * i, o, ln)
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, size)
        # write(2), not a mapping: on tmpfs it runs at memcpy-into-fresh-memory speed,
        # more than twice as fast as page-faulting a new mapping
        _pwrite_all(fd, head, 0)
        _pwrite_all(fd, s.meta, header)
        for (o, _), b in zip(table, s.buffers, strict=True):
            _pwrite_all(fd, memoryview(b).cast("B"), o)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    return path, size


def _pwrite_all(fd: int, data, offset: int) -> None:
    view = memoryview(data)
    while view.nbytes:
        n = os.pwrite(fd, view[: 1 << 30], offset)
        view = view[n:]
        offset += n


def read(path: str) -> tuple[bytes, list[memoryview]]:
    """Map an object file (from the store, or from disk if it was spilled); returns its
    meta and read-only views of its buffers."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        fd = os.open(spill_path(path), os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        # copy-on-write: a reader that writes into a zero-copy tensor gets private pages
        # instead of a crash, and the stored object never changes; NumPy views are
        # read-only anyway (the memoryview is)
        m = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)
    return parse_bytes(memoryview(m).toreadonly())


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
    for p in (path, spill_path(path)):
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass


def delete_everywhere(path: str) -> None:
    """Delete an object and the copies other nodes of this host pulled of it. (Copies on
    other hosts stay until their node stops.)"""
    node_dir_, name = os.path.split(path)
    session = os.path.dirname(node_dir_)
    try:
        nodes = [e.path for e in os.scandir(session) if e.is_dir()]
    except FileNotFoundError:
        nodes = [node_dir_]
    for d in nodes:
        delete(os.path.join(d, name))


# ---------------------------------------------------------------- capacity and spilling
CAPACITY_ENV = "RAYLITE_OBJECT_STORE_MEMORY"


def capacity() -> int | None:
    """The per-node store capacity in bytes (``init(object_store_memory=...)``), or None."""
    value = os.environ.get(CAPACITY_ENV)
    return int(value) if value else None


def usage(directory: str) -> tuple[int, int]:
    """(bytes, objects) held in a node's store directory right now."""
    total = count = 0
    try:
        for e in os.scandir(directory):
            try:
                total += e.stat().st_size
                count += 1
            except FileNotFoundError:
                pass  # freed while we looked
    except FileNotFoundError:
        pass
    return total, count


def spill_root(session: str) -> str:
    return os.path.join(tempfile.gettempdir(), f"raylite_spill_{session}")


def spill_path(path: str) -> str:
    """Where an object of a node's store goes when spilled: a disk directory beside the
    store (same session and node names)."""
    node_dir_, name = os.path.split(path)
    session_dir_, node = os.path.split(node_dir_)
    session = os.path.basename(session_dir_).removeprefix("raylite_")
    return os.path.join(spill_root(session), node, name)


def make_room(directory: str, need: int, cap: int) -> None:
    """Spill the oldest objects of ``directory`` to disk until ``need`` more bytes fit in
    ``cap``; raise ObjectStoreFullError when even an empty store could not hold them.
    Readers find spilled objects on disk; a reader that has an object mapped keeps its
    view (the memory is released when it unmaps)."""
    entries = [e for e in os.scandir(directory) if not e.name.endswith(".tmp")]
    sizes = {e.path: e.stat().st_size for e in entries}
    used = sum(sizes.values())
    if used + need <= cap:
        return
    for e in sorted(entries, key=lambda e: e.stat().st_mtime_ns):
        if used + need <= cap:
            return
        target = spill_path(e.path)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        try:
            shutil.copyfile(e.path, target + ".tmp")
            os.rename(target + ".tmp", target)
            os.unlink(e.path)
        except FileNotFoundError:
            pass  # freed meanwhile
        used -= sizes[e.path]
    if used + need > cap:
        from raylite.exceptions import ObjectStoreFullError

        raise ObjectStoreFullError(
            f"The object store of this node cannot hold an object of {need:,} bytes: its "
            f"capacity (object_store_memory) is {cap:,} bytes, and {used:,} stay in use "
            "after spilling every other object to disk. Raise object_store_memory or store "
            "smaller objects.")


def remove_dir(directory: str) -> None:
    shutil.rmtree(directory, ignore_errors=True)
