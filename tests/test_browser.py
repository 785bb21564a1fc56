"""The notebooks in a real browser: JupyterLab on 127.0.0.1, driven through Chromium.

A JupyterLab server is started on a free port with a token, in a temporary home (runtime,
config, data, settings and workspace directories of its own) and on a temporary copy of
``notebooks/`` (autosave never touches the repository). Playwright drives Debian's
Chromium (``/usr/bin/chromium``; Playwright's own browser download is not used) to open a
notebook and run its cells through JupyterLab's own commands, then checks the page: no
cell failed, and the live views drew what the cluster did *after* they were displayed
(so the widget comm works, not only the first rendering). Each view is photographed
(``tests/_output/``; also copied to ``$RAYLITE_SCREENSHOTS_DIR`` when set, e.g.
``docs/screenshots``) before the notebook's last cell shuts the cluster down.

Without Chromium the tests are skipped, unless ``RAYLITE_REQUIRE_BROWSER=1`` (as in CI),
where they fail. The server and its kernels are stopped at the end, and every raylite
process the kernels started must be gone.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from raylite.testing import assert_no_leaks

REQUIRED = bool(os.environ.get("RAYLITE_REQUIRE_BROWSER"))  # CI: fail, never skip
if REQUIRED:
    import jupyterlab  # noqa: F401
    from playwright import sync_api
else:
    pytest.importorskip("jupyterlab")
    sync_api = pytest.importorskip("playwright.sync_api")

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "tests" / "_output"
CHROMIUM = os.environ.get("RAYLITE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-dev-shm-usage"]
SETTINGS = {  # user settings of the temporary JupyterLab
    # every cell stays in the DOM (no virtual scrolling), so it can be checked and shot
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    # no news or update checks (the machine may be offline)
    "@jupyterlab/apputils-extension/notification": {"checkForUpdates": False,
                                                   "fetchNews": "false"},
}

pytestmark = pytest.mark.timeout(300)


# ----------------------------------------------------------------------- JupyterLab
@dataclass
class Lab:
    url: str
    token: str
    proc: subprocess.Popen
    log: Path

    def api(self, method: str, path: str):
        req = urllib.request.Request(f"{self.url}{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def stop_kernels(self) -> None:
        """Shut every session's kernel down (as closing the notebook does) and wait for
        the kernels, and what they started, to exit."""
        procs = self.children()
        for s in self.api("GET", "/api/sessions"):
            self.api("DELETE", f"/api/sessions/{s['id']}")
        _, alive = psutil.wait_procs(procs, timeout=20)
        for p in alive:
            p.kill()
        assert not alive, f"kernel processes outlived their sessions: {alive}"

    def children(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_home(home: Path) -> dict:
    """Directories and environment of a JupyterLab that shares nothing with the user's."""
    shutil.copytree(ROOT / "notebooks", home / "notebooks",
                    ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    spec = home / "path" / "kernels" / "python3"  # "python3" is this interpreter
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (ipykernel)", "language": "python"}))
    for plugin, values in SETTINGS.items():
        path = home / "settings" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    env = dict(os.environ)
    for var, sub in (("JUPYTER_RUNTIME_DIR", "runtime"), ("JUPYTER_CONFIG_DIR", "config"),
                     ("JUPYTER_DATA_DIR", "data"), ("JUPYTER_PATH", "path"),
                     ("JUPYTERLAB_SETTINGS_DIR", "settings"),
                     ("JUPYTERLAB_WORKSPACES_DIR", "workspaces")):
        (home / sub).mkdir(exist_ok=True)
        env[var] = str(home / sub)
    env.pop("JUPYTER_TOKEN", None)
    return env


def start_lab(home: Path, env: dict) -> Lab:
    token = secrets.token_hex(16)
    for _ in range(3):  # a free port can be taken before the server binds it
        port = free_port()
        log = home / f"lab-{port}.log"
        cmd = [sys.executable, "-m", "jupyterlab", "--no-browser",
               "--ServerApp.open_browser=False", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={home / 'notebooks'}",
               "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None"]
        if os.geteuid() == 0:  # CI machines and containers run as root
            cmd.append("--allow-root")
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, cwd=home, env=env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        lab = Lab(f"http://127.0.0.1:{port}", token, proc, log)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                lab.api("GET", "/api/status")
                return lab
            except OSError:
                time.sleep(0.2)  # the server is still starting: nothing to wait on
        stop_lab(lab)
    raise RuntimeError(f"JupyterLab did not start:\n{log.read_text()[-3000:]}")


def stop_lab(lab: Lab) -> None:
    """Stop the kernels, then the server (SIGTERM, then SIGKILL), and check they are gone."""
    procs = lab.children()
    try:
        if lab.proc.poll() is None:
            lab.stop_kernels()
    except OSError:
        pass
    if lab.proc.poll() is None:
        lab.proc.send_signal(signal.SIGTERM)
        try:
            lab.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(lab.proc.pid, signal.SIGKILL)  # what is left of its process group
    except ProcessLookupError:
        pass
    lab.proc.wait(timeout=10)
    _, alive = psutil.wait_procs(procs, timeout=10)
    for p in alive:
        p.kill()
    assert not alive, f"kernels outlived JupyterLab: {[p.pid for p in alive]}"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    if not os.path.exists(CHROMIUM):
        msg = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
        if REQUIRED:
            pytest.fail(msg)
        pytest.skip(msg)
    home = tmp_path_factory.mktemp("jupyterlab")
    lab = start_lab(home, write_home(home))
    try:
        yield lab
    finally:
        stop_lab(lab)


@pytest.fixture(scope="module")
def browser(lab):
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


# ----------------------------------------------------------------------- the notebook
OPENED = """name => {
  const app = window.jupyterapp;
  const panel = app && app.shell.currentWidget;
  if (!panel || !panel.context || !panel.context.path.endsWith(name)) return false;
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  return !!kernel && kernel.status === 'idle' && panel.content.widgets.length > 0;
}"""

SOURCES = """() => window.jupyterapp.shell.currentWidget.content.widgets.map(
  c => c.model.sharedModel.getSource())"""

RUN_CELLS = """async ([start, stop]) => {
  const app = window.jupyterapp;
  const nb = app.shell.currentWidget.content;
  for (let i = start; i < stop; i++) {
    nb.deselectAll();
    nb.activeCellIndex = i;
    const ok = await app.commands.execute('notebook:run-cell');
    if (ok === false) return i;   // the cell failed
  }
  return -1;
}"""

ERRORS = """() => {
  const cells = window.jupyterapp.shell.currentWidget.content.widgets;
  const errors = [];
  cells.forEach((cell, i) => {
    if (cell.model.type !== 'code') return;
    const outs = cell.model.outputs;
    for (let j = 0; j < outs.length; j++) {
      const o = outs.get(j).toJSON();
      if (o.output_type === 'error') errors.push(`cell ${i}: ${o.ename}: ${o.evalue}`);
    }
  });
  return errors;
}"""


class Notebook:
    """A notebook open in the page, run in steps."""

    def __init__(self, page, lab: Lab, name: str, shots: Path):
        self.page, self.name, self.shots = page, name, shots
        self.ran = 0
        page.goto(f"{lab.url}/lab/tree/{name}?reset&token={lab.token}")
        page.wait_for_function(OPENED, arg=name, timeout=90_000)
        self.sources = page.evaluate(SOURCES)

    def index(self, needle: str) -> int:
        """The first cell whose source contains ``needle``."""
        return next(i for i, s in enumerate(self.sources) if needle in s)

    def run_until(self, stop: int) -> None:
        """Run the cells not run yet, up to (not including) cell ``stop``."""
        failed = self.page.evaluate(RUN_CELLS, [self.ran, stop])
        errors = self.page.evaluate(ERRORS)
        assert failed == -1 and not errors, \
            f"{self.name}: cell {failed} failed: {errors} \n{self.sources[failed]}"
        self.ran = stop

    def output(self, cell: int):
        return self.page.locator(".jp-Notebook .jp-Cell").nth(cell).locator(".jp-OutputArea")

    def shoot(self, cell: int, view: str) -> Path:
        """Screenshot cell ``cell``'s output as ``<view>.png``."""
        path = self.shots / f"{view}.png"
        self.output(cell).screenshot(path=str(path))
        extra = os.environ.get("RAYLITE_SCREENSHOTS_DIR")
        if extra:
            Path(extra).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(extra) / path.name)
        return path


