"""Model sources in cloud storage, against real local servers the tests start and stop:
moto's S3 server, gcp-storage-emulator, and Azurite (npm; installed under
``.tools/azurite`` by ``.ci/run``). Nothing here reaches the internet."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

import pytest

pytest.importorskip("fsspec")

from llm_models import make_gpt  # noqa: E402

from raylite.llm import LLMEngine, SamplingParams  # noqa: E402
from raylite.llm._private.cloud import download_model, get_filesystem  # noqa: E402

pytestmark = pytest.mark.timeout(120)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AZURITE = os.path.join(ROOT, ".tools", "azurite", "node_modules", ".bin", "azurite-blob")
AZURITE_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/"
               "KBHBeksoGMGw==")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)  # polling a port that is not listening yet
    raise TimeoutError(f"nothing listens on port {port}")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("gpt"))
    make_gpt(path)
    with open(os.path.join(path, "extra.bin"), "wb") as f:  # never downloaded
        f.write(b"\0" * 10)
    return path


@pytest.fixture(scope="module")
def s3_server():
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1",
           "RAYLITE_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        try:
            yield "s3://models"
        finally:
            server.stop()


@pytest.fixture(scope="module")
def gcs_server():
    from gcp_storage_emulator.server import create_server

    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True)
    server.start()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
        try:
            yield "gs://models"
        finally:
            server.stop()


@pytest.fixture(scope="module")
def azure_server(tmp_path_factory):
    if not os.path.exists(AZURITE):
        if os.environ.get("RAYLITE_REQUIRE_AZURITE"):
            pytest.fail(f"Azurite is not installed at {AZURITE}")
        pytest.skip("Azurite not installed (npm install --prefix .tools/azurite azurite@3)")
    port = free_port()
    work = str(tmp_path_factory.mktemp("azurite"))
    proc = subprocess.Popen([AZURITE, "--blobHost", "127.0.0.1", "--blobPort", str(port),
                             "--silent", "--skipApiVersionCheck", "--location", work],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        conn = (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
                f"AccountKey={AZURITE_KEY};"
                f"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;")
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("AZURE_STORAGE_CONNECTION_STRING", conn)
            yield "azure://models"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(params=["s3", "gs", "azure"])
def bucket(request, model_dir, tmp_path, monkeypatch):
    """A bucket holding two model folders, on one of the three servers."""
    uri = request.getfixturevalue({"s3": "s3_server", "gs": "gcs_server",
                                   "azure": "azure_server"}[request.param])
    fs = get_filesystem(uri)
    root = fs.path(uri)
    if not fs.fs.exists(root):
        fs.fs.mkdir(root)
    for name in ("model-a", "model-b"):
        for f in os.listdir(model_dir):
            fs.fs.put_file(os.path.join(model_dir, f), f"{root}/llm/{name}/{f}")
    fs.fs.invalidate_cache()
    monkeypatch.setenv("RAYLITE_LLM_CACHE", str(tmp_path / "cache"))
    return f"{uri}/llm"


def test_get_file_list_subfolders_download_files(bucket, model_dir, tmp_path):
    fs = get_filesystem(bucket)
    with open(os.path.join(model_dir, "config.json")) as f:
        assert fs.get_file(f"{bucket}/model-a/config.json") == f.read()
    assert fs.get_file(f"{bucket}/model-a/missing.json") is None
    assert isinstance(fs.get_file(f"{bucket}/model-a/extra.bin", decode_as_utf_8=False),
                      bytes)
    assert fs.list_subfolders(bucket) == ["model-a", "model-b"]
    got = fs.download_files(str(tmp_path / "d"), f"{bucket}/model-b",
                            include=["*.json", "*.safetensors"], exclude=["model.*"])
    assert got == ["config.json"] and os.listdir(tmp_path / "d") == ["config.json"]


def test_engine_loads_a_model_from_the_bucket(bucket, model_dir):
    sp = SamplingParams(max_tokens=6, temperature=0)
    out = LLMEngine(f"{bucket}/model-a").generate(["hi"], sp)[0]
    assert out.text == LLMEngine(model_dir).generate(["hi"], sp)[0].text
    local = download_model(f"{bucket}/model-a")  # cached: no second download
    assert sorted(os.listdir(local)) == [".raylite-complete", "config.json",
                                         "model.safetensors"]
    shutil.rmtree(local)


def test_abfss_uri_names_container_and_account(azure_server, model_dir):
    fs = get_filesystem("abfss://models@devstoreaccount1.dfs.core.windows.net/llm")
    assert fs.path("abfss://models@devstoreaccount1.dfs.core.windows.net/llm/x") == \
        "models/llm/x"
    if not fs.fs.exists("models"):
        fs.fs.mkdir("models")
    fs.fs.put_file(os.path.join(model_dir, "config.json"), "models/abfss/config.json")
    assert fs.get_file("abfss://models@devstoreaccount1.dfs.core.windows.net/abfss/"
                       "config.json").startswith("{")
    with pytest.raises(ValueError, match="abfss://container@account"):
        get_filesystem("abfss://no-account/path")


def test_unsupported_scheme_is_a_value_error():
    with pytest.raises(ValueError, match="unsupported model source scheme 'ftp://'"):
        get_filesystem("ftp://host/model")
    with pytest.raises(ValueError, match="hdfs"):
        LLMEngine("hdfs://cluster/model")
