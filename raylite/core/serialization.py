"""Serialisation of values: cloudpickle with pickle protocol 5 out-of-band buffers.

A value becomes a :class:`Serialized`: a small pickled ``meta`` plus the raw ``buffers``
of large binary members (NumPy arrays, bytes-likes) that never get copied into the pickle.
Values defined in a notebook (``__main__``) pickle by value, so they work on workers.

A *descriptor* is how a value travels in messages and lives in an owner's table:

- ``("i", meta, [bytes, ...])`` inline (small values);
- ``("s", node_id, path, size)`` in a node's shared-memory store;
- ``("e", meta)`` a pickled error, raised when read.
"""

from __future__ import annotations

import io
import os
import pickle
import sys
import threading
import traceback
import warnings

import cloudpickle

from raylite.exceptions import RayTaskError, ZeroCopyTensorsWarning

_CORE_DIR = os.path.dirname(os.path.abspath(__file__))
INLINE_LIMIT = 100 * 1024  # values bigger than this go to the shared-memory store (as Ray)

_SIMPLE = {type(None), bool, int, float, str, bytes, complex}

_ctx = threading.local()


class Serialized:
    __slots__ = ("meta", "buffers", "refs", "size")

    def __init__(self, meta: bytes, buffers: list, refs: list):
        self.meta = meta
        self.buffers = buffers
        self.refs = refs
        self.size = len(meta) + sum(memoryview(b).nbytes for b in buffers)


def is_plain(value) -> bool:
    """Builtin scalars, or a flat tuple/list/dict of them: plain pickle is enough (and
    several times faster than cloudpickle)."""
    t = type(value)
    if t in _SIMPLE:
        return True
    if t is tuple or t is list:
        return all(type(v) in _SIMPLE for v in value)
    if t is dict:
        return all(type(v) in _SIMPLE for v in value.values()) and \
            all(type(k) in _SIMPLE for k in value)
    return False


def serialize(value) -> Serialized:
    """Pickle ``value``; ObjectRefs found inside are collected into ``.refs``."""
    if is_plain(value):
        return Serialized(pickle.dumps(value, 5), [], [])
    buffers: list = []
    refs: list = []
    outer = getattr(_ctx, "refs", None)
    _ctx.refs = refs
    try:
        if "torch" in sys.modules:  # tensors out of band (zero-copy, or one copy on read)
            f = io.BytesIO()
            p = _TensorPickler(f, protocol=5, buffer_callback=buffers.append)
            p.zero_copy = zero_copy_torch_enabled()
            p.dump(value)
            meta = f.getvalue()
        else:
            meta = cloudpickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    except Exception as e:
        raise _unpicklable_error(value, e) from e
    finally:
        _ctx.refs = outer
    return Serialized(meta, [b.raw() for b in buffers], refs)


# ---------------------------------------------------------------- zero-copy torch tensors
ZERO_COPY_ENV = "RAYLITE_ENABLE_ZERO_COPY_TORCH_TENSORS"
_zero_copy = os.environ.get(ZERO_COPY_ENV, "") in ("1", "true", "True")
_alias_warned = False


def zero_copy_torch_enabled() -> bool:
    return _zero_copy


def set_zero_copy_torch(enabled: bool) -> None:
    """Turn zero-copy tensor serialisation on or off in this process (and, through the
    environment, in the processes it starts)."""
    global _zero_copy
    if enabled:
        try:
            import torch  # noqa: F401
        except ImportError:
            warnings.warn("zero-copy torch tensors need torch; the option is ignored",
                          ZeroCopyTensorsWarning, stacklevel=3)
            enabled = False
    _zero_copy = enabled
    os.environ[ZERO_COPY_ENV] = "1" if enabled else "0"


