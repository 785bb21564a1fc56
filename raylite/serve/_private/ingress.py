"""``@serve.ingress(app)``: serve an ASGI app (FastAPI, Starlette) from a deployment
class. FastAPI routes whose endpoints are methods of the class are re-bound to the
replica's instance, so ``self`` works in them (Ray's class-based views)."""

from __future__ import annotations

import copyreg


def ingress(app):
    """Class decorator: the deployment answers HTTP with ``app`` (an ASGI app)."""
    if not callable(app):
        raise TypeError(f"@serve.ingress expects an ASGI app (e.g. FastAPI()), got {app!r}")

    def decorate(cls):
        if not isinstance(cls, type):
            raise TypeError("@serve.ingress decorates a class")
        cls.__serve_asgi_app__ = app
        return cls
    _picklable_starlette_state()
    return decorate


def _picklable_starlette_state() -> None:
    """starlette's ``State`` (``app.state``) cannot be unpickled as it is (its
    ``__getattr__`` recurses before ``_state`` exists); pickle it by its dict."""
    try:
        from starlette.datastructures import State
    except ImportError:
        return
    copyreg.pickle(State, _reduce_state)


def _reduce_state(state):
    from starlette.datastructures import State

    return (State, (dict(state._state),))


def bind_app(app, instance):
    """Point the app's routes that call methods of ``instance``'s class at the instance."""
    try:
        from fastapi.routing import APIRoute
    except ImportError:
        return app
    cls = type(instance)
    routes = getattr(getattr(app, "router", None), "routes", None)
    if routes is None:
        return app
    for i, route in enumerate(routes):
        if not isinstance(route, APIRoute):
            continue
        fn = route.endpoint
        name = getattr(fn, "__name__", None)
        if name is None or getattr(cls, name, None) is not fn:
            continue
        routes[i] = APIRoute(
            route.path, getattr(instance, name), methods=route.methods, name=route.name,
            response_model=route.response_model, status_code=route.status_code,
            tags=route.tags, dependencies=route.dependencies, summary=route.summary,
            description=route.description, response_class=route.response_class,
            include_in_schema=route.include_in_schema)
    return app
