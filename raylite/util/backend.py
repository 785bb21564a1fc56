"""Which backend runs this process, for the rare code that must know: a notebook cell
that needs raylite's own runtime (virtual nodes, the local autoscaler provider) says so
and is skipped on Ray. Everything else runs unchanged on either backend (a raylite
extension: Ray has one backend)."""

from __future__ import annotations

from raylite.core import runtime

__all__ = ["backend_name", "own_runtime_only"]


def backend_name() -> str:
    """``"raylite"`` (raylite's own runtime) or ``"ray"`` (the Ray backend): the one
    ``init`` chose, or that the first call will use (``RAYLITE_BACKEND``)."""
    return runtime.backend.NAME


def own_runtime_only(needs: str) -> bool:
    """True on raylite's own runtime. On another backend, print that the caller (a
    notebook cell) is skipped because it needs ``needs`` of raylite's own runtime, and
    return False: ``if own_runtime_only("virtual nodes"): ...``."""
    name = backend_name()
    if name == "raylite":
        return True
    print(f"Skipped on the {name} backend: this needs raylite's own runtime ({needs}).")
    return False