class _TensorPickler(cloudpickle.Pickler):
    """cloudpickle, plus: a CPU torch tensor goes out of band as a uint8 NumPy view of its
    bytes, with dtype, shape and device beside it (as Ray 2.53 does), so writing it to
    the store is its only copy and reading it back on the node makes none.

    Without the zero-copy flag tensors take the same path but the reader copies them
    once into memory of its own (Ray pickles them in band, which costs several copies);
    ``requires_grad`` is kept then, as torch's pickling keeps it."""

    zero_copy = True

    def reducer_override(self, obj):
        if type(obj).__name__ == "Tensor" and type(obj).__module__ == "torch":
            reduced = _reduce_tensor(obj, self.zero_copy)
            if reduced is not None:
                return reduced
        return super().reducer_override(obj)


def _reduce_tensor(t, zero_copy: bool = True):
    import torch

    if t.layout != torch.strided or t.is_quantized or t.is_nested or \
            type(t) is not torch.Tensor:
        return None  # leave exotic tensors (and Parameters) to torch's own pickling
    device = str(t.device)
    grad = t.requires_grad and not zero_copy
    t = t.detach()  # requires_grad is not kept by zero-copy (as Ray)
    if t.device.type != "cpu":
        t = t.to("cpu")  # GPU tensors are copied to the CPU and restored on read
    if not zero_copy:
        raw = t.contiguous().reshape(-1).view(torch.uint8).numpy()
        dtype = str(t.dtype).removeprefix("torch.")
        return (_rebuild_tensor_copy, (pickle.PickleBuffer(raw), dtype, tuple(t.shape),
                                       device, grad))
    if not t.is_contiguous():
        warnings.warn(f"a non-contiguous tensor of shape {tuple(t.shape)} was copied to be "
                      "stored zero-copy; call .contiguous() first to avoid the copy",
                      ZeroCopyTensorsWarning, stacklevel=2)
        t = t.contiguous()
    raw = t.reshape(-1).view(torch.uint8).numpy()
    dtype = str(t.dtype).removeprefix("torch.")
    return (_rebuild_tensor, (pickle.PickleBuffer(raw), dtype, tuple(t.shape), device))


