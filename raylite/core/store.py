"""A node's shared-memory object store: one file per large object under /dev/shm.

The process that creates a large value writes it once, straight from the pickle's
out-of-band buffers into a shared-memory file; readers on the node map the file and get
NumPy arrays that are read-only views of it (no copy). The node agent owns the node's
store directory and removes it when it exits; the driver that started a local cluster
removes the whole session directory at shutdown, so nothing stays in /dev/shm.

File layout: ``MAGIC | n_buffers:u32 | meta_len:u64 | (offset:u64, len:u64) * n | meta |
buffers`` with every buffer aligned to 64 bytes.

Recycling: touching fresh shared memory costs more than copying into it (the kernel
allocates and zeroes every page on first touch), so a freed object's file is not
unlinked but kept in the node's ``.free`` pool, pages and all, and the next put of a
similar size writes into it at memcpy speed. A file is recycled only when no process
maps it: every reader holds a shared ``flock`` on it for as long as its mapping lives
(released by a finalizer when the last view goes), and the freer recycles only if it can
take the lock exclusively; otherwise it unlinks the file as before and the readers keep
their pages.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import re
import resource
import shutil
import struct
import tempfile
import uuid
import warnings
import weakref

from raylite.core.serialization import Serialized

MAGIC = b"RLOBJ001"
_ALIGN = 64
SHM_ROOT = "/dev/shm"
ROOT_ENV = "RAYLITE_STORE_ROOT"
MIN_SHM_FREE = int(os.environ.get("RAYLITE_MIN_SHM_FREE", str(256 << 20)))
FREE_DIR = ".free"
RECYCLE_MIN = 1 << 20   # smaller files are cheap to make afresh
POOL_MAX = int(os.environ.get("RAYLITE_STORE_POOL_BYTES", str(3 << 29)))  # 1.5 GiB a node
POOL_IDLE_S = 30.0  # the agent unlinks pooled files nobody reused for this long


def _raise_fd_limit() -> None:
    """Readers keep one descriptor per mapped object (its lock): allow many."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = hard if hard != resource.RLIM_INFINITY else 1 << 16
        if soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, 1 << 20), hard))
    except (ValueError, OSError):
        pass


_raise_fd_limit()


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


_OBJECT_NAME = re.compile(r"[0-9a-f]{8,64}")


def confined(directory: str, path: str) -> bool:
    """True when ``path`` names an object file directly in ``directory`` (a store). Paths
    that peers send are checked with this before anything opens them: no other file of
    the machine can be read through the store."""
    if not isinstance(path, str) or "\0" in path:
        return False
    head, name = os.path.split(path)
    return bool(_OBJECT_NAME.fullmatch(name)) and \
        os.path.realpath(head) == os.path.realpath(directory)


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
    reused = size >= RECYCLE_MIN and take_free(directory, size, tmp)
    fd = os.open(tmp, os.O_CREAT | os.O_RDWR | (0 if reused else os.O_TRUNC), 0o600)
    try:
        if reused:
            # its pages exist, and this process may still have them mapped from an earlier
            # use: then the copy runs at memcpy speed. The file keeps its size (a larger
            # one's tail is unused), so a cached mapping always stays valid.
            m = _writable_map(fd)
            m[:header] = head
            m[header: header + len(s.meta)] = s.meta
            for (o, _), b in zip(table, s.buffers, strict=True):
                _copy_into(m, o, memoryview(b).cast("B"))
        else:
            os.ftruncate(fd, size)
            # write(2), not a mapping: on tmpfs it runs at memcpy-into-fresh-memory speed,
            # more than twice as fast as page-faulting a new mapping
            pwrite_all(fd, head, 0)
            pwrite_all(fd, s.meta, header)
            for (o, _), b in zip(table, s.buffers, strict=True):
                _parallel(lambda a, z, o=o, b=memoryview(b).cast("B"): pwrite_all(
                    fd, b[a:z], o + a), memoryview(b).nbytes)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    return path, size


_wmaps: dict = {}  # (dev, inode) -> (fd, mmap): writable mappings of pooled files
WMAP_MAX = 32
WMAP_BYTES = POOL_MAX


