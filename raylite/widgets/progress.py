"""``progress(refs)``: wait for results with a progress bar."""

from __future__ import annotations


def progress(refs, *, timeout: float | None = None):
    """Wait for ``refs`` with a progress bar (tqdm.auto: a widget in a notebook, text in a
    terminal) and return their values; the same as ``raylite.get(refs, progress=True)``.
    Ray has no equivalent (its dashboard shows progress in a separate web page)."""
    from raylite import get

    return get(refs, timeout=timeout, progress=True)