def _rebuild_tensor(buf, dtype: str, shape: tuple, device: str):
    import numpy as np
    import torch

    global _alias_warned
    raw = np.frombuffer(buf, dtype=np.uint8)
    if not raw.flags.writeable and not _alias_warned:
        _alias_warned = True
        warnings.warn("zero-copy tensors read from the object store alias its memory: treat "
                      "them as read-only (writes go to private copy-on-write pages)",
                      ZeroCopyTensorsWarning, stacklevel=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch: "array is not writable"
        t = torch.from_numpy(raw)
    t = t.view(getattr(torch, dtype)).reshape(shape)
    return t if device == "cpu" else t.to(device)


def _rebuild_tensor_copy(buf, dtype: str, shape: tuple, device: str, grad: bool):
    """A tensor of its own (one copy out of the store), as torch's unpickling gives."""
    import torch

    src = _rebuild_view(buf, dtype, shape)
    if device != "cpu":
        t = src.to(device)
    else:
        t = torch.empty_like(src)
        t.copy_(src)
    return t.requires_grad_() if grad else t


def _rebuild_view(buf, dtype: str, shape: tuple):
    import numpy as np
    import torch

    raw = np.frombuffer(buf, dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch: "array is not writable"
        t = torch.from_numpy(raw)
    return t.view(getattr(torch, dtype)).reshape(shape)


def note_ref_serialized(ref) -> None:
    """Called by ``ObjectRef.__reduce__``: record a ref nested inside a value."""
    refs = getattr(_ctx, "refs", None)
    if refs is not None:
        refs.append(ref)


def deserialize(meta, buffers=()):
    return pickle.loads(meta, buffers=buffers)


def inline_descriptor(s: Serialized) -> tuple:
    return ("i", s.meta, [bytes(b) for b in s.buffers])


def error_descriptor(err: BaseException) -> tuple:
    try:
        return ("e", cloudpickle.dumps(err, protocol=5))
    except Exception:
        fallback = RayTaskError(getattr(err, "function_name", "task"),
                                getattr(err, "traceback_str", repr(err)), None)
        return ("e", cloudpickle.dumps(fallback, protocol=5))


def task_error(function_name: str, exc: BaseException, pid=None, node_id=None) -> RayTaskError:
    """Wrap an exception raised by user code, keeping the remote traceback (without
    raylite's own frames at its top, as Ray shows it)."""
    frames = exc.__traceback__
    while frames is not None and frames.tb_next is not None and \
            frames.tb_frame.f_code.co_filename.startswith(_CORE_DIR):
        frames = frames.tb_next
    tb = "".join(traceback.format_exception(type(exc), exc, frames))
    cause = exc
    try:
        pickle.loads(cloudpickle.dumps(exc))
    except Exception:
        cause = None  # the cause cannot travel; its text is in the traceback
    if isinstance(exc, RayTaskError):
        return exc
    return RayTaskError(function_name, tb, cause, pid, node_id)


def dumps_code(obj) -> bytes:
    """Pickle a function or class for workers, remembering its source file: cloudpickle
    replaces ``co_filename`` with "<dynamic-code>", which would leave remote tracebacks
    without file names and source lines."""
    code = getattr(obj, "__code__", None)
    if code is None:
        code = next((f.__code__ for f in vars(obj).values() if hasattr(f, "__code__")), None) \
            if isinstance(obj, type) else None
    try:
        return cloudpickle.dumps((obj, code.co_filename if code else None), protocol=5)
    except Exception as e:
        raise _unpicklable_error(obj, e) from e


def loads_code(data: bytes):
    obj, filename = pickle.loads(data)
    if filename:
        members = vars(obj).values() if isinstance(obj, type) else [obj]
        for f in members:
            f = getattr(f, "__func__", f)
            code = getattr(f, "__code__", None)
            if code is not None:
                try:
                    f.__code__ = _with_filename(code, filename)
                except (AttributeError, TypeError):
                    pass
    return obj


def _with_filename(code, filename: str):
    if code.co_filename != "<dynamic-code>":
        return code
    consts = tuple(_with_filename(c, filename) if hasattr(c, "co_filename") else c
                   for c in code.co_consts)
    return code.replace(co_filename=filename, co_consts=consts)


def _unpicklable_error(value, exc: Exception) -> TypeError:
    culprit = _find_unpicklable(value)
    name = culprit if culprit is not None else repr(value)[:200]
    return TypeError(
        f"Could not serialize {name}: {exc}. raylite pickles functions, arguments and "
        "results with cloudpickle; pass picklable values (or create the unpicklable object, "
        "e.g. a lock, socket or open file, inside the task or actor instead).")


def _find_unpicklable(value, depth: int = 0, path: str = "value"):
    """Walk a value and name the innermost member that cannot be pickled."""
    if depth > 4:
        return None
    children = []
    if isinstance(value, dict):
        children = [(f"{path}[{k!r}]", v) for k, v in value.items()]
    elif isinstance(value, (list, tuple, set)):
        children = [(f"{path}[{i}]", v) for i, v in enumerate(value)]
    elif callable(value) and getattr(value, "__code__", None) is not None:
        closure = value.__closure__ or ()
        names = value.__code__.co_freevars
        children = [(f"{value.__qualname__} captures {n!r}", c.cell_contents)
                    for n, c in zip(names, closure, strict=False)]
        glb = value.__globals__
        children += [(f"{value.__qualname__} uses global {n!r}", glb[n])
                     for n in value.__code__.co_names if n in glb]
    elif hasattr(value, "__dict__") and not isinstance(value, type):
        children = [(f"{path}.{k}", v) for k, v in vars(value).items()]
    for child_path, child in children:
        try:
            cloudpickle.dumps(child)
        except Exception:
            inner = _find_unpicklable(child, depth + 1, child_path)
            return inner or f"{child_path} ({type(child).__name__} object)"
    return None
