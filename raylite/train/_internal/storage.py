"""Where a run's files go: a local directory or an fsspec URI.

``StorageContext`` names the run's directory (``storage_path/experiment_name``) and
copies checkpoint directories into it (``persist``), out of it (``download``) and deletes
them (``delete``). Local paths use the standard library; anything with a ``scheme://``
goes through fsspec, opened in whichever process does the work (the workers upload their
own checkpoints), so the storage must be reachable from every node.
"""

from __future__ import annotations

import json
import os
import shutil


def filesystem_for(path: str, filesystem=None):
    """(fsspec filesystem or None for local, path within it)."""
    if filesystem is not None:
        return filesystem, path
    if path.startswith("file://"):
        return None, path[len("file://"):]
    if "://" in path or "::" in path:
        try:
            import fsspec
        except ImportError:
            raise ImportError(f"storage_path {path!r} needs fsspec: pip install "
                              "'raylite[data]'") from None
        return fsspec.core.url_to_fs(path)
    return None, os.path.abspath(os.path.expanduser(path))


def join(fs, base: str, *parts: str) -> str:
    if fs is None:
        return os.path.join(base, *parts)
    return "/".join([base.rstrip("/"), *parts])


class StorageContext:
    """A run's storage: ``experiment_path`` under ``storage_path``."""

    def __init__(self, storage_path: str, experiment_name: str, filesystem=None):
        self.storage_path = storage_path
        self.experiment_name = experiment_name
        self.filesystem, root = filesystem_for(storage_path, filesystem)
        self.experiment_fs_path = join(self.filesystem, root, experiment_name)

    @property
    def experiment_path(self) -> str:
        """The run's directory as users name it (a local path, or the URI)."""
        if self.filesystem is None:
            return self.experiment_fs_path
        proto = self.filesystem.protocol
        proto = proto[0] if isinstance(proto, (tuple, list)) else proto
        return f"{proto}://{self.experiment_fs_path}" if proto not in ("file", "local") \
            else self.experiment_fs_path

    def path(self, *parts: str) -> str:
        return join(self.filesystem, self.experiment_fs_path, *parts)

    def makedirs(self) -> None:
        if self.filesystem is None:
            os.makedirs(self.experiment_fs_path, exist_ok=True)
        else:
            self.filesystem.makedirs(self.experiment_fs_path, exist_ok=True)

    def persist(self, local_dir: str, dir_name: str) -> str:
        """Copy ``local_dir``'s files into ``dir_name`` under the run (several ranks may
        write into one checkpoint directory); returns its path in the storage."""
        dest = self.path(dir_name)
        if self.filesystem is None:
            if os.path.abspath(local_dir) != os.path.abspath(dest):
                shutil.copytree(local_dir, dest, dirs_exist_ok=True)
        else:
            self.filesystem.makedirs(dest, exist_ok=True)
            for root, _, files in os.walk(local_dir):
                rel = os.path.relpath(root, local_dir)
                target = dest if rel == "." else join(self.filesystem, dest, rel)
                if files:
                    self.filesystem.makedirs(target, exist_ok=True)
                for f in files:
                    self.filesystem.put_file(os.path.join(root, f),
                                             join(self.filesystem, target, f))
        return dest

    def delete(self, fs_path: str) -> None:
        if self.filesystem is None:
            shutil.rmtree(fs_path, ignore_errors=True)
        elif self.filesystem.exists(fs_path):
            self.filesystem.rm(fs_path, recursive=True)

    def write_json(self, name: str, value) -> None:
        data = json.dumps(value, default=repr, indent=1)
        p = self.path(name)
        if self.filesystem is None:
            tmp = p + ".tmp"
            with open(tmp, "w") as f:
                f.write(data)
            os.replace(tmp, p)
        else:
            with self.filesystem.open(p, "w") as f:
                f.write(data)

    def read_json(self, name: str):
        p = self.path(name)
        if self.filesystem is None:
            with open(p) as f:
                return json.load(f)
        with self.filesystem.open(p, "r") as f:
            return json.load(f)

    def __repr__(self) -> str:
        return f"StorageContext({self.experiment_path!r})"
