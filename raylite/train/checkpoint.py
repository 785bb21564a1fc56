"""``Checkpoint``: a directory of files, local or in an fsspec filesystem."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile

from raylite.train._internal.storage import filesystem_for

__all__ = ["Checkpoint"]

_METADATA = ".metadata.json"


class Checkpoint:
    """A directory (Ray: ``ray.train.Checkpoint``). ``path`` is local, an fsspec URI,
    or a path inside ``filesystem`` (an fsspec filesystem). Metadata is a small JSON
    dict kept in the directory (``.metadata.json``)."""

    def __init__(self, path: str | os.PathLike, filesystem=None):
        self.path = os.fspath(path)
        self.filesystem, self._fs_path = filesystem_for(self.path, filesystem)
        if self.filesystem is None:
            self.path = self._fs_path

    @classmethod
    def from_directory(cls, path: str | os.PathLike) -> Checkpoint:
        return cls(path)

    def _is_local(self) -> bool:
        return self.filesystem is None

    def to_directory(self, path: str | os.PathLike | None = None) -> str:
        """Copy the checkpoint's files into ``path`` (a new temporary directory when
        None) and return it."""
        dest = os.fspath(path) if path is not None else tempfile.mkdtemp(prefix="ckpt_")
        os.makedirs(dest, exist_ok=True)
        if self._is_local():
            shutil.copytree(self._fs_path, dest, dirs_exist_ok=True)
        else:
            fs = self.filesystem
            base = self._fs_path.rstrip("/")
            for f in fs.find(base):
                rel = f[len(base):].lstrip("/")
                target = os.path.join(dest, rel)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                fs.get_file(f, target)
        return dest

    @contextlib.contextmanager
    def as_directory(self):
        """A local directory with the checkpoint's files: the directory itself when it is
        local (do not modify it), else a temporary download deleted afterwards."""
        if self._is_local():
            yield self._fs_path
            return
        tmp = self.to_directory()
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def get_metadata(self) -> dict:
        meta = self._meta_path()
        try:
            if self._is_local():
                with open(meta) as f:
                    return json.load(f)
            with self.filesystem.open(meta, "r") as f:
                return json.load(f)
        except FileNotFoundError:
            return {}

    def set_metadata(self, metadata: dict) -> None:
        data = json.dumps(metadata)
        if self._is_local():
            os.makedirs(self._fs_path, exist_ok=True)
            with open(self._meta_path(), "w") as f:
                f.write(data)
        else:
            with self.filesystem.open(self._meta_path(), "w") as f:
                f.write(data)

    def update_metadata(self, metadata: dict) -> None:
        meta = self.get_metadata()
        meta.update(metadata)
        self.set_metadata(meta)

    def _meta_path(self) -> str:
        if self._is_local():
            return os.path.join(self._fs_path, _METADATA)
        return self._fs_path.rstrip("/") + "/" + _METADATA

    def __eq__(self, other) -> bool:
        return isinstance(other, Checkpoint) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    def __repr__(self) -> str:
        return f"Checkpoint(path={self.path!r})"