@pytest.fixture
def page(browser, lab, request):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    try:
        yield pg
    finally:
        OUTPUT.mkdir(parents=True, exist_ok=True)  # the whole page, to see what went wrong
        pg.screenshot(path=str(OUTPUT / f"{request.node.name}-page.png"), full_page=True)
        context.close()
        lab.stop_kernels()
        assert_no_leaks(timeout=15)  # the kernels' clusters went with them


@pytest.fixture
def shots():
    OUTPUT.mkdir(parents=True, exist_ok=True)
    return OUTPUT


def test_quickstart_cluster_view_is_live(page, lab, shots):
    nb = Notebook(page, lab, "00_quickstart.ipynb", shots)
    view_cell = nb.index("view = ClusterView()")
    last = len(nb.sources) - 1
    nb.run_until(view_cell + 1)
    cards = nb.output(view_cell).locator(".raylite-node")
    cards.first.wait_for(timeout=30_000)
    assert cards.count() == 1  # one node: init(num_cpus=2)
    nb.run_until(last)  # everything but the shutdown
    # the named actor was created after the view was drawn: only a live view shows it
    sync_api.expect(cards.first).to_contain_text("actors: 1 (counter)", timeout=20_000)
    sync_api.expect(nb.output(view_cell)).to_contain_text("live")
    # the background tasks of the cell before the last: both CPUs busy
    sync_api.expect(cards.first).to_contain_text("running tasks: 2", timeout=10_000)
    nb.shoot(view_cell, "cluster_view")
    timeline = nb.output(nb.index("Timeline()"))
    sync_api.expect(timeline.locator("svg.raylite-gantt")).to_be_visible()
    assert timeline.locator(".raylite-task").count() >= 30  # the tasks run so far
    nb.shoot(nb.index("Timeline()"), "timeline")
    nb.run_until(last + 1)


