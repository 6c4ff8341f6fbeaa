"""The results root: one type that decides local vs remote, so every module agrees.

A root is a local path, a `file://` URI (also local), or a pyarrow filesystem URI (`s3://`, `gs://`,
`hdfs://`). Local roots get atomic renames, logs written as they grow and exclusive lease files;
remote roots go through pyarrow's filesystem for every read and write. Ray-free, torch-free.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs


def default_root() -> str:
    """`GROKSWEEP_RESULTS`, else ./results."""
    return os.environ.get("GROKSWEEP_RESULTS", "results")


@dataclass(frozen=True)
class ResultsRoot:
    uri: str  # an absolute local path, or the remote URI as given (no trailing slash)
    base: str  # the root's path inside `fs`
    remote: bool

    @classmethod
    def of(cls, root: str | Path | ResultsRoot | None) -> ResultsRoot:
        if isinstance(root, ResultsRoot):
            return root
        text = str(default_root() if root is None else root)
        if "://" in text and not text.startswith("file://"):
            _, path = pafs.FileSystem.from_uri(text)
            return cls(uri=text.rstrip("/"), base=path.rstrip("/"), remote=True)
        local = os.path.abspath(text.removeprefix("file://"))
        return cls(uri=local, base=local, remote=False)

    @property
    def fs(self) -> pafs.FileSystem:
        return pafs.FileSystem.from_uri(self.uri)[0] if self.remote else pafs.LocalFileSystem()

    @property
    def prefix(self) -> str | None:
        """The URI scheme polars needs in front of `fs` paths, None for a local root."""
        return self.uri.split("://", 1)[0] + "://" if self.remote else None

    def path(self, *parts: str) -> str:
        """A path inside `fs` (for a local root: a plain absolute path)."""
        return "/".join([self.base, *parts])

    def uri_of(self, *parts: str) -> str:
        """A path or URI that polars, pyarrow and Tune accept as is."""
        path = self.path(*parts)
        return path if not self.remote else self.prefix + path

    def local(self, *parts: str) -> Path | None:
        """The local path, or None for a remote root."""
        return None if self.remote else Path(self.path(*parts))

    def __str__(self) -> str:
        return self.uri
