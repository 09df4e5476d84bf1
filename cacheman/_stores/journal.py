"""The journal: an append-only log of changes kept beside each snapshot (Redis AOF + RDB style).

A cache's saved state is its snapshot (``<name>.pkl``, see :mod:`cacheman._stores.pickle`)
with the records of its journal (``<name>.journal``) replayed on top.  Appending
one record costs a write and an ``fdatasync`` of a few bytes, whatever the size
of the cache; a snapshot save (the compaction) folds the journal into a new
snapshot and starts an empty journal.

This module holds the journal's file format: its header, its records, the scan
that checks them, and the replay of their changes.  The policy (locks, what to
do with damage, pairing with the snapshot) lives in the store.

File format (version 1), all integers little-endian::

    header, 40 bytes
    0      8     magic b"CMJOURNL"
    8      2     format version (1)
    10     2     flags: 1 = signed (every record carries an HMAC-SHA256)
    12     16    journal id: the snapshot this journal continues names it
    28     8     file id: random, new for every file written (a position names it)
    36     4     CRC-32 of bytes 0-35

    then records, each:
    0      4     payload length n
    4      4     n XOR 0xFFFFFFFF (so a damaged length is never trusted)
    8      4     CRC-32 of the payload
    12     32    signed journals only: HMAC-SHA256 of the journal id, the record's
                 offset in the file (8 bytes), bytes 0-11 and the payload
    ...    n     payload: a pickle (protocol 5) of a list of changes (cloudpickle's
                 when pickle refuses a value; either loads with pickle)

A change is ``(SET, key, value)``, ``(DEL, key, None)`` or ``(CLEAR, None, None)``;
replaying is last-writer-wins per key, and CLEAR wipes everything before it.
The HMAC binds each record to its journal and its place in it, so a signed
record cannot be moved into another journal, or replayed twice in one; and the
store signs with a key bound to the manager's and the cache's names
(:func:`cacheman._stores.pickle.cache_signing_key`), so a signed journal copied into
another cache's place fails too.
"""

from __future__ import annotations

import hmac
import os
import pickle
import struct
import zlib
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from hashlib import sha256
from typing import Any, NamedTuple

from ..errors import SignatureMismatchError

__all__ = [
    "CLEAR",
    "DEL",
    "HEADER_SIZE",
    "MAGIC",
    "NO_POSITION",
    "REBASE",
    "SET",
    "AppendResult",
    "Change",
    "Damage",
    "Header",
    "Position",
    "SaveResult",
    "Scan",
    "VerifyReport",
    "applier",
    "apply_changes",
    "collector",
    "decode_header",
    "encode_header",
    "encode_record",
    "scan",
]

SET = "set"
DEL = "del"
CLEAR = "clear"
OPS = frozenset((SET, DEL, CLEAR))

#: ``(op, key, value)``: one change to a cache.
Change = tuple[str, Any, Any]

MAGIC = b"CMJOURNL"
FORMAT_VERSION = 1
FLAG_SIGNED = 1

_HEADER = struct.Struct("<8sHH16s8sI")
HEADER_SIZE = _HEADER.size
_RECORD = struct.Struct("<III")
_RECORD_SIZE = _RECORD.size
_LENGTH_CHECK = 0xFFFFFFFF
_OFFSET = struct.Struct("<Q")
MAC_SIZE = 32
JOURNAL_ID_SIZE = 16
FILE_ID_SIZE = 8


class Position(NamedTuple):
    """How far a reader has read: the journal file (its file id) and the byte offset."""

    file_id: bytes
    offset: int


#: The position of a reader that found no journal.
NO_POSITION = Position(b"", 0)
#: A ``since`` for a snapshot rewrite whose caller's memory is behind the store:
#: the rewrite starts from the saved state, never from the caller's contents.
REBASE = Position(b"rebase", -1)


class AppendResult(NamedTuple):
    """What :meth:`~cacheman._stores.pickle.PickleStore.append` did.

    ``position`` is the journal's end after the append; ``in_sync`` is True when
    the journal ended exactly at the caller's ``since`` before it (nobody else
    wrote since the caller last read).  A store without positions (Redis, which
    applies each change itself) returns position None and ``in_sync`` True.
    """

    position: Position | None
    in_sync: bool


class SaveResult(NamedTuple):
    """What :meth:`~cacheman._stores.pickle.PickleStore.save` did.

    ``position`` is the start of the new, empty journal; ``was_behind`` says the
    snapshot written includes changes other processes made after ``since``.
    A store without positions (Redis) returns position None.
    """

    position: Position | None
    was_behind: bool


@dataclass(frozen=True)
class Header:
    """A journal's header, decoded."""

    journal_id: bytes
    file_id: bytes
    signed: bool


