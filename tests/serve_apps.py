"""Applications for the declarative-config tests (``import_path`` needs a module)."""

from __future__ import annotations

from raylite import serve


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Greeter:
    def __init__(self, greeting: str = "hello"):
        self.greeting = greeting

    def __call__(self, request):
        return f"{self.greeting} {request.query_params.get('name', 'world')}"


app = Greeter.bind()


def build(args: dict):
    return Greeter.bind(args.get("greeting", "hi"))
