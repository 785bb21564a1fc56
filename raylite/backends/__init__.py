"""Backends other than raylite's own runtime, behind the seam of
:mod:`raylite.core.seam`: ``ray_backend`` sends the public core API to a Ray cluster.

A backend is a module with the names of :mod:`raylite.core.own_backend`; it is chosen by
``raylite.init(backend=...)`` or ``RAYLITE_BACKEND`` and registered by name in
``raylite.core.runtime.BACKENDS``.
"""