@dataclass(frozen=True)
class Damage:
    """Where a journal stops being readable.

    ``torn`` is a tail a killed writer left (an incomplete or failing last
    record, or zeros): it is truncated.  Otherwise the damage sits in the middle,
    followed by more data: the file is kept aside and its good prefix kept.
    """

    offset: int
    torn: bool
    reason: str


@dataclass
class Scan:
    """What a scan found: how many good records, where they end, the damage after them.

    ``consumed_part`` says the damage is a record the consumer failed on after
    taking part of it (a malformed change): its target holds part of a bad record.
    """

    count: int
    end: int
    damage: Damage | None
    consumed_part: bool = False


@dataclass
class VerifyReport:
    """What :meth:`~cacheman._stores.pickle.PickleStore.verify` found (and did, with ``fix=True``).

    Fields:

    * ``name``: the cache.
    * ``snapshot_exists``, ``snapshot_ok``: a snapshot file is there; its header,
      length, checksum and (with a key) signature check out (``snapshot_ok`` is
      True when there is no snapshot).  ``snapshot_format``: 0 for a bare 2.x
      pickle, else the header's format version; None without a snapshot.
    * ``journal_exists``, ``journal_records`` (complete, valid records),
      ``journal_bytes`` (file size), ``torn_tail_bytes`` (bytes a killed writer
      left at the end), ``corrupt_offset`` (where damage in the middle starts, or
      None), ``stale_journal`` (a journal the snapshot already includes, left by
      a crash between the two steps of a save).
    * ``signed``: the files carry signatures (HMAC-SHA256).
    * ``problems``: one sentence per problem found; empty when all is well.
    * ``fixed``: what ``fix=True`` did (truncated, kept aside, replaced).
    * ``refused``: one of the problems is one no fix touches, as a load refuses
      it: a signature that is missing or does not match, or a file another user
      could write.  The user must look.

    Nothing is unpickled: a payload that passes its checks but does not unpickle
    is only found by a load.
    """

    name: str
    snapshot_exists: bool = False
    snapshot_ok: bool = True
    snapshot_format: int | None = None
    journal_exists: bool = False
    journal_records: int = 0
    journal_bytes: int = 0
    torn_tail_bytes: int = 0
    corrupt_offset: int | None = None
    stale_journal: bool = False
    signed: bool = False
    problems: list[str] = field(default_factory=list)
    fixed: list[str] = field(default_factory=list)
    refused: bool = False

    @property
    def ok(self) -> bool:
        """No problem found."""
        return not self.problems


def new_journal_id() -> bytes:
    return os.urandom(JOURNAL_ID_SIZE)


def encode_header(journal_id: bytes, *, signed: bool) -> tuple[bytes, bytes]:
    """A fresh header for journal ``journal_id`` and its new file id."""
    file_id = os.urandom(FILE_ID_SIZE)
    flags = FLAG_SIGNED if signed else 0
    fields = _HEADER.pack(MAGIC, FORMAT_VERSION, flags, journal_id, file_id, 0)[:-4]
    return fields + struct.pack("<I", zlib.crc32(fields)), file_id


def decode_header(data: bytes | memoryview) -> Header:
    """Check and decode a journal's header; raise ``ValueError`` saying what is wrong."""
    if len(data) < HEADER_SIZE:
        raise ValueError(f"its header is truncated ({len(data)} bytes)")
    magic, version, flags, journal_id, file_id, crc = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ValueError("it does not start with the journal magic")
    if zlib.crc32(data[: HEADER_SIZE - 4]) != crc:
        raise ValueError("its header fails its checksum")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"its format version {version} is not one this CacheMan reads ({FORMAT_VERSION})"
        )
    return Header(journal_id, file_id, bool(flags & FLAG_SIGNED))


def _mac(key: bytes, journal_id: bytes, offset: int, fields: bytes | memoryview) -> hmac.HMAC:
    mac = hmac.new(key, journal_id, sha256)
    mac.update(_OFFSET.pack(offset))
    mac.update(fields)
    return mac


def encode_record(payload: bytes, *, journal_id: bytes, offset: int, key: bytes | None) -> bytes:
    """One record holding ``payload``, to be written at ``offset`` of journal ``journal_id``.

    ``key`` signs it (a signed journal needs one in every record).
    """
    length = len(payload)
    head = _RECORD.pack(length, length ^ _LENGTH_CHECK, zlib.crc32(payload))
    if key is None:
        return head + payload
    mac = _mac(key, journal_id, offset, head)
    mac.update(payload)
    return head + mac.digest() + payload


