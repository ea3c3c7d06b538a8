"""The example backend of docs/backends.md (examples/dirstore.py) passes the whole kit."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from statestore.codecs import Codec
from statestore.storage import Storage
from statestore.testing.conformance import InProcessConformance, Part

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

from dirstore import DirStorage, _read_savepoint_file, _savepoint_path  # noqa: E402


class TestDirStore(InProcessConformance):
    @pytest.fixture
    def url(self, tmp_path: Path) -> str:
        return f"dirstore://{tmp_path}/store"

    def open(self, url: str, codec: Codec | None = None) -> Storage:
        return DirStorage.from_url(url, codec)

    def tamper(
        self,
        storage: Storage,
        run_id: str,
        timestamp: int,
        part: Part,
        mutate: Callable[[bytes], bytes],
    ) -> None:
        assert isinstance(storage, DirStorage)
        run_dir = storage._run_dir(run_id)
        path = Path(_savepoint_path(run_dir, timestamp))
        manifest, refs = _read_savepoint_file(str(path))
        if part == "manifest":
            # Re-framed, its header giving the new length: only the manifest's checks are left.
            line, _, rest = path.read_bytes().partition(b"\n")
            header = json.loads(line)
            changed = mutate(manifest)
            header["manifest_size"] = len(changed)
            path.write_bytes(json.dumps(header).encode() + b"\n" + changed + rest[len(manifest) :])
        else:
            for name in refs:
                pack = Path(run_dir, "blobs", name)
                pack.write_bytes(mutate(pack.read_bytes()))
