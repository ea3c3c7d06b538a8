"""How a savepoint becomes bytes: a manifest, its tables, and packs of entity states.

Public as the stored format's one definition: backends store what it builds without
reading it, and tools that read or craft stored bytes (the conformance kit's
forgeries, a forensic script) use it instead of a second parser.

A savepoint is stored as a manifest and blobs, written by every backend alike
(``_format.py`` has the constants, ``_write.py`` the writer, ``_read.py`` the reader,
``_tables.py`` the manifest's table chain, ``_v1.py`` the reader of format version 1):

* a **pack** is a 6-byte header (``SSPK``, the format version, flags) and a body: one
  MessagePack array whose elements are states, so a whole pack decodes in one call of
  the codec. With the safe codec an element is the state's encoding itself; with any
  other codec it is a MessagePack ``bin`` holding the codec's bytes
  (:data:`PACK_WRAPPED`). A pack whose states average over :data:`COMPRESS_THRESHOLD`
  bytes has its body zstd-compressed (:data:`PACK_ZSTD`). A pack holds at most
  :data:`MAX_PACK_STATES` states, so no single decode holds the GIL for long.
* a **manifest** (the savepoint's *head*) names the codec, the entity count and a chain
  of **table** blobs: a full table, then up to :data:`MAX_CHAIN` deltas, each on the one
  before (see ``_tables.py``). A full table lists every pack it points into (size,
  CRC-32, body length, state count, flags, state version) and for every entity, in save
  order, its id and four fixed-width columns: the pack, the state's position in the
  pack's array, and where the state's codec bytes lie in the pack's body (offset,
  length). A delta lists only what changed. The head is ``SSMF`` + version + CRC-32 of
  the body + the MessagePack body; tables and packs are checked by the sizes and CRC-32s
  their referrer records.

**Incremental savepoints.** Because states are addressed by (pack, position), a
savepoint points at the unchanged states an earlier savepoint wrote and packs only the
states that changed, and its table is a delta that names only those. "Unchanged" is
decided without keeping any state's bytes: the run's
:class:`ReuseBase` holds each state's length and a 64-bit keyed hash of its encoding
(Python's SipHash, keyed at random per process, never stored), and a state whose new
encoding has the same length and hash, written at the same state version, is reused.
:func:`build_changes` lays out a change set (states set, entities removed) in time that
grows with the change, not with the run. Backends know nothing of this: they
store named, immutable blobs and free the ones no remaining manifest refers to. To keep
loading one bounded read, the live states of the sparsest packs are copied forward into
the new pack whenever the packs a savepoint refers to would hold more than twice its
live bytes.

Reading checks every checksum before decoding, and checks every manifest field's type
and range too: CRC-32 is not a MAC, so anyone who can write the store can recompute it,
and a crafted manifest must still end in :class:`~statestore.errors.CorruptSavepointError`
naming the run and timestamp. Memory is bounded before anything is allocated: each pack
declares its body length, the declared lengths add up to at most the storage's
``max_savepoint_bytes``, a compressed body's zstd frame must declare that same length
before it is decompressed, each pack decodes once however many entities it serves, and
no two entities name the same stored state. Saving enforces the same limits, so nothing
is written that cannot be read back. Format version 1 stays readable
(``_v1.py``).
"""

from __future__ import annotations

from ._format import (
    COMPRESS_THRESHOLD,
    FORMAT_VERSION,
    LIMIT_OPTION,
    MANIFEST_HEADER_SIZE,
    MANIFEST_MAGIC,
    MAX_CHAIN,
    MAX_PACK_STATES,
    MAX_READ_AMPLIFICATION,
    MAX_SAVEPOINT_BYTES,
    MAX_STATE_BYTES,
    MAX_STATE_VERSION,
    PACK_HEADER_SIZE,
    PACK_MAGIC,
    PACK_WRAPPED,
    PACK_ZSTD,
    TABLE_MAGIC,
    Manifest,
    ReuseBase,
    SavepointRecord,
    fingerprint,
    from_column,
    new_blob_name,
    seal_manifest,
    to_column,
)
from ._read import (
    codec_for,
    decode_manifest,
    decode_state,
    decode_states,
    extract_states,
    reuse_base,
    stored_states,
    summarize,
)
from ._tables import seal_table
from ._v1 import ManifestV1
from ._write import (
    EncodedState,
    build_changes,
    build_record,
    check_encoded,
    check_savepoint_size,
    check_state_size,
    encode_state,
    encode_states,
)

__all__ = [
    "COMPRESS_THRESHOLD",
    "FORMAT_VERSION",
    "LIMIT_OPTION",
    "MANIFEST_HEADER_SIZE",
    "MANIFEST_MAGIC",
    "MAX_CHAIN",
    "MAX_PACK_STATES",
    "MAX_READ_AMPLIFICATION",
    "MAX_SAVEPOINT_BYTES",
    "MAX_STATE_BYTES",
    "MAX_STATE_VERSION",
    "PACK_HEADER_SIZE",
    "PACK_MAGIC",
    "PACK_WRAPPED",
    "PACK_ZSTD",
    "TABLE_MAGIC",
    "EncodedState",
    "Manifest",
    "ManifestV1",
    "ReuseBase",
    "SavepointRecord",
    "build_changes",
    "build_record",
    "check_encoded",
    "check_savepoint_size",
    "check_state_size",
    "codec_for",
    "decode_manifest",
    "decode_state",
    "decode_states",
    "encode_state",
    "encode_states",
    "extract_states",
    "fingerprint",
    "from_column",
    "new_blob_name",
    "reuse_base",
    "seal_manifest",
    "seal_table",
    "stored_states",
    "summarize",
    "to_column",
]