def test_placement_and_autoscaler_views_are_live(page, lab, shots):
    nb = Notebook(page, lab, "02_placement_and_autoscaling.ipynb", shots)
    view_cell = nb.index("placement_view = PlacementView()")
    nb.run_until(nb.index("remove_placement_group(pg)"))
    # groups made after the view was drawn: 12 bundles placed on nodes, 4 pending
    out = nb.output(view_cell)
    sync_api.expect(out.locator(".raylite-node .raylite-bundle")).to_have_count(
        12, timeout=20_000)
    sync_api.expect(out.locator(".raylite-pending .raylite-bundle")).to_have_count(4)
    sync_api.expect(out).to_contain_text("too-wide")
    nb.shoot(view_cell, "placement_view")

    scaler_cell = nb.index("autoscaler_view = AutoscalerView()")
    last = len(nb.sources) - 1
    nb.run_until(last)
    out = nb.output(scaler_cell)
    for action in ("launch", "launch_failed", "node_running", "terminate"):
        sync_api.expect(out.locator(f'.raylite-decision[data-action="{action}"]').first
                        ).to_be_attached(timeout=20_000)
    nb.shoot(scaler_cell, "autoscaler_view")
    nb.run_until(last + 1)


def test_serve_view_is_live(page, lab, shots):
    nb = Notebook(page, lab, "03_serve.ipynb", shots)
    view_cell = nb.index("view = ServeView()")
    nb.run_until(view_cell + 1)
    out = nb.output(view_cell)
    sync_api.expect(out.locator('.raylite-serve-node[data-ingress="true"]')).to_have_attribute(
        "data-deployment", "Api", timeout=30_000)
    sync_api.expect(out.locator(
        '.raylite-serve-edge[data-from="Api"][data-to="Sentiment"]')).to_have_count(1)
    # the autoscaled app comes after the view was drawn: only a live view shows it scale
    nb.run_until(nb.index("auto_load = pd.concat(") + 1)
    chart = out.locator('.raylite-serve-deployment[data-deployment="Slow"]').locator(
        "svg.raylite-serve-chart")
    # 12 callers at 3 ongoing requests per replica: the target goes to 4, and replicas
    # start while the view is on the page (how many run before the load ends depends on
    # how fast this machine starts them: 4 on an idle one, fewer when it is loaded)
    sync_api.expect(chart).to_have_attribute("data-peak-target", "4", timeout=20_000)
    sync_api.expect(chart).to_have_attribute("data-peak-running", re.compile("^[234]$"))
    sync_api.expect(out).to_contain_text("live")
    nb.shoot(view_cell, "serve_view")
    nb.ran = len(nb.sources) - 1  # skip to the last cell: Serve and raylite shut down
    nb.run_until(len(nb.sources))
