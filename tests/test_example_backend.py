"""The example backend of docs/backends.md (examples/dirstore.py) passes the whole kit."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from statestore.storage import Storage
from statestore.testing import FullDiskTests, StorageConformance
from statestore.testing.hooks import MANIFEST, PACK_PREFIX

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))
# The kit's child processes import the opener by name: they need the directory too.
os.environ["PYTHONPATH"] = os.pathsep.join(
    filter(None, [str(EXAMPLES), os.environ.get("PYTHONPATH")])
)

from dirstore import DirStorage, _read_savepoint_file, _savepoint_path  # noqa: E402

#: The raw part of a savepoint that is its whole file: header line, manifest and refs.
SAVEPOINT_FILE = "savepoint-file"


class TestDirStore(FullDiskTests, StorageConformance):
    opener = "dirstore:open_dirstore"

    @pytest.fixture
    def url(self, tmp_path: Path) -> str:
        return f"dirstore://{tmp_path}/store"

    def url_in(self, directory: Path) -> str:
        return f"dirstore://{directory}/store"

    # The back doors: the savepoint file, the manifest inside it, and the blob files.

    def raw_parts(self, storage: Storage, run_id: str, timestamp: int) -> list[str]:
        _manifest, refs = _read_savepoint_file(self._file(storage, run_id, timestamp))
        return [MANIFEST, *(PACK_PREFIX + name for name in refs), SAVEPOINT_FILE]

    def raw_read(self, storage: Storage, run_id: str, timestamp: int, part: str) -> bytes:
        if part == MANIFEST:
            return _read_savepoint_file(self._file(storage, run_id, timestamp))[0]
        return Path(self._path(storage, run_id, timestamp, part)).read_bytes()

    def raw_write(
        self, storage: Storage, run_id: str, timestamp: int, part: str, data: bytes
    ) -> None:
        path = Path(self._path(storage, run_id, timestamp, part))
        if part == MANIFEST:
            # Re-framed, its header giving the new length: only the manifest's checks are left.
            line, _, rest = path.read_bytes().partition(b"\n")
            old = _read_savepoint_file(str(path))[0]
            header = json.loads(line)
            header["manifest_size"] = len(data)
            data = json.dumps(header).encode() + b"\n" + data + rest[len(old) :]
        path.write_bytes(data)

    @staticmethod
    def _file(storage: Storage, run_id: str, timestamp: int) -> str:
        assert isinstance(storage, DirStorage)
        return _savepoint_path(storage._run_dir(run_id), timestamp)

    def _path(self, storage: Storage, run_id: str, timestamp: int, part: str) -> str:
        if part in (MANIFEST, SAVEPOINT_FILE):
            return self._file(storage, run_id, timestamp)
        assert isinstance(storage, DirStorage)
        assert part.startswith(PACK_PREFIX), part
        return os.path.join(storage._run_dir(run_id), "blobs", part.removeprefix(PACK_PREFIX))
