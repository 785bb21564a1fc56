"""Model files from cloud storage: one provider class per scheme, each over its fsspec
filesystem (s3fs, gcsfs, adlfs), with the same three operations, and a local cache the
engine loads from.

- ``s3://bucket/path`` (S3FileSystem; credentials and ``AWS_ENDPOINT_URL`` as boto reads
  them, or ``RAYLITE_S3_ENDPOINT_URL``)
- ``gs://bucket/path`` (GCSFileSystem; ``STORAGE_EMULATOR_HOST`` for an emulator, which
  also means anonymous access)
- ``abfss://container@account.dfs.core.windows.net/path`` and ``azure://container/path``
  (AzureFileSystem; ``AZURE_STORAGE_CONNECTION_STRING`` or the account name plus
  default credentials)

Any other scheme is a ValueError. Ray 2.53 has the same split (``CloudFileSystem`` with
provider-specific subclasses); raylite's download filters are glob patterns
(``include``/``exclude``) rather than Ray's substrings and suffixes.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import shutil
from urllib.parse import urlparse

CACHE_ENV = "RAYLITE_LLM_CACHE"
COMPLETE = ".raylite-complete"


class CloudFileSystem:
    """The operations every provider has; subclasses give the fsspec filesystem and how
    a URI becomes its path."""

    schemes: tuple[str, ...] = ()

    def __init__(self, storage_options: dict | None = None):
        self.storage_options = dict(storage_options or {})
        self._fs = None

    @property
    def fs(self):
        if self._fs is None:
            self._fs = self._make_fs()
        return self._fs

    def _make_fs(self):
        raise NotImplementedError

    def path(self, uri: str) -> str:
        """The filesystem's path for ``uri`` (bucket/key, without the scheme)."""
        p = urlparse(uri)
        return (p.netloc + p.path).rstrip("/")

    def get_file(self, uri: str, decode_as_utf_8: bool = True):
        """One object's contents (str or bytes), or None if it does not exist."""
        try:
            data = self.fs.cat_file(self.path(uri))
        except FileNotFoundError:
            return None
        return data.decode("utf-8") if decode_as_utf_8 else data

    def list_subfolders(self, uri: str) -> list[str]:
        """The names of the folders directly under ``uri``."""
        base = self.path(uri)
        try:
            entries = self.fs.ls(base, detail=True)
        except FileNotFoundError:
            return []
        return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries
                      if e.get("type") == "directory")

    def download_files(self, path: str, uri: str, include: list[str] | None = None,
                       exclude: list[str] | None = None) -> list[str]:
        """Copy the files under ``uri`` into the local directory ``path`` (keeping
        sub-folders), those whose relative name matches a glob of ``include`` (default:
        all) and none of ``exclude``; returns the relative names copied."""
        base = self.path(uri)
        copied = []
        for remote in sorted(self.fs.find(base)):
            rel = remote[len(base):].lstrip("/")
            if not rel:
                continue
            if include and not any(fnmatch.fnmatch(rel, g) for g in include):
                continue
            if exclude and any(fnmatch.fnmatch(rel, g) for g in exclude):
                continue
            local = os.path.join(path, rel)
            os.makedirs(os.path.dirname(local), exist_ok=True)
            self.fs.get_file(remote, local)
            copied.append(rel)
        return copied


class S3FileSystem(CloudFileSystem):
    schemes = ("s3",)

    def _make_fs(self):
        import s3fs

        opts = dict(self.storage_options)
        endpoint = os.environ.get("RAYLITE_S3_ENDPOINT_URL")
        if endpoint:
            opts.setdefault("client_kwargs", {}).setdefault("endpoint_url", endpoint)
        return s3fs.S3FileSystem(**opts)


class GCSFileSystem(CloudFileSystem):
    schemes = ("gs", "gcs")

    def _make_fs(self):
        # gcsfs's plain JSON-API filesystem: its newer default subclass probes buckets
        # over gRPC first, which an emulator does not speak
        from gcsfs.core import GCSFileSystem as Plain

        opts = dict(self.storage_options)
        if os.environ.get("STORAGE_EMULATOR_HOST"):
            opts.setdefault("token", "anon")
        return Plain(**opts)


class AzureFileSystem(CloudFileSystem):
    schemes = ("abfss", "abfs", "azure", "az")
    _ABFS = re.compile(r"^(?P<container>[^@]+)@(?P<account>[^.]+)\.")

    def __init__(self, storage_options: dict | None = None, account_name: str | None = None):
        super().__init__(storage_options)
        self.account_name = account_name

    def path(self, uri: str) -> str:
        p = urlparse(uri)
        m = self._ABFS.match(p.netloc)
        if p.scheme in ("abfss", "abfs"):
            if m is None:
                raise ValueError(f"{uri!r}: expected abfss://container@account."
                                 "dfs.core.windows.net/path")
            self.account_name = self.account_name or m["account"]
            return (m["container"] + p.path).rstrip("/")
        return (p.netloc + p.path).rstrip("/")

    def _make_fs(self):
        import adlfs

        opts = dict(self.storage_options)
        conn = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
        if conn and "account_name" not in opts:
            opts.setdefault("connection_string", conn)
        elif self.account_name:
            opts.setdefault("account_name", self.account_name)
            opts.setdefault("anon", False)
        return adlfs.AzureBlobFileSystem(**opts)


PROVIDERS = (S3FileSystem, GCSFileSystem, AzureFileSystem)


def get_filesystem(uri: str, storage_options: dict | None = None) -> CloudFileSystem:
    """The provider for ``uri``'s scheme; ValueError for any other scheme."""
    scheme = urlparse(uri).scheme.lower()
    for cls in PROVIDERS:
        if scheme in cls.schemes:
            fs = cls(storage_options)
            fs.path(uri)  # checks the URI's shape
            return fs
    known = sorted(s for c in PROVIDERS for s in c.schemes)
    raise ValueError(f"unsupported model source scheme {scheme + '://'!r} in {uri!r}; "
                     f"supported: {', '.join(s + '://' for s in known)}")


def cache_dir() -> str:
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache",
                                                     "raylite", "models")


MODEL_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]


def download_model(uri: str, *, dest: str | None = None, include: list[str] | None = None,
                   exclude: list[str] | None = None) -> str:
    """A local copy of the model directory at ``uri`` (config, safetensors weights,
    tokenizer files), downloaded once into the cache; returns its path. A download
    that did not finish is done again."""
    fs = get_filesystem(uri)
    key = hashlib.sha1(uri.rstrip("/").encode()).hexdigest()[:16]
    target = dest or os.path.join(cache_dir(), key)
    if os.path.exists(os.path.join(target, COMPLETE)):
        return target
    tmp = target + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    got = fs.download_files(tmp, uri, include=include or MODEL_FILES,
                            exclude=exclude or ["*.bin", "*.pt", "*.pth", "*.h5",
                                                "*.msgpack"])
    if "config.json" not in got:
        shutil.rmtree(tmp, ignore_errors=True)
        raise FileNotFoundError(f"no config.json under {uri!r}: not a model directory")
    open(os.path.join(tmp, COMPLETE), "w").close()
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target