def scan(
    data: bytes,
    base: int,
    header: Header,
    *,
    key: bytes | None,
    name: str,
    path: object,
    consume: Callable[[memoryview], object] | None = None,
) -> Scan:
    """Check the records of ``data``, the bytes of a journal file from offset ``base`` on.

    Offsets in the result are offsets in the file.  Each good record's payload
    is handed to ``consume`` (if given) as soon as it is checked, so that a
    load reads the file once, in one tight loop; an exception from ``consume``
    is damage at that record.  Stops at the first damage.  With ``key`` (and a
    signed journal), a record whose checksums hold but whose HMAC does not is
    tampering: raises :class:`~cacheman.errors.SignatureMismatchError` before
    that record is unpickled.
    """
    size = len(data)
    view = memoryview(data)
    check = key if header.signed else None
    head_size = _RECORD_SIZE + (MAC_SIZE if header.signed else 0)
    unpack = _RECORD.unpack_from
    crc32 = zlib.crc32
    count = position = 0
    damage = None
    consumed_part = False
    while position < size:
        here = base + position
        if size - position < head_size:
            damage = Damage(here, True, "an incomplete record header")
            break
        length, length_check, payload_crc = unpack(data, position)
        if length ^ length_check != _LENGTH_CHECK:
            if data[position:].strip(b"\x00"):
                damage = Damage(here, False, "a record header is damaged")
            else:
                damage = Damage(here, True, "a zero-filled tail")
            break
        body = position + head_size
        end = body + length
        if end > size:
            damage = Damage(here, True, f"an incomplete record ({size - body} of {length} bytes)")
            break
        payload = view[body:end]
        if crc32(payload) != payload_crc:
            if end == size:
                damage = Damage(here, True, "a last record failing its checksum")
            else:
                damage = Damage(here, False, "a record fails its checksum")
            break
        if check is not None:
            _check_mac(check, header, here, view[position:body], payload, name, path)
        if consume is not None:
            try:
                consume(payload)
            except Exception as error:  # garbage can raise almost any exception
                reason = f"its record at byte {here} does not unpickle to changes ({error})"
                damage, consumed_part = Damage(here, False, reason), True
                break
        count += 1
        position = end
    return Scan(count, base + position, damage, consumed_part)


def _check_mac(
    key: bytes,
    header: Header,
    offset: int,
    head: memoryview,
    payload: memoryview,
    name: str,
    path: object,
) -> None:
    mac = _mac(key, header.journal_id, offset, head[:_RECORD_SIZE])
    mac.update(payload)
    if not hmac.compare_digest(mac.digest(), head[_RECORD_SIZE:]):
        raise SignatureMismatchError(
            f"cache {name!r}: the signature of the journal record at byte {offset} of "
            f"{path} does not match it (tampered with, moved from another journal or "
            "another cache's, signed with another key, or by a CacheMan 3.0 pre-release "
            "whose signatures did not name the cache); nothing in it was unpickled. If you "
            "changed the key, delete the journal; otherwise find out who wrote it."
        )


def applier(target: MutableMapping[Any, Any]) -> Callable[[memoryview], None]:
    """A ``consume`` for :func:`scan` that replays each record's changes on ``target``."""
    loads = pickle.loads

    def apply(payload: memoryview, set_: str = SET, del_: str = DEL, clear: str = CLEAR) -> None:
        for op, key, value in loads(payload):
            if op == set_:
                target[key] = value
            elif op == del_:
                target.pop(key, None)
            elif op == clear:
                target.clear()
            else:
                raise ValueError(f"unknown journal operation {op!r}")

    return apply


def collector(batches: list[list[Change]]) -> Callable[[memoryview], None]:
    """A ``consume`` for :func:`scan` that keeps each record's changes, checked, in ``batches``."""

    def collect(payload: memoryview) -> None:
        batches.append(decode_payload(payload))

    return collect


def decode_payload(payload: memoryview) -> list[Change]:
    """Unpickle one record's changes; ``ValueError`` if they are not a list of changes."""
    changes = pickle.loads(payload)
    if type(changes) is not list:
        raise ValueError(f"it holds a {type(changes).__name__}, not a list of changes")
    for change in changes:
        if type(change) is not tuple or len(change) != 3 or change[0] not in OPS:
            raise ValueError(f"it holds {change!r:.80}, not a change")
    return changes


def apply_changes(target: dict[Any, Any], changes: Iterable[Change]) -> None:
    """Replay ``changes`` on ``target``: last writer wins per key, CLEAR wipes.

    Through ``dict``'s own methods, so that a cache taking in other processes'
    changes does not record them as its own.
    """
    for op, key, value in changes:
        if op == SET:
            dict.__setitem__(target, key, value)
        elif op == DEL:
            dict.pop(target, key, None)
        elif op == CLEAR:
            dict.clear(target)
        else:
            raise ValueError(f"unknown journal operation {op!r}")


def check_changes(changes: Iterable[Change]) -> list[Change]:
    """The changes as a list, each checked; ``ValueError`` for a malformed one."""
    checked = []
    for change in changes:
        if not isinstance(change, tuple) or len(change) != 3 or change[0] not in OPS:
            raise ValueError(
                f"a journal change is (op, key, value) with op one of {sorted(OPS)}, "
                f"not {change!r:.80}"
            )
        checked.append(change)
    return checked


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written (a regular file may take fewer at once)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