def _writable_map(fd: int) -> mmap.mmap:
    """A shared writable mapping of a pooled file, kept for its next reuse by this
    process (its page tables stay filled: no faults on the next write). Mappings of
    files that were unlinked meanwhile are dropped, so no pages are held for nothing."""
    st = os.fstat(fd)
    key = (st.st_dev, st.st_ino)
    hit = _wmaps.get(key)
    if hit is not None and len(hit[1]) == st.st_size:
        return hit[1]
    for k, (kfd, km) in list(_wmaps.items()):
        try:
            gone = os.fstat(kfd).st_nlink == 0
        except OSError:
            gone = True
        if gone or k == key or len(_wmaps) >= WMAP_MAX or \
                sum(len(v[1]) for v in _wmaps.values()) + st.st_size > WMAP_BYTES:
            del _wmaps[k]
            km.close()
            os.close(kfd)
    m = mmap.mmap(fd, st.st_size, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE)
    if st.st_size <= WMAP_BYTES:
        _wmaps[key] = (os.dup(fd), m)
    return m


def _mapped_here(path: str) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    return (st.st_dev, st.st_ino) in _wmaps


def release_maps() -> None:
    """Drop this process's cached writable mappings (at shutdown)."""
    while _wmaps:
        _, (fd, m) = _wmaps.popitem()
        m.close()
        os.close(fd)


PARALLEL_MIN = 16 << 20  # copies this big are split over threads (as Ray's plasma does)
_copiers = None


