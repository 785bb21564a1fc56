"""The backend seam, read from the source and tried without Ray: only the Ray backend
imports Ray; both backends have the same names; the public entry points go to the
backend in one call, with no test of which backend runs; a missing Ray says which extra
to install. (The Ray backend itself runs in ``tests/ray_backend/``.)"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from raylite.core import own_backend, runtime, seam

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parent.parent
RAY_BACKEND = ROOT / "raylite" / "backends" / "ray_backend"


def _imports_ray(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
        if any(n == "ray" or n.startswith("ray.") for n in names):
            return True
    return False


def test_only_the_ray_backend_imports_ray():
    users = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "raylite").rglob("*.py")
                   if _imports_ray(p))
    assert users and all(u.startswith("raylite/backends/ray_backend/") for u in users), users


def _exported(path: Path) -> set[str]:
    """The names a backend module binds at top level (imports and definitions)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update(a.asname or a.name for a in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def test_both_backends_have_the_names_the_entry_points_call():
    called = set()
    for path in (ROOT / "raylite").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) \
                    and node.value.attr == "backend" and isinstance(node.value.value, ast.Name) \
                    and node.value.value.id == "runtime":
                called.add(node.attr)
    assert {"get", "submit_task", "create_actor", "cluster_state"} <= called
    assert called <= set(dir(own_backend)), called - set(dir(own_backend))
    missing = called - _exported(RAY_BACKEND / "__init__.py")
    assert not missing, f"the Ray backend lacks {missing}"


def test_each_entry_point_is_one_call_into_the_backend():
    """No ``if backend`` on the hot path: the seam's functions (but init and shutdown,
    which choose) are a docstring and one ``return runtime.backend.<name>(...)``."""
    tree = ast.parse(Path(seam.__file__).read_text())
    for fn in tree.body:
        if not isinstance(fn, ast.FunctionDef) or fn.name in ("init", "shutdown"):
            continue
        body = [s for s in fn.body if not (isinstance(s, ast.Expr) and
                                             isinstance(s.value, ast.Constant))]
        assert len(body) == 1 and isinstance(body[0], ast.Return), fn.name
        call = body[0].value
        assert isinstance(call, ast.Call) and ast.unparse(call.func) == \
            f"runtime.backend.{fn.name}", fn.name


def test_the_default_backend_is_raylites_own(monkeypatch):
    monkeypatch.delenv(runtime.BACKEND_ENV, raising=False)
    assert runtime.default_backend() == "raylite"
    assert runtime.select_backend("raylite") is own_backend
    runtime.reset_backend()
    monkeypatch.setenv(runtime.BACKEND_ENV, "ray")
    assert runtime.default_backend() == "ray"


def test_an_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="Unknown backend 'dask'"):
        seam.init(backend="dask")


def test_init_while_connected_keeps_the_backend_that_runs():
    import raylite

    raylite.init(num_cpus=1)
    try:
        with pytest.raises(RuntimeError, match="already called"):
            raylite.init(backend="ray")
        assert runtime.backend is own_backend and raylite.get(raylite.put(7)) == 7
        assert raylite.init(backend="ray", ignore_reinit_error=True) is not None
        assert runtime.backend is own_backend
    finally:
        raylite.shutdown()


def test_a_missing_ray_says_which_extra_to_install():
    code = ("import sys; sys.modules['ray'] = None\n"  # what an environment without Ray sees
            "import raylite\n"
            "try:\n    raylite.init(backend='ray')\n"
            "except ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=50, cwd=ROOT)
    assert "pip install 'raylite[ray]'" in out.stdout, out.stderr


def test_own_runtime_only_says_why_a_cell_is_skipped(monkeypatch, capsys):
    pytest.importorskip("ray")
    from raylite.util import backend_name, own_runtime_only

    monkeypatch.delenv(runtime.BACKEND_ENV, raising=False)
    runtime.reset_backend()
    try:
        assert backend_name() == "raylite" and own_runtime_only("virtual nodes")
        assert capsys.readouterr().out == ""
        monkeypatch.setenv(runtime.BACKEND_ENV, "ray")
        runtime.reset_backend()
        assert backend_name() == "ray" and not own_runtime_only("virtual nodes")
        assert "Skipped on the ray backend: this needs raylite's own runtime " \
               "(virtual nodes)." in capsys.readouterr().out
    finally:
        runtime.reset_backend()
