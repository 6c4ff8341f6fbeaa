"""The filesystem Tune writes a sweep's state through: on a local (or NFS) results root every file
appears whole or not at all.

Tune stages its experiment state on the driver and copies it to the storage path with
`pyarrow.fs.copy_files`, which truncates the destination file and then writes it. A driver killed
during that copy leaves an empty or cut `experiment_state-*.json` (or searcher state) behind, and the
sweep can no longer be resumed. Here every file is written under a temporary name in the same directory
and renamed over the old one on close, so a kill leaves the previous, complete file in place. Object
stores (s3://, gs://) already publish an object only when its upload completes, so they are used as is.
"""

from __future__ import annotations

import io
import os
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

TEMP_MARK = ".partial-"  # temporary files: `.<name>.partial-<pid>-<random>`, never matched by Tune's globs


class _ReplaceOnClose(io.FileIO):
    """A file written under a temporary name and renamed over `path` when closed."""

    def __init__(self, path: str):
        head, tail = os.path.split(path)
        self.final_path = path
        super().__init__(os.path.join(head, f".{tail}{TEMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"), "wb")

    def close(self) -> None:
        if self.closed:
            return
        super().close()
        os.replace(self.name, self.final_path)

    def __del__(self) -> None:  # dropped without close (a writer that failed): discard, never publish
        if not self.closed:
            super().close()
            Path(self.name).unlink(missing_ok=True)


class AtomicLocalHandler(pafs.FileSystemHandler):
    """pyarrow's LocalFileSystem, except that output streams replace their file atomically on close."""

    def __init__(self) -> None:
        self.local = pafs.LocalFileSystem()

    def __reduce__(self):  # shipped to every trial worker inside Tune's storage context
        return (AtomicLocalHandler, ())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AtomicLocalHandler)

    def __hash__(self) -> int:
        return hash(AtomicLocalHandler)

    def get_type_name(self) -> str:
        return "groksweep-atomic-local"

    def equals(self, other: pafs.FileSystemHandler) -> bool:
        return self == other

    def normalize_path(self, path: str) -> str:
        return self.local.normalize_path(path)

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return self.local.get_file_info(paths)

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        return [info for info in self.local.get_file_info(selector) if TEMP_MARK not in info.base_name]

    def create_dir(self, path: str, recursive: bool) -> None:
        self.local.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self.local.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.local.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise OSError("refusing to delete the contents of the filesystem root")

    def delete_file(self, path: str) -> None:
        self.local.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self.local.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        with self.local.open_input_stream(src) as source, self.open_output_stream(dest, None) as out:
            while chunk := source.read(1 << 24):
                out.write(chunk)

    def open_input_stream(self, path: str) -> pa.NativeFile:
        return self.local.open_input_stream(path)

    def open_input_file(self, path: str) -> pa.NativeFile:
        return self.local.open_input_file(path)

    def open_output_stream(self, path: str, metadata: dict | None) -> pa.NativeFile:
        return pa.PythonFile(_ReplaceOnClose(path), mode="w")

    def open_append_stream(self, path: str, metadata: dict | None) -> pa.NativeFile:
        return self.local.open_append_stream(path, metadata)


def remove_leftovers(path: str) -> int:
    """Delete the temporary files that writers killed mid-file left under a local sweep folder; how many."""
    local, filesystem = location(path)
    if filesystem is None:  # an object store: nothing is ever left half-written
        return 0
    removed = 0
    for leftover in Path(local).rglob(f".*{TEMP_MARK}*"):
        leftover.unlink(missing_ok=True)
        removed += 1
    return removed


def location(path: str) -> tuple[str, pafs.FileSystem | None]:
    """(path, filesystem) to hand Tune for a sweep folder: a local path or file:// URI gets the atomic
    filesystem; an object-store URI keeps Tune's own filesystem (None), whose uploads are atomic already."""
    if "://" in path and not path.startswith("file://"):
        return path, None
    return path.removeprefix("file://"), pafs.PyFileSystem(AtomicLocalHandler())
