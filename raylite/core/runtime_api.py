"""Small helpers shared by the public API modules."""

from __future__ import annotations

from raylite.core import runtime


def require_core():
    core = runtime.core
    if core is None:
        from raylite.core.driver import auto_init

        core = auto_init()
    return core
