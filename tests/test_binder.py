"""The Binder environment, built from binder/ the way repo2docker builds it, runs the quick
start notebook within Binder's limits.

In a fresh venv (the Python of binder/runtime.txt where this machine has it):

1. ``pip install -r binder/requirements.txt`` (torch==2.13.0 from PyTorch's CPU index),
2. ``binder/postBuild``, run from the repository root with the venv's bin first on PATH,
3. notebooks/00_quickstart.ipynb, executed headless by nbclient *inside the venv*, on a
   ``python3`` kernel installed into the venv, in a memory cgroup limited to 2 GiB (Binder's
   limit; no swap), with /dev/shm treated as too small (Binder gives 64 MiB), so that the
   object store takes its temporary-directory fallback as it does on Binder.

The cgroup's peak memory is reported and must stay below the limit without an OOM kill.
Without a memory cgroup to make (not root, cgroups read-only) the test is skipped, unless
``RAYLITE_REQUIRE_BINDER=1`` (as in CI): then it fails.

Where PyTorch's index cannot be reached (machines with access to PyPI only), pip warns and
takes torch==2.13.0 from the indexes it is configured with; the test then tells that pip not
to retry (``PIP_RETRIES=0``, a short ``PIP_TIMEOUT``), which changes nothing that gets
installed (repo2docker sets neither; pip would just take minutes longer). The venv is
removed at the end; the pip cache is reused where pip may use it (postBuild itself says
``--no-cache-dir``, as a Binder image should).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BINDER = ROOT / "binder"
NOTEBOOK = ROOT / "notebooks" / "00_quickstart.ipynb"
TORCH = "2.13.0"
TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
MEM_LIMIT = 2 << 30   # Binder's memory limit
BUDGET = 180          # seconds, the notebook (as in test_notebooks.py)
REQUIRED = os.environ.get("RAYLITE_REQUIRE_BINDER") == "1"  # CI: fail, never skip
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
FALLBACK_WARNING = "raylite's object store uses"  # store._choose_root's warning

# Executed by the venv's Python: nbclient from the Binder environment, on its kernel.
RUNNER = r"""
import json, os, sys, time
import nbclient, nbformat
from jupyter_client.kernelspec import KernelSpecManager

nb_path, out_path = sys.argv[1], sys.argv[2]
nb = nbformat.read(nb_path, as_version=4)
name = nb.metadata.kernelspec.name
result = {"kernel_argv": KernelSpecManager().get_kernel_spec(name).argv, "error": None}
client = nbclient.NotebookClient(nb, kernel_name=name, timeout=150, startup_timeout=60,
                                 resources={"metadata": {"path": os.path.dirname(nb_path)}})
start = time.monotonic()
try:
    client.execute()
except Exception as e:  # CellExecutionError names the cell and carries the traceback
    result["error"] = f"{type(e).__name__}: {e}"
result["took"] = time.monotonic() - start
nbformat.write(nb, out_path)
with open(out_path + ".json", "w") as f:
    json.dump(result, f)
"""


# ---------------------------------------------------------------- a 2 GiB memory cgroup
def _own_cgroup(controller: str | None) -> str:
    """This process's cgroup path in the v1 hierarchy of ``controller`` (None: v2)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if (controller is None and controllers == "") or \
                (controller is not None and controller in controllers.split(",")):
            return path.lstrip("/")
    return ""