def _parallel(copy, n: int) -> None:
    """Run ``copy(start, end)`` over [0, n) in a few threads when n is large: one core
    copies at ~7 GB/s here, two at ~12 (the copies release the GIL)."""
    global _copiers
    ways = min(4, os.cpu_count() or 1)
    if n < PARALLEL_MIN or ways < 2:
        copy(0, n)
        return
    if _copiers is None:
        from concurrent.futures import ThreadPoolExecutor

        _copiers = ThreadPoolExecutor(ways, thread_name_prefix="raylite-copy")
    step = -(-n // ways) + 63 & ~63
    done = [_copiers.submit(copy, a, min(n, a + step)) for a in range(step, n, step)]
    copy(0, min(n, step))
    for f in done:
        f.result()


def _copy_into(m: mmap.mmap, offset: int, src: memoryview) -> None:
    import numpy as np

    n = src.nbytes
    if n < PARALLEL_MIN:
        m[offset: offset + n] = src
        return
    dst = np.frombuffer(m, dtype=np.uint8, count=n, offset=offset)
    s = np.frombuffer(src, dtype=np.uint8)
    _parallel(lambda a, z: np.copyto(dst[a:z], s[a:z]), n)


def pwrite_all(fd: int, data, offset: int) -> None:
    """Write all of ``data`` at ``offset`` (pwrite may write less than asked)."""
    view = memoryview(data)
    while view.nbytes:
        n = os.pwrite(fd, view[: 1 << 30], offset)
        view = view[n:]
        offset += n


def read(path: str) -> tuple[bytes, list[memoryview]]:
    """Map an object file (from the store, or from disk if it was spilled); returns its
    meta and read-only views of its buffers. The file stays locked (shared) while any
    view of the mapping lives, so it is never recycled under a reader."""
    return parse_bytes(map_object(path))


def map_object(path: str) -> memoryview:
    """A read-only view of an object file (or its spilled copy), locked against recycling
    for as long as any view of the mapping lives."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        fd = os.open(spill_path(path), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        size = os.fstat(fd).st_size
        # copy-on-write: a reader that writes into a zero-copy tensor gets private pages
        # instead of a crash, and the stored object never changes; NumPy views are
        # read-only anyway (the memoryview is)
        m = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    except BaseException:
        os.close(fd)
        raise
    weakref.finalize(m, os.close, fd)  # the lock goes with the last view of the mapping
    return memoryview(m).toreadonly()


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
    """Free an object: recycle its file into the node's pool when nobody maps it and it
    is worth keeping, else unlink it (a reader's mapping keeps its pages alive)."""
    if not _recycle(path):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    try:
        os.unlink(spill_path(path))
    except FileNotFoundError:
        pass


def _recycle(path: str) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        size = os.fstat(fd).st_size
        if size < RECYCLE_MIN:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # mapped by a reader: its pages must stay as they are
        free = os.path.join(os.path.dirname(path), FREE_DIR)
        try:
            os.mkdir(free)  # not makedirs: a store removed meanwhile must stay removed
        except FileExistsError:
            pass
        pooled = _pool(free)
        if sum(sz for sz, _ in pooled) + size > POOL_MAX:
            return False
        os.rename(path, os.path.join(free, f"{size}-{uuid.uuid4().hex[:12]}"))
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _pool(free: str) -> list[tuple[int, str]]:
    out = []
    try:
        for e in os.scandir(free):
            size, _, _ = e.name.partition("-")
            if size.isdigit():
                out.append((int(size), e.path))
    except FileNotFoundError:
        pass
    return out


def take_free(directory: str, size: int, dest: str) -> bool:
    """Move a pooled file of about ``size`` bytes (size to 1.5x) to ``dest``."""
    fits = [c for c in _pool(os.path.join(directory, FREE_DIR))
            if size <= c[0] <= size + size // 2]
    if len(fits) > 1:  # smallest first; among equals, one this process has mapped
        fits.sort(key=lambda c: (c[0], not _mapped_here(c[1])))
    for _, path in fits:
        try:
            os.rename(path, dest)  # atomic: two writers never get the same file
            return True
        except FileNotFoundError:
            continue
    return False


def trim_pool(directory: str, idle_s: float = POOL_IDLE_S) -> None:
    """Unlink pooled files not reused for ``idle_s`` (their pages go back to the OS)."""
    import time

    now = time.time()
    for _, path in _pool(os.path.join(directory, FREE_DIR)):
        try:
            if now - os.stat(path).st_mtime > idle_s:
                os.unlink(path)
        except FileNotFoundError:
            pass


def drop_pool(directory: str) -> int:
    """Unlink a node's pooled files (to make room); returns the bytes released."""
    released = 0
    for size, path in _pool(os.path.join(directory, FREE_DIR)):
        try:
            os.unlink(path)
            released += size
        except FileNotFoundError:
            pass
    return released


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
            if e.name == FREE_DIR:
                continue
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


def stored_objects(session: str) -> list[dict]:
    """Every object file in the stores (and spill directories) of this host's nodes of
    ``session``: ``object_id``, ``size``, ``node_id``, ``location`` (SHARED_MEMORY or
    SPILLED)."""
    out = []
    for root, where in ((session_dir(session), "SHARED_MEMORY"), (spill_root(session), "SPILLED")):
        try:
            node_dirs = list(os.scandir(root))
        except FileNotFoundError:
            continue
        for nd in node_dirs:
            if not nd.is_dir():
                continue
            for f in os.scandir(nd.path):
                if f.name.endswith(".tmp") or f.name.startswith("."):
                    continue
                try:
                    size = f.stat().st_size
                except FileNotFoundError:
                    continue
                out.append({"object_id": f.name, "size": size, "node_id": nd.name,
                            "location": where})
    return out


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
    # finished object files only: never a file being written (.tmp) or pulled (.pull);
    # a file freed while we look is skipped (its stat fails), never an error of the put
    sizes, mtimes = {}, {}
    for e in os.scandir(directory):
        if not _OBJECT_NAME.fullmatch(e.name):
            continue
        try:
            st = e.stat()
        except FileNotFoundError:
            continue
        sizes[e.path], mtimes[e.path] = st.st_size, st.st_mtime_ns
    used = sum(sizes.values())
    pooled = sum(size for size, _ in _pool(os.path.join(directory, FREE_DIR)))
    if used + pooled + need <= cap:
        return
    if pooled:  # pooled pages count against the capacity: give them back first
        drop_pool(directory)
    if used + need <= cap:
        return
    for path in sorted(sizes, key=mtimes.__getitem__):
        if used + need <= cap:
            return
        target = spill_path(path)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        try:
            shutil.copyfile(path, target + ".tmp")
            os.rename(target + ".tmp", target)
            os.unlink(path)
        except FileNotFoundError:  # freed meanwhile: its room is free anyway
            with contextlib.suppress(FileNotFoundError):
                os.unlink(target + ".tmp")
        used -= sizes[path]
    if used + need > cap:
        from raylite.exceptions import ObjectStoreFullError

        raise ObjectStoreFullError(
            f"The object store of this node cannot hold an object of {need:,} bytes: its "
            f"capacity (object_store_memory) is {cap:,} bytes, and {used:,} stay in use "
            "after spilling every other object to disk. Raise object_store_memory or store "
            "smaller objects.")


def remove_dir(directory: str) -> None:
    """Remove a store (or session) directory, again if a late writer put a file in it
    while it was being removed."""
    for _ in range(5):
        shutil.rmtree(directory, ignore_errors=True)
        if not os.path.exists(directory):
            return