class MemoryCgroup:
    """A child memory cgroup with a hard limit and no swap; v1 or v2, whichever the
    machine has. Made under this process's own cgroup where possible (so the limits above
    it still hold), else under the hierarchy's root."""

    def __init__(self, limit: int):
        self.limit = limit
        name = f"raylite-binder-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        problems = []
        if Path("/sys/fs/cgroup/cgroup.controllers").exists():
            self.version, mount = 2, Path("/sys/fs/cgroup")
            parents = [mount / _own_cgroup(None), mount]
        elif Path("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists():
            self.version, mount = 1, Path("/sys/fs/cgroup/memory")
            parents = [mount / _own_cgroup("memory"), mount]
        else:
            raise OSError("no memory cgroup controller is mounted (neither cgroup v2 at "
                          "/sys/fs/cgroup nor v1 at /sys/fs/cgroup/memory)")
        self.path = None
        for parent in dict.fromkeys(parents):  # own cgroup first, then the root
            try:
                self._make(parent / name)
                self.path = parent / name
                break
            except OSError as e:
                problems.append(f"{parent}: {e}")
                try:
                    (parent / name).rmdir()
                except OSError:
                    pass
        if self.path is None:
            raise OSError(f"cannot make a cgroup v{self.version} with a memory limit: "
                          + "; ".join(problems))
        self.procs = self.path / "cgroup.procs"
        self._sampled = 0
        self._stop = threading.Event()
        self._sampler = None

    def _make(self, path: Path) -> None:
        if self.version == 2:
            parent = path.parent
            if "memory" not in (parent / "cgroup.controllers").read_text().split():
                raise OSError("the memory controller is not available there")
            if "memory" not in (parent / "cgroup.subtree_control").read_text().split():
                (parent / "cgroup.subtree_control").write_text("+memory")
            path.mkdir()
            (path / "memory.max").write_text(str(self.limit))
            if (path / "memory.swap.max").exists():
                (path / "memory.swap.max").write_text("0")
        else:
            path.mkdir()
            (path / "memory.limit_in_bytes").write_text(str(self.limit))
            if (path / "memory.memsw.limit_in_bytes").exists():
                (path / "memory.memsw.limit_in_bytes").write_text(str(self.limit))
            if int((path / "memory.limit_in_bytes").read_text()) > self.limit:
                raise OSError("the limit did not take")

    def _read(self, name: str) -> str:
        return (self.path / name).read_text()

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` run by a shell that first moves itself into the cgroup, so the command
        and everything it starts (kernel, raylite's processes) is charged to it."""
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.procs), *argv]

    def start_sampling(self) -> None:
        """cgroup v2 without memory.peak (kernels before 5.19): sample memory.current."""
        if self.version == 2 and not (self.path / "memory.peak").exists():
            def sample():
                while not self._stop.wait(0.1):
                    try:
                        self._sampled = max(self._sampled, int(self._read("memory.current")))
                    except (OSError, ValueError):
                        pass
            self._sampler = threading.Thread(target=sample, daemon=True)
            self._sampler.start()

    def peak(self) -> int:
        if self.version == 1:
            return int(self._read("memory.max_usage_in_bytes"))
        if (self.path / "memory.peak").exists():
            return int(self._read("memory.peak"))
        return self._sampled

    def _counters(self, name: str) -> dict[str, int]:
        try:
            return {k: int(v) for k, v in
                    (ln.split() for ln in self._read(name).splitlines() if ln.strip())
                    if v.isdigit()}
        except OSError:
            return {}

    def oom_kills(self) -> int:
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        return self._counters(name).get("oom_kill", 0)

    def limit_hits(self) -> int:
        if self.version == 2:
            return self._counters("memory.events").get("max", 0)
        return int(self._read("memory.failcnt"))

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in self._read("cgroup.procs").split()]
        except OSError:
            return []

    def remove(self) -> list[int]:
        """Kill what is still in the cgroup (only processes this test started), then
        remove it. Returns the pids that had to be killed."""
        self._stop.set()
        if self._sampler is not None:
            self._sampler.join(1)
        stragglers = self.pids()
        deadline = time.monotonic() + 10
        while self.pids() and time.monotonic() < deadline:
            for pid in self.pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        for _ in range(50):
            try:
                self.path.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:  # EBUSY while the last processes are being reaped
                time.sleep(0.1)
        return stragglers


@pytest.fixture
def memory_cgroup():
    try:
        cg = MemoryCgroup(MEM_LIMIT)
    except OSError as e:
        message = f"no 2 GiB memory cgroup for the Binder test: {e}"
        if REQUIRED:
            pytest.fail(message + " (RAYLITE_REQUIRE_BINDER=1: run as root with a "
                                  "writable /sys/fs/cgroup)")
        pytest.skip(message)
    try:
        yield cg
    finally:
        cg.remove()
        assert not cg.path.exists(), f"cgroup {cg.path} could not be removed"


# ---------------------------------------------------------------- the environment
def _binder_python() -> str:
    """An interpreter of binder/runtime.txt's version where there is one, else this one's
    base interpreter (the one .venv was made from)."""
    runtime = (BINDER / "runtime.txt").read_text().strip()  # e.g. python-3.11
    want = runtime.removeprefix("python-")
    for exe in (shutil.which(f"python{want}"), getattr(sys, "_base_executable", None),
                sys.executable):
        if exe and subprocess.run([exe, "-c", "import venv, ensurepip"],
                                  capture_output=True).returncode == 0:
            return exe
    pytest.fail("no Python that can make a venv")


def _reachable(url: str, timeout: float = 5.0) -> bool:
    try:  # through the proxy that pip would use, if any
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout)
        return True
    except Exception:
        return False


def _run(argv, log: Path, timeout: float, **kw) -> None:
    """Run a build step, its output to ``log``; fail with the log's tail."""
    start = time.monotonic()
    with open(log, "w") as f:
        try:
            proc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, timeout=timeout, **kw)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        pytest.fail(f"{' '.join(map(str, argv))} failed ({rc}) after "
                    f"{time.monotonic() - start:.0f} s:\n{tail}")


def _clean_env(**extra) -> dict[str, str]:
    """This process's environment without anything pointing at .venv or at this test
    run's raylite state (RAYLITE_ROOT_PID stays: leak checks find the kernel's
    processes by it)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "JUPYTER_PATH",
                        "JUPYTER_DATA_DIR", "JUPYTER_CONFIG_DIR", "IPYTHONDIR",
                        "PYTEST_CURRENT_TEST", "PYTEST_ADDOPTS")
           and not (k.startswith("RAYLITE_") and k != "RAYLITE_ROOT_PID")}
    env.update(extra)
    return env


@pytest.mark.timeout(600)
def test_binder_builds_and_runs_quickstart(tmp_path, memory_cgroup, capsys):
    timings, report, begin = {}, [], time.monotonic()
    venv = tmp_path / "venv"
    tmp = tmp_path / "tmp"        # TMPDIR: where the object store falls back to
    home = tmp_path / "home"      # a fresh $HOME for the notebook, as on Binder
    tmp.mkdir()
    home.mkdir()
    try:
        # 1. a fresh venv, with its bin first on PATH (repo2docker's environment)
        start = time.monotonic()
        python = _binder_python()
        _run([python, "-m", "venv", str(venv)], tmp_path / "venv.log", 120)
        vpy = str(venv / "bin" / "python")
        env = _clean_env(PATH=f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
                         VIRTUAL_ENV=str(venv), PIP_DISABLE_PIP_VERSION_CHECK="1")
        torch_index = _reachable(f"{TORCH_INDEX}/torch/")
        # pip would retry an unreachable index for each package, for minutes
        req_env = env if torch_index else dict(env, PIP_RETRIES="0", PIP_TIMEOUT="5")

        # 2. binder/requirements.txt, then binder/postBuild from the repository root
        _run([vpy, "-m", "pip", "install", "-r", str(BINDER / "requirements.txt")],
             tmp_path / "requirements.log", 420, cwd=ROOT, env=req_env)
        timings["venv and requirements.txt"] = time.monotonic() - start
        start = time.monotonic()
        _run([str(BINDER / "postBuild")], tmp_path / "postBuild.log", 420, cwd=ROOT, env=env)
        timings["postBuild"] = time.monotonic() - start

        start = time.monotonic()
        probe = subprocess.run(
            [vpy, "-c", "import json, importlib.metadata as m, raylite; print(json.dumps("
                        "[m.version('torch'), raylite.__file__]))"],
            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
        assert probe.returncode == 0, probe.stderr
        torch_version, raylite_file = json.loads(probe.stdout)
        assert torch_version.split("+")[0] == TORCH, torch_version
        assert Path(raylite_file).resolve().is_relative_to(ROOT), \
            f"the venv imports raylite from {raylite_file}, not from this checkout"
        if torch_index:
            assert torch_version.endswith("+cpu"), \
                f"PyTorch's CPU index was reachable, but pip installed torch {torch_version}"
        elif not torch_version.endswith("+cpu"):
            warnings.warn(f"{TORCH_INDEX} unreachable: pip installed torch {torch_version} "
                          "from its other indexes, not the CPU build Binder gets", stacklevel=1)

        # 3. the notebook, in the venv, on a python3 kernel of the venv, under 2 GiB
        _run([vpy, "-m", "ipykernel", "install", "--prefix", str(venv), "--name", "python3"],
             tmp_path / "kernel.log", 60, env=env)
        timings["checks and kernelspec"] = time.monotonic() - start
        nb_env = dict(env, HOME=str(home), TMPDIR=str(tmp),
                      RAYLITE_MIN_SHM_FREE=str(1 << 62))  # /dev/shm counts as too small
        out = tmp_path / "executed.ipynb"
        memory_cgroup.start_sampling()
        start = time.monotonic()
        proc = subprocess.Popen(
            memory_cgroup.wrap([vpy, "-c", RUNNER, str(NOTEBOOK), str(out)]),
            cwd=NOTEBOOK.parent, env=nb_env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            output, _ = proc.communicate(timeout=BUDGET + 90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            pytest.fail(f"the notebook run did not end in {BUDGET + 90} s:\n"
                        f"{output.decode(errors='replace')[-3000:]}")
        timings["notebook"] = time.monotonic() - start
        peak, ooms, hits = (memory_cgroup.peak(), memory_cgroup.oom_kills(),
                            memory_cgroup.limit_hits())
        # everything the notebook started has ended with its kernel
        deadline = time.monotonic() + 10
        while memory_cgroup.pids() and time.monotonic() < deadline:
            time.sleep(0.1)
        left = memory_cgroup.pids()
        stragglers = memory_cgroup.remove()
        timings["notebook teardown"] = time.monotonic() - start - timings["notebook"]

        report.append(
            f"cgroup v{memory_cgroup.version}: peak {peak / 2**20:.0f} MiB of "
            f"{MEM_LIMIT >> 20} MiB (page cache included; limit reached {hits}x, "
            f"OOM kills {ooms}); torch {torch_version}"
            f"{'' if torch_index else f' ({TORCH_INDEX} unreachable)'}")

        text = output.decode(errors="replace")
        assert proc.returncode == 0 and out.with_suffix(".ipynb.json").exists(), \
            f"the notebook runner failed ({proc.returncode}; OOM kills {ooms}):\n{text[-3000:]}"
        result = json.loads(out.with_suffix(".ipynb.json").read_text())
        assert ooms == 0, f"the notebook was OOM-killed under {MEM_LIMIT >> 20} MiB"
        assert result["error"] is None, result["error"]
        assert peak < MEM_LIMIT, f"peak {peak} bytes is not below the {MEM_LIMIT} byte limit"
        kernel_python = Path(result["kernel_argv"][0])
        assert kernel_python.parent == venv / "bin", \
            f"the notebook ran on {kernel_python}, not on the venv's Python"
        assert not left and not stragglers, f"processes left in the cgroup: {stragglers}"

        import nbformat
        nb = nbformat.read(out, as_version=4)
        cells = [c for c in nb.cells if c.cell_type == "code"]
        outputs = [o for c in cells for o in c.outputs]
        errors = [o for o in outputs if o.output_type == "error"]
        assert not errors, errors
        assert result["took"] < BUDGET, f"the notebook took {result['took']:.0f} s"
        assert any(WIDGET_MIME in o.get("data", {}) for o in outputs), \
            "no live widget was displayed"
        # the store took its fallback (as with Binder's 64 MiB /dev/shm), and cleaned it
        assert any(FALLBACK_WARNING in o.get("text", "") for o in outputs), \
            "the object store did not fall back from /dev/shm"
        assert not [p.name for p in tmp.iterdir() if p.name.startswith("raylite_")]
    finally:
        start = time.monotonic()
        shutil.rmtree(venv, ignore_errors=True)  # ~1 GB or more; pytest keeps tmp_paths
        shutil.rmtree(home, ignore_errors=True)
        timings["removing the venv"] = time.monotonic() - start
        timings["total"] = time.monotonic() - begin
        with capsys.disabled():
            print("\n[binder] " + "; ".join(
                report + [", ".join(f"{k} {v:.0f} s" for k, v in timings.items())]))
