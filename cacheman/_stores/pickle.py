"""The default pickle store: per cache a snapshot and a journal of changes, private and crash-safe.

Cache ``name`` lives in ``<name>.pkl`` (the snapshot: the whole contents at its
last save) and ``<name>.journal`` (the changes appended since, see
:mod:`cacheman._stores.journal`); the saved contents are the snapshot with the journal
replayed on top.  Snapshot format (version 2), all integers little-endian::

    offset size  field
    0      8     magic b"CACHEMAN"
    8      2     format version (2)
    10     2     flags: 1 = signed (HMAC-SHA256), 2 = written by cloudpickle
    12     8     payload length in bytes
    20     16    id of the journal that continues this snapshot
    36     4     CRC-32 of the payload, then of bytes 0-35
    40     32    HMAC-SHA256 of the payload, then of bytes 0-35 (zeros if unsigned),
                 under the cache's key (:func:`cache_signing_key`: the signing key
                 bound to the manager's and the cache's names)
    72     ...   the payload: a pickle (protocol 5) of a plain dict

Version 1 files (no journal id: bytes 20-55 are the CRC and HMAC, the payload
starts at 56) still load, and their journal, if any, is replayed.  A file that
does not start with the magic is a bare pickle written by CacheMan 2.x and still
loads (unless a signing key is set: it carries no signature).

Durability rests on one ordering, kept by :func:`atomic_write`: the new bytes
go to a temporary file in the same directory, are fsynced, and only then
renamed over the old file, after which the directory is fsynced so the rename
itself survives a power cut.  A reader therefore sees the old file or the new
one, never a mix, and needs no lock.  Writers (saves and journal appends) take
an ``flock`` on a lock file beside the snapshot, so two processes never
interleave; the kernel drops the lock when its holder dies, so a killed writer
never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hmac
import json
import logging
import os
import pickle
import re
import stat
import struct
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from hashlib import sha256
from pathlib import Path
from typing import IO, Any, NamedTuple

from .._paths import check_private, validate_cache_name
from ..errors import (
    CorruptCacheError,
    InsecureCacheError,
    SignatureMismatchError,
    UnpicklableValueError,
)
from .api import Edge
from .file_events import EventLog
from .journal import HEADER_SIZE as _JOURNAL_HEADER_SIZE
from .journal import (
    NO_POSITION,
    REBASE,
    AppendResult,
    Change,
    Damage,
    Header,
    Position,
    SaveResult,
    VerifyReport,
    applier,
    apply_changes,
    check_changes,
    collector,
    decode_header,
    encode_header,
    encode_record,
    new_journal_id,
    scan,
    write_all,
)

__all__ = [
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "MAGIC",
    "SIGNING_KEY_ENV",
    "PickleStore",
    "StoreUsage",
    "atomic_write",
    "cache_signing_key",
    "keep_aside",
    "open_regular",
    "resolve_signing_key",
]

logger = logging.getLogger("cacheman")

PICKLE_PROTOCOL = 5
MAGIC = b"CACHEMAN"
FORMAT_VERSION = 2
SIGNING_KEY_ENV = "CACHEMAN_SIGNING_KEY"

_FLAG_SIGNED = 1
_FLAG_CLOUDPICKLE = 2
# The fields the checksum and the signature cover, then the two of them.
_FIELDS = struct.Struct("<8sHHQ16s")
_FIELDS_V1 = struct.Struct("<8sHHQ")
_TRAILER = struct.Struct("<I32s")
HEADER_SIZE = _FIELDS.size + _TRAILER.size
# Rounds of reading again when a writer replaced a file under a reader: each
# retry means a complete, checked file was just written, so a few are plenty.
_LOAD_ROUNDS = 5
_NO_SIGNATURE = bytes(32)

_DIR_MODE = 0o700
_FILE_MODE = 0o600

# What the standard pickler raises for lambdas, closures, local classes and the
# like; anything else (a RecursionError, a bug in a __reduce__) is not retried.
_REFUSED_BY_PICKLE = (pickle.PicklingError, TypeError, AttributeError)


def resolve_signing_key(signing_key: bytes | str | None) -> bytes | None:
    """Return the key to sign with: the one given, else ``$CACHEMAN_SIGNING_KEY``, else ``None``.

    A ``str`` is encoded as UTF-8.  An empty key is refused with ``ValueError``:
    it would sign every file with a secret anyone knows.
    """
    if signing_key is None:
        signing_key = os.environ.get(SIGNING_KEY_ENV) or None
        if signing_key is None:
            return None
    key = signing_key.encode() if isinstance(signing_key, str) else bytes(signing_key)
    if not key:
        raise ValueError("signing_key must not be empty")
    return key


def ensure_private_directory(directory: Path) -> None:
    """Create ``directory`` with mode 0700 if missing, then check that only we can write it.

    Raises :class:`~cacheman.errors.InsecureCacheError` if it exists but another
    user owns it or can write to it.
    """
    try:
        info = os.stat(directory)
    except FileNotFoundError:
        directory.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        info = os.stat(directory)
    check_private(directory, info, "cache directory")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold the inter-process write lock of ``path`` (``flock`` on ``.<file name>.lock``).

    The lock file is never deleted: removing it while another process waits on
    it would let a third process lock a new file of the same name.  The explicit
    unlock matters in a process that forks while holding the lock: the child's
    inherited descriptor would otherwise keep the lock until the child exits.
    """
    lock_path = path.with_name(f".{path.name}.lock")
    with contextlib.suppress(FileNotFoundError):
        _check_regular(lock_path, os.stat(lock_path), "lock file")  # before an open can wait
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC, _FILE_MODE)
    try:
        _check_regular(lock_path, os.fstat(fd), "lock file")
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (the rename lives in the directory's data)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temporary_prefix(path: Path) -> str:
    return f".{path.name}.tmp-"


def _remove_stale_temporaries(path: Path) -> None:
    """Delete temporary files left by writers of ``path`` that were killed mid-write.

    Called with the write lock held: every writer creates its temporary file
    under that lock, so any temporary file seen now belongs to a dead writer.
    The pattern is exact so that a cache whose name extends this one's (say
    ``a.pkl.tmp-x``) never loses its own temporary file.
    """
    stale = re.compile(re.escape(_temporary_prefix(path)) + r"[a-z0-9_]{8}")
    for entry in os.scandir(path.parent):
        if stale.fullmatch(entry.name):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Replace ``path`` with what ``write`` writes, all or nothing.

    ``write`` gets a seekable binary file.  Writers of the same path in any
    process are serialised by a lock.  The bytes go to a temporary file in the
    same directory (so ``os.replace`` is a rename within one file system), which
    is flushed and fsynced before the rename; the directory is fsynced after it.
    A crash at any moment leaves either the old file or the new one.  On any
    error the temporary file is removed and the old file is untouched.
    """
    ensure_private_directory(path.parent)
    with _locked(path):
        _remove_stale_temporaries(path)
        replace_file(path, write)


def replace_file(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """The body of :func:`atomic_write`, for a caller that already holds the lock of ``path``."""
    fd, tmp_name = tempfile.mkstemp(prefix=_temporary_prefix(path), dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, _FILE_MODE)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_directory(path.parent)


class _DigestingWriter:
    """A write-through file wrapper that keeps the CRC-32 (and HMAC) of what passes.

    The pickler calls ``write`` once per 64 KiB frame, so this costs a few
    hundred Python calls per file rather than a second pass over the payload.
    """

    __slots__ = ("crc", "length", "mac", "raw")

    def __init__(self, raw: IO[bytes], mac: hmac.HMAC | None) -> None:
        self.raw = raw
        self.mac = mac
        self.crc = 0
        self.length = 0

    def write(self, data: bytes) -> int:
        self.crc = zlib.crc32(data, self.crc)
        if self.mac is not None:
            self.mac.update(data)
        self.length += len(data)
        return self.raw.write(data)


def _pickles_as_plain_dict(contents: Mapping[Any, Any]) -> bool:
    """Tell whether the pickler writes ``contents`` as a plain dict without a copy.

    True for a ``dict`` and for a cache, whose ``__reduce_ex__`` hands over its
    items as a dict's; copying a million-entry cache into a dict first would
    cost 10 % of the save.  Any other mapping is copied, so the file never
    names a class the loading program may lack.
    """
    if type(contents) is dict:
        return True
    if not isinstance(contents, dict):
        return False
    return bool(type(contents).__reduce_ex__(contents, PICKLE_PROTOCOL)[0] is dict)


def _cloudpickle() -> Any:
    """Import cloudpickle only when a save needs it (it is slower to import than pickle)."""
    import cloudpickle  # type: ignore[import-untyped]

    return cloudpickle


def _describe_unpicklable(name: str, contents: Mapping[Any, Any]) -> str:
    """Say which item of ``contents`` cannot be pickled (run only after a save failed)."""
    cloudpickle = _cloudpickle()
    for key, value in contents.items():
        for part, what in ((key, "key"), (value, "value")):
            try:
                cloudpickle.dumps(part, PICKLE_PROTOCOL)
            except Exception as error:  # any failure here is the answer we look for
                return (
                    f"cache {name!r}: the {what} of the item whose key is a "
                    f"{type(key).__name__} ({key!r:.80}) is a {type(part).__name__} that "
                    f"neither pickle nor cloudpickle can serialise ({error}); nothing was "
                    "saved and the saved copy is unchanged. Remove that item or make it picklable."
                )
    return (
        f"cache {name!r}: the contents cannot be pickled, by pickle or by cloudpickle, "
        "though each item can on its own; nothing was saved and the saved copy is unchanged"
    )


class PickleStore:
    """Saves and loads caches as snapshot files plus journals of changes, in one directory.

    With a ``signing_key`` every file and every journal record is signed, and
    one whose signature is missing or wrong is refused before anything in it is
    unpickled.  Signatures bind the names of the manager (``manager``, by
    default the directory's name) and of the cache, as a Redis store's do: a
    signed file copied into another cache's place, or another manager's, is
    refused like a forged one (see :func:`cache_signing_key`).
    """

    suffix = ".pkl"
    journal_suffix = ".journal"
    #: False in a reader that must change nothing (``cacheman list`` and ``show``): a
    #: damaged or unreadable snapshot raises CorruptCacheError instead of going aside,
    #: and a damaged journal is read up to the damage and left as it is.
    keep_aside_damaged = True

    def __init__(
        self, directory: Path, *, signing_key: bytes | None = None, manager: str | None = None
    ) -> None:
        self.directory = directory
        self.manager = directory.name if manager is None else manager
        self._cache_keys: dict[str, bytes] = {}
        self.signing_key = signing_key
        # name -> the end of the journal as this process last wrote or checked it:
        # an append starts its check of the tail there instead of at the start.
        self._known_ends: dict[str, Position] = {}
        # name -> (snapshot, journal): an append is cheap enough for path
        # building and name checks to show.
        self._paths: dict[str, tuple[Path, Path]] = {}
        # Generation changes, for other processes (see cacheman._stores.file_events).
        self._events = EventLog(directory)

    def __repr__(self) -> str:
        signed = ", signed" if self.signing_key else ""
        return f"{type(self).__name__}({str(self.directory)!r}{signed})"

    @property
    def signing_key(self) -> bytes | None:
        """The manager's signing key (None: files are not signed, and signatures not checked)."""
        return self._signing_key

    @signing_key.setter
    def signing_key(self, key: bytes | None) -> None:
        self._signing_key = key
        self._cache_keys.clear()

    def _key_for(self, name: str) -> bytes | None:
        """The key that signs the files of cache ``name`` (None without a signing key)."""
        if self._signing_key is None:
            return None
        key = self._cache_keys.get(name)
        if key is None:
            key = self._cache_keys[name] = cache_signing_key(self._signing_key, self.manager, name)
        return key

    def path_for(self, name: str) -> Path:
        """Return the file that holds cache ``name``; the name can never leave the directory."""
        return self._files(name)[0]

    def journal_path(self, name: str) -> Path:
        """Return the journal file of cache ``name`` (beside its snapshot)."""
        return self._files(name)[1]

    def _files(self, name: str) -> tuple[Path, Path]:
        try:
            return self._paths[name]
        except (KeyError, TypeError):
            stem = validate_cache_name(name)
        files = (
            self.directory / (stem + self.suffix),
            self.directory / (stem + self.journal_suffix),
        )
        self._paths[stem] = files
        return files

    # -- save (the compaction) -----------------------------------------------------------

    def save(
        self,
        name: str,
        contents: Mapping[Any, Any],
        *,
        since: Position | None = None,
        pending: Iterable[Change] = (),
    ) -> SaveResult:
        """Write ``contents`` as the snapshot of ``name`` and start an empty journal, atomically.

        Without ``since``, ``contents`` replaces everything saved.  With
        ``since`` (the position the caller has read the journal through),
        changes other processes appended after it are kept: the snapshot is a
        copy of ``contents`` with those changes and then ``pending`` (the
        caller's own changes not yet in the journal, so that they win) applied;
        if the journal was compacted or replaced since, the saved state takes
        the place of ``contents``, and so it does when ``since`` is
        :data:`~cacheman._stores.journal.REBASE` (a caller whose contents are behind:
        the snapshot is then what is saved with ``pending`` on top, and no key
        the caller never read is dropped).  ``was_behind`` in the result says so.

        Costs one pickling pass, one fsync of each file and of the directory.
        Values the standard pickler refuses are written by cloudpickle instead.
        Raises :class:`~cacheman.errors.UnpicklableValueError` (a ``TypeError``)
        if neither can, and :class:`~cacheman.errors.InsecureCacheError` if the
        directory is not private; either way nothing saved is changed.
        """
        path = self.path_for(name)
        journal = self.journal_path(name)
        plain = contents if _pickles_as_plain_dict(contents) else dict(contents)
        ensure_private_directory(path.parent)
        with _locked(path):
            _remove_stale_temporaries(path)
            _remove_stale_temporaries(journal)
            was_behind = False
            if since is not None:
                caught_up = self._catch_up(name, plain, since, pending)
                if caught_up is not None:
                    plain, was_behind = caught_up, True
            journal_id = new_journal_id()
            replace_file(path, lambda handle: self._write_file(name, plain, handle, journal_id))
            # A crash here leaves the new snapshot beside the old journal.  That
            # is safe because the snapshot names the journal that continues it
            # (``journal_id``): a load ignores a journal with another id, and the
            # next append or save replaces it.  Replaying the old journal instead
            # would not be: its changes are in the snapshot only when this save
            # merged them, and a save without ``since`` replaces them (a cleared
            # cache would get keys back), while changes in ``pending`` would be
            # overwritten by older records of the same keys.
            position = self._start_journal(journal, journal_id)
        self._known_ends[name] = position
        return SaveResult(position, was_behind)

    def _catch_up(
        self,
        name: str,
        contents: Mapping[Any, Any],
        since: Position,
        pending: Iterable[Change],
    ) -> dict[Any, Any] | None:
        """``contents`` + what others appended after ``since`` + ``pending``; None if nothing.

        ``pending`` is read once, and only when there is something to merge (so a
        caller can pass a lazy iterable: a whole-cache save rarely needs it).

        Runs under the lock.  When ``since`` cannot be followed (the journal was
        compacted, replaced or removed since), or is :data:`~cacheman._stores.journal.REBASE`
        (the caller's contents are behind), the saved state replaces ``contents``.
        """
        if since == REBASE:
            return self._saved_with(name, pending)
        path = self.path_for(name)
        journal = self.journal_path(name)
        expected = _snapshot_journal_id(path)
        read = self._read_journal(name, journal)
        followable = False
        if read is None:
            if since.file_id == NO_POSITION.file_id:
                return None
        else:
            info, data = read
            header = _decode_header_or_none(data)
            if header is not None and (expected is None or header.journal_id == expected):
                if since.file_id == NO_POSITION.file_id:
                    # The caller saw no journal: all of this one is new to it, if it
                    # continues the snapshot the caller saw (an old or no snapshot).
                    followable = expected is None
                    since = Position(header.file_id, _JOURNAL_HEADER_SIZE)
                else:
                    followable = header.file_id == since.file_id and (
                        _JOURNAL_HEADER_SIZE <= since.offset <= len(data)
                    )
            if followable:
                assert header is not None
                if since.offset == len(data):
                    return None
                self._check_signed(name, journal, header, len(data))
                merged = dict(contents)
                replayed = self._read_records(
                    name,
                    journal,
                    info,
                    data[since.offset :],
                    since.offset,
                    header,
                    locked=True,
                    consume=applier(merged),
                )
                if not isinstance(replayed, _Replaced):
                    apply_changes(merged, pending)
                    return merged
                # A malformed record was taken in part; the journal is repaired now.
        return self._saved_with(name, pending)

    def _saved_with(self, name: str, pending: Iterable[Change]) -> dict[Any, Any]:
        """What is saved for ``name`` with ``pending`` applied on top (caller holds the lock)."""
        outcome = self._load_once(name, self.path_for(name), locked=True)
        assert not isinstance(outcome, _Replaced)
        merged = outcome[0] or {}
        apply_changes(merged, pending)
        return merged

    def _write_file(
        self, name: str, contents: Mapping[Any, Any], handle: IO[bytes], journal_id: bytes
    ) -> None:
        # The header is written last, once the length and checksums are known;
        # streaming the pickle keeps a large cache from existing twice in memory.
        handle.write(bytes(HEADER_SIZE))
        flags = 0
        writer = self._writer(name, handle)
        try:
            pickle.dump(contents, writer, PICKLE_PROTOCOL)
        except _REFUSED_BY_PICKLE:
            handle.seek(HEADER_SIZE)
            handle.truncate()
            flags |= _FLAG_CLOUDPICKLE
            writer = self._writer(name, handle)
            try:
                _cloudpickle().dump(contents, writer, PICKLE_PROTOCOL)
            except Exception as error:
                raise UnpicklableValueError(_describe_unpicklable(name, contents)) from error
        if writer.mac is not None:
            flags |= _FLAG_SIGNED
        fields = _FIELDS.pack(MAGIC, FORMAT_VERSION, flags, writer.length, journal_id)
        crc = zlib.crc32(fields, writer.crc)
        signature = _NO_SIGNATURE
        if writer.mac is not None:
            writer.mac.update(fields)
            signature = writer.mac.digest()
        handle.seek(0)
        handle.write(fields + _TRAILER.pack(crc, signature))

    def _writer(self, name: str, handle: IO[bytes]) -> _DigestingWriter:
        key = self._key_for(name)
        mac = None if key is None else hmac.new(key, digestmod=sha256)
        return _DigestingWriter(handle, mac)

    def _start_journal(self, journal: Path, journal_id: bytes) -> Position:
        """Replace ``journal`` by an empty one continuing ``journal_id`` (caller holds the lock)."""
        header, file_id = encode_header(journal_id, signed=self.signing_key is not None)
        replace_file(journal, lambda handle: handle.write(header))
        return Position(file_id, _JOURNAL_HEADER_SIZE)

    # -- append --------------------------------------------------------------------------

    def append(
        self, name: str, changes: Iterable[Change], since: Position | None = None
    ) -> AppendResult:
        """Append ``changes`` to the journal of ``name`` as one record; durable on return.

        ``changes`` are ``(SET, key, value)``, ``(DEL, key, None)`` and
        ``(CLEAR, None, None)`` (constants of :mod:`cacheman._stores.journal`).  Costs
        one pickling of the changes, one write and one ``fdatasync``, whatever
        the size of the cache, under the cache's inter-process lock.  Creates the
        journal (and the directory) if missing.  ``in_sync`` in the result says
        whether the journal ended at ``since`` before this append.

        Raises :class:`~cacheman.errors.UnpicklableValueError` naming the cache
        and the key if a value cannot be pickled (the journal is untouched),
        ``ValueError`` for a malformed change, and
        :class:`~cacheman.errors.SignatureMismatchError` if the journal holds
        records signed differently from this store (with a key, or without).
        """
        batch = check_changes(changes)
        path = self.path_for(name)
        journal = self.journal_path(name)
        payload = _pickled(name, batch) if batch else b""
        ensure_private_directory(path.parent)
        with _locked(path):
            for _ in range(_LOAD_ROUNDS):
                fd, header, size, created = self._open_for_append(name, path, journal)
                try:
                    end = self._checked_end(name, journal, fd, header, size, since)
                    if end is None:
                        continue  # the tail was repaired: open the journal again
                    # A caller that saw no journal is in sync with one just created.
                    in_sync = since == Position(header.file_id, end) or (
                        created and since == NO_POSITION
                    )
                    if batch:
                        end += self._write_record(name, fd, header, end, payload)
                finally:
                    os.close(fd)
                break
            else:
                raise CorruptCacheError(f"cache {name!r}: {journal} kept changing; try again")
        position = Position(header.file_id, end)
        self._known_ends[name] = position
        return AppendResult(position, in_sync)

    def _write_record(self, name: str, fd: int, header: Header, end: int, payload: bytes) -> int:
        """Write one record at ``end`` (the file's end) and make it durable; return its size."""
        record = encode_record(
            payload, journal_id=header.journal_id, offset=end, key=self._key_for(name)
        )
        try:
            write_all(fd, record)
            os.fdatasync(fd)
        except BaseException:
            # Leave no partial record behind a failed write (a full disk).
            with contextlib.suppress(OSError):
                os.ftruncate(fd, end)
            raise
        return len(record)

    def _open_for_append(
        self, name: str, path: Path, journal: Path
    ) -> tuple[int, Header, int, bool]:
        """Open the journal to append to (under the lock): ``(fd, header, size, created)``.

        ``created`` says there was no journal file at all.

        Starts a new journal when there is none, when the one there is left over
        from a crash inside a save (the snapshot names another one), when its
        header is damaged (kept aside first), and when it holds no record yet but
        is signed otherwise than this store signs.
        """
        expected = _snapshot_journal_id(path)
        signed = self.signing_key is not None
        created = False
        for _ in range(2):
            try:
                fd, info = open_regular(journal, os.O_RDWR | os.O_APPEND, "journal file")
            except FileNotFoundError:
                self._start_journal(journal, expected or new_journal_id())
                created = True
                continue
            try:
                head = os.pread(fd, _JOURNAL_HEADER_SIZE, 0)
                try:
                    header = decode_header(head)
                except ValueError as damage:
                    kept = _free_corrupt_name(journal)
                    os.rename(journal, kept)
                    _fsync_directory(journal.parent)
                    logger.warning(
                        "cache %r: the journal %s is damaged (%s); it was kept as %s and a "
                        "new journal started",
                        name,
                        journal,
                        damage,
                        kept,
                    )
                    self._start_journal(journal, expected or new_journal_id())
                    os.close(fd)
                    continue
                if expected is not None and header.journal_id != expected:
                    # Left by a crash between the two steps of a save: the snapshot holds it.
                    self._start_journal(journal, expected)
                    os.close(fd)
                    continue
                if header.signed != signed:
                    if info.st_size > _JOURNAL_HEADER_SIZE:
                        raise SignatureMismatchError(_mixed_signing(name, journal, header.signed))
                    self._start_journal(journal, header.journal_id)
                    os.close(fd)
                    continue
            except BaseException:
                os.close(fd)
                raise
            return fd, header, info.st_size, created
        raise CorruptCacheError(f"cache {name!r}: {journal} could not be opened for appending")

    def _checked_end(
        self,
        name: str,
        journal: Path,
        fd: int,
        header: Header,
        size: int,
        since: Position | None,
    ) -> int | None:
        """The end of the last complete record, or None after repairing the tail (lock held).

        The check starts at the furthest end known to be a record boundary (the
        caller's ``since``, or this process's last append), so it reads only what
        other processes appended meanwhile.
        """
        start = _JOURNAL_HEADER_SIZE
        for known in (since, self._known_ends.get(name)):
            if known is not None and known.file_id == header.file_id and known.offset <= size:
                start = max(start, known.offset)
        if start == size:
            return size
        tail = os.pread(fd, size - start, start)
        found = scan(tail, start, header, key=None, name=name, path=journal)
        if found.damage is None:
            return size
        info = os.fstat(fd)
        self._repair(name, journal, info, found.damage, size, header, locked=True)
        return None

    # -- load ----------------------------------------------------------------------------

    def load(self, name: str) -> dict[Any, Any] | None:
        """Return the saved contents of ``name``, or ``None`` if nothing usable is saved.

        The saved contents are the snapshot with the journal replayed on top (a
        journal without a snapshot is a cache that was only ever appended to).

        A damaged snapshot (empty, truncated, failing its checksum, not
        unpickling, not a mapping) is moved aside as ``<name>.pkl.corrupt-<time>``
        (its journal too), a warning names it, and ``None`` is returned so that
        the cache is rebuilt.  A journal whose last record is incomplete (a writer
        killed mid-append) loses that tail, with a warning; a journal damaged in
        the middle is kept aside as ``<name>.journal.corrupt-<time>`` and its
        records before the damage are applied and kept.

        Raises :class:`~cacheman.errors.InsecureCacheError` if the directory or
        a file could have been written by another user, and
        :class:`~cacheman.errors.SignatureMismatchError` if a signing key is set
        and a signature is missing or wrong.  Those files are refused, not
        rebuilt over: they may be an attack, and the user must look.
        """
        return self.load_tracked(name)[0]

    def load_tracked(self, name: str) -> tuple[dict[Any, Any] | None, Position]:
        """Like :meth:`load`, plus the journal position the contents include."""
        path = self.path_for(name)
        # A writer may replace the files between our reads; we notice and read
        # again.  Each retry means a complete, checked file was just written.
        for _ in range(_LOAD_ROUNDS):
            outcome = self._load_once(name, path, locked=False)
            if not isinstance(outcome, _Replaced):
                self._known_ends.setdefault(name, outcome[1])
                return outcome
        raise CorruptCacheError(
            f"cache {name!r}: {path} kept changing while it was read; try again"
        )

    def changes_since(self, name: str, position: Position) -> tuple[list[Change], Position] | None:
        """The changes appended to the journal of ``name`` after ``position``, and its new end.

        Returns None when the journal was compacted or replaced since (the
        caller reloads).  Reads only the new part of the journal.  Damage is
        handled as by :meth:`load`.
        """
        journal = self.journal_path(name)
        for _ in range(_LOAD_ROUNDS):
            if position == NO_POSITION and not journal.exists():
                return [], position
            read = self._read_journal_after(journal, position)
            if read is None:
                return None
            info, header, data = read
            self._check_signed(name, journal, header, info.st_size)
            batches: list[list[Change]] = []
            end = self._read_records(
                name,
                journal,
                info,
                data,
                position.offset,
                header,
                locked=False,
                consume=collector(batches),
            )
            if isinstance(end, _Replaced):
                continue
            if end.file_id != position.file_id:
                return None
            return [change for changes in batches for change in changes], end
        return None

    def _read_journal_after(
        self, journal: Path, position: Position
    ) -> tuple[os.stat_result, Header, bytes] | None:
        """The journal's bytes after ``position``; None unless it is still that journal."""
        opened = _open_checked(journal, "journal file")
        if opened is None:
            return None
        handle, info = opened
        with handle:
            header = _decode_header_or_none(handle.read(_JOURNAL_HEADER_SIZE))
            if header is None or header.file_id != position.file_id:
                return None
            if not _JOURNAL_HEADER_SIZE <= position.offset <= info.st_size:
                return None
            handle.seek(position.offset)
            return info, header, handle.read()

    def _load_once(
        self, name: str, path: Path, *, locked: bool
    ) -> tuple[dict[Any, Any] | None, Position] | _Replaced:
        try:
            directory_info = os.stat(path.parent)
        except FileNotFoundError:
            return None, NO_POSITION
        check_private(path.parent, directory_info, "cache directory")
        # The journal first, then the snapshot: a save in between leaves us a
        # journal older than the snapshot, which names another journal, so we
        # use the snapshot alone, and it holds everything.  (The other order
        # could pair an old snapshot with the new, empty journal.)
        journal = self.journal_path(name)
        read = self._read_journal(name, journal)
        snapshot = self._load_snapshot(name, path, locked=locked)
        if snapshot is None:
            return None, NO_POSITION
        if isinstance(snapshot, _Replaced):
            return snapshot
        contents, expected, identity = snapshot
        if read is None:
            return contents, NO_POSITION
        if identity is None and _identity(journal) != (read[0].st_dev, read[0].st_ino):
            return _REPLACED  # the cache was deleted (journal first) under us
        return self._replay(name, journal, read, contents, expected, locked=locked)

    def _replay(
        self,
        name: str,
        journal: Path,
        read: tuple[os.stat_result, bytes],
        contents: dict[Any, Any] | None,
        expected: bytes | None,
        *,
        locked: bool,
    ) -> tuple[dict[Any, Any] | None, Position] | _Replaced:
        """``contents`` (the snapshot's) with the journal as ``read`` replayed on top."""
        info, data = read
        try:
            header = decode_header(data)
        except ValueError as damage:
            whole = Damage(0, False, str(damage))
            self._repair(name, journal, info, whole, len(data), None, locked=locked)
            return contents, NO_POSITION
        if expected is not None and header.journal_id != expected:
            # Left by a crash between the two steps of a save: the snapshot includes it.
            return contents, Position(header.file_id, len(data))
        self._check_signed(name, journal, header, len(data))
        target = {} if contents is None else contents
        end = self._read_records(
            name,
            journal,
            info,
            data[_JOURNAL_HEADER_SIZE:],
            _JOURNAL_HEADER_SIZE,
            header,
            locked=locked,
            consume=applier(target),
        )
        if isinstance(end, _Replaced):
            return end
        if contents is None and end.offset == _JOURNAL_HEADER_SIZE:
            return None, end  # neither a snapshot nor a record: nothing saved
        return target, end

    def _load_snapshot(
        self, name: str, path: Path, *, locked: bool
    ) -> _Snapshot | _Replaced | None:
        """The snapshot as read (None contents if there is none); None if it was damaged."""
        # Held open across the quarantine, so its inode is not reused meanwhile.
        opened = _open_checked(path, "cache file")
        if opened is None:
            return _Snapshot(None, None, None)
        handle, info = opened
        with handle:
            data = handle.read()
            try:
                contents, journal_id = self._decode(name, path, data)
            except CorruptCacheError as damage:
                return self._quarantine(name, path, info, damage, locked=locked)
        return _Snapshot(contents, journal_id, (info.st_dev, info.st_ino))

    def _read_journal(self, name: str, journal: Path) -> tuple[os.stat_result, bytes] | None:
        opened = _open_checked(journal, "journal file")
        if opened is None:
            return None
        handle, info = opened
        with handle:
            return info, handle.read()

    def _check_signed(self, name: str, journal: Path, header: Header, size: int) -> None:
        if self.signing_key is not None and not header.signed and size > _JOURNAL_HEADER_SIZE:
            raise SignatureMismatchError(_mixed_signing(name, journal, signed=False))

    def _read_records(
        self,
        name: str,
        journal: Path,
        info: os.stat_result,
        data: bytes,
        base: int,
        header: Header,
        *,
        locked: bool,
        consume: Callable[[memoryview], object],
    ) -> Position | _Replaced:
        """Check ``data`` (the file from ``base`` on), handing each record to ``consume``.

        Returns the end of the good records, after repairing any damage.
        ``_REPLACED`` means read again: the file changed under a repair, or the
        consumer took part of a record that turned out malformed.
        """
        found = scan(
            data, base, header, key=self._key_for(name), name=name, path=journal, consume=consume
        )
        if found.damage is None:
            return Position(header.file_id, found.end)
        size = base + len(data)
        fixed = self._repair(name, journal, info, found.damage, size, header, locked=locked)
        return _REPLACED if found.consumed_part else fixed

    def _repair(
        self,
        name: str,
        journal: Path,
        opened: os.stat_result,
        damage: Damage,
        size: int,
        header: Header | None,
        *,
        locked: bool,
    ) -> Position:
        """Cut off a torn tail, or keep a damaged journal aside with its good prefix.

        ``opened`` and ``size`` describe the file as read, and the result is
        the end of its good records.  Only under the lock, and only if the file
        is still the one read, is it changed: a reader that takes no lock sees an
        append in progress as a torn tail, and the records before it are a
        consistent state anyway.  Records before ``damage`` stay in the journal;
        later appends continue after them.
        """
        prefix_end = NO_POSITION if header is None else Position(header.file_id, damage.offset)
        read_only = not self.keep_aside_damaged  # then the good prefix is read, nothing changed
        with contextlib.nullcontext() if locked or read_only else _locked(self.path_for(name)):
            try:
                current = os.stat(journal)
            except FileNotFoundError:
                return prefix_end
            if read_only or (current.st_dev, current.st_ino) != (opened.st_dev, opened.st_ino):
                return prefix_end
            if damage.torn:
                if current.st_size != size:
                    return prefix_end
                with open(journal, "r+b") as handle:
                    handle.truncate(damage.offset)
                    os.fsync(handle.fileno())
                logger.warning(
                    "cache %r: the journal %s ended in %s, %d bytes a writer killed "
                    "mid-append left; they were cut off and every complete record kept",
                    name,
                    journal,
                    damage.reason,
                    size - damage.offset,
                )
                return prefix_end
            if current.st_size < size:
                return prefix_end
            kept = _free_corrupt_name(journal)
            if header is None or damage.offset <= _JOURNAL_HEADER_SIZE:
                os.rename(journal, kept)
                _fsync_directory(journal.parent)
                position = NO_POSITION
            else:
                with open(journal, "rb") as reader:
                    reader.seek(_JOURNAL_HEADER_SIZE)
                    prefix = reader.read(damage.offset - _JOURNAL_HEADER_SIZE)
                # A link, then a rename over: readers see the damaged file or the
                # repaired one, never no journal.  Same journal id, so the records
                # kept keep their signatures; a new file id, so readers that hold
                # a position in the damaged file read again.
                os.link(journal, kept)
                fresh, file_id = encode_header(header.journal_id, signed=header.signed)
                replace_file(journal, lambda handle: handle.write(fresh + prefix))
                position = Position(file_id, damage.offset)
        logger.warning(
            "cache %r: the journal %s is damaged (%s); it was kept as %s, and the changes "
            "recorded before the damage were kept",
            name,
            journal,
            damage.reason,
            kept,
        )
        return position

    def _decode(self, name: str, path: Path, data: bytes) -> tuple[dict[Any, Any], bytes | None]:
        """Check and unpickle a whole snapshot; raise CorruptCacheError if damaged.

        Returns the contents and the id of the journal that continues them
        (None for files written before the journal existed).
        """
        if not data:
            raise CorruptCacheError("it is empty")
        journal_id = None
        if data.startswith(MAGIC):
            payload, journal_id = self._checked_payload(name, path, data)
        elif self.signing_key is not None:
            raise SignatureMismatchError(
                f"cache {name!r}: {path} is not signed (it has no CacheMan header, so a "
                "2.x version or something else wrote it) and a signing key is set; "
                "nothing was unpickled. Delete the file, or load it once without the key "
                "and save it with the key."
            )
        else:
            payload = memoryview(data)
        try:
            loaded = pickle.loads(payload)
        except Exception as error:  # garbage can raise almost any exception
            raise CorruptCacheError(
                f"it does not unpickle ({type(error).__name__}: {error})"
            ) from error
        if not isinstance(loaded, Mapping):
            raise CorruptCacheError(f"it holds a {type(loaded).__name__}, not a mapping")
        return (loaded if type(loaded) is dict else dict(loaded)), journal_id

    def _checked_payload(
        self, name: str, path: Path, data: bytes
    ) -> tuple[memoryview, bytes | None]:
        fields_format, payload, journal_id = _split_snapshot(data)
        length = fields_format.unpack_from(data)[3]
        if len(payload) != length:
            raise CorruptCacheError(
                f"it is truncated or padded: the header announces {length} bytes of "
                f"pickle, the file holds {len(payload)}"
            )
        fields = data[: fields_format.size]
        crc, signature = _TRAILER.unpack_from(data, fields_format.size)
        if zlib.crc32(fields, zlib.crc32(payload)) != crc:
            raise CorruptCacheError("its checksum does not match its contents")
        if self.signing_key is not None:
            flags = fields_format.unpack_from(data)[2]
            self._check_signature(name, path, flags, signature, payload, fields)
        return payload, journal_id

    def _check_signature(
        self,
        name: str,
        path: Path,
        flags: int,
        signature: bytes,
        payload: memoryview,
        fields: bytes,
    ) -> None:
        assert self.signing_key is not None
        if not flags & _FLAG_SIGNED:
            raise SignatureMismatchError(
                f"cache {name!r}: {path} is not signed and a signing key is set; nothing "
                "was unpickled. Delete the file, or load it once without the key and "
                "save it with the key."
            )
        key = self._key_for(name)
        assert key is not None
        if hmac.compare_digest(_snapshot_mac(key, payload, fields), signature):
            return
        if hmac.compare_digest(_snapshot_mac(self.signing_key, payload, fields), signature):
            raise SignatureMismatchError(
                f"cache {name!r}: {path} was signed by a CacheMan 3.0 pre-release, whose "
                "signatures did not name the manager and the cache, so a copy of another "
                "cache's file would pass; nothing was unpickled. If you trust it, load it "
                "once without the signing key and save it with the key (or delete it)."
            )
        raise SignatureMismatchError(
            f"cache {name!r}: the signature of {path} does not match its contents "
            f"(tampered with, signed with another key, or copied from another cache: "
            f"signatures name the manager {self.manager!r} and the cache); nothing was "
            "unpickled. If you changed the key, delete the file; otherwise find out who wrote it."
        )

    def _quarantine(
        self,
        name: str,
        path: Path,
        opened: os.stat_result,
        damage: CorruptCacheError,
        *,
        locked: bool,
    ) -> _Replaced | None:
        """Move the damaged snapshot aside (and its journal), unless a writer has replaced it.

        The caller still holds the damaged file open, so its inode number cannot
        be reused by a new file while we compare.  A journal with records goes
        aside too: replayed without its snapshot it would be served as if it
        were the whole cache.
        """
        if not self.keep_aside_damaged:
            raise CorruptCacheError(f"cache {name!r}: {path} cannot be read here ({damage})")
        journal = self.journal_path(name)
        journal_kept = None
        with contextlib.nullcontext() if locked else _locked(path):
            try:
                current = os.stat(path)
            except FileNotFoundError:
                return _REPLACED
            if (current.st_dev, current.st_ino) != (opened.st_dev, opened.st_ino):
                return _REPLACED
            kept = _free_corrupt_name(path)
            os.rename(path, kept)
            with contextlib.suppress(FileNotFoundError):
                if os.stat(journal).st_size > _JOURNAL_HEADER_SIZE:
                    journal_kept = _free_corrupt_name(journal)
                    os.rename(journal, journal_kept)
            _fsync_directory(path.parent)
        also = f" (its journal was kept as {journal_kept})" if journal_kept else ""
        logger.warning(
            "cache %r: the saved file %s is damaged (%s); it was kept as %s%s and the "
            "cache will be rebuilt",
            name,
            path,
            damage,
            kept,
            also,
        )
        return None

    # -- verify ---------------------------------------------------------------------------

    def verify(self, name: str, fix: bool = False) -> VerifyReport:
        """Check the snapshot and journal of ``name`` without unpickling anything.

        Checks headers, lengths, checksums, signatures (with a key), the journal's
        records and its tail; see :class:`~cacheman._stores.journal.VerifyReport` for the
        fields.  Changes nothing unless ``fix`` is true: then a torn tail is cut
        off, a journal damaged in the middle is kept aside with its good prefix
        kept, a damaged snapshot is kept aside (with its journal), and a journal
        left over from a crash inside a save is replaced, as a load would.
        Tampering and insecure files are reported, never fixed: the user must look.
        """
        report = VerifyReport(name)
        path = self.path_for(name)
        try:
            # As a load does: a directory others can write may hold planted files.
            check_private(path.parent, os.stat(path.parent), "cache directory")
        except FileNotFoundError:
            return report
        except InsecureCacheError as refused:
            report.problems.append(str(refused))
            report.refused = True
            return report
        expected = self._verify_snapshot(name, path, report, fix)
        try:
            self._verify_journal(name, expected, report, fix)
        except InsecureCacheError as refused:
            report.problems.append(str(refused))
            report.refused = True
        return report

    def _verify_journal(
        self, name: str, expected: bytes | None, report: VerifyReport, fix: bool
    ) -> None:
        path = self.path_for(name)
        journal = self.journal_path(name)
        read = self._read_journal(name, journal)
        if read is None:
            return
        info, data = read
        report.journal_exists = True
        report.journal_bytes = len(data)
        try:
            header = decode_header(data)
        except ValueError as broken:
            report.problems.append(f"the journal {journal} is damaged: {broken}")
            if fix:
                with _locked(path):
                    whole = Damage(0, False, str(broken))
                    self._repair(name, journal, info, whole, len(data), None, locked=True)
                report.fixed.append("kept the damaged journal aside")
            return
        report.signed = report.signed or header.signed
        if expected is not None and header.journal_id != expected:
            report.stale_journal = True
            report.problems.append(
                f"the journal {journal} is left over from a save interrupted between its "
                "two steps (the snapshot already includes it)"
            )
            if fix:
                with _locked(path):
                    self._start_journal(journal, expected)
                report.fixed.append("replaced the left-over journal by an empty one")
            return
        try:
            self._check_signed(name, journal, header, len(data))
            found = scan(
                data[_JOURNAL_HEADER_SIZE:],
                _JOURNAL_HEADER_SIZE,
                header,
                key=self._key_for(name),
                name=name,
                path=journal,
            )
        except SignatureMismatchError as forged:
            report.problems.append(str(forged))
            report.refused = True
            return
        report.journal_records = found.count
        damage = found.damage
        if damage is None:
            return
        if damage.torn:
            report.torn_tail_bytes = len(data) - damage.offset
            report.problems.append(
                f"the journal {journal} ends in {damage.reason} "
                f"({report.torn_tail_bytes} bytes from byte {damage.offset})"
            )
        else:
            report.corrupt_offset = damage.offset
            report.problems.append(
                f"the journal {journal} is damaged at byte {damage.offset}: {damage.reason}"
            )
        if fix:
            self._repair(name, journal, info, damage, len(data), header, locked=False)
            report.fixed.append(
                "cut off the torn tail" if damage.torn else "kept the damaged journal aside"
            )

    def _verify_snapshot(
        self, name: str, path: Path, report: VerifyReport, fix: bool
    ) -> bytes | None:
        """Check the snapshot into ``report``; return the id of the journal it names."""
        try:
            opened = _open_checked(path, "cache file")
        except InsecureCacheError as refused:
            report.snapshot_exists = True
            report.snapshot_ok = False
            report.problems.append(str(refused))
            report.refused = True
            return None
        if opened is None:
            return None
        handle, info = opened
        with handle:
            data = handle.read()
        report.snapshot_exists = True
        if data and not data.startswith(MAGIC):
            report.snapshot_format = 0
            if self.signing_key is not None:
                report.snapshot_ok = False
                report.problems.append(f"the snapshot {path} is a bare pickle, not signed")
                report.refused = True
            return None
        try:
            if not data:  # a load moves an empty file aside: it is damage, not a 2.x pickle
                raise CorruptCacheError("it is empty")
            report.snapshot_format = struct.unpack_from("<H", data, 8)[0] if len(data) > 9 else None
            _payload, journal_id = self._checked_payload(name, path, data)
            flags = struct.unpack_from("<H", data, 10)[0]
            report.signed = bool(flags & _FLAG_SIGNED)
            return journal_id
        except SignatureMismatchError as forged:
            report.snapshot_ok = False
            report.problems.append(str(forged))
            report.refused = True
        except CorruptCacheError as damage:
            report.snapshot_ok = False
            report.problems.append(f"the snapshot {path} is damaged: {damage}")
            if fix and self._quarantine(name, path, info, damage, locked=False) is None:
                report.fixed.append("kept the damaged snapshot aside")
        return None

    # -- delete -------------------------------------------------------------------

    def delete(self, name: str) -> None:
        """Remove the snapshot, journal and metadata of ``name``, if any (under the write lock)."""
        path = self.path_for(name)
        self._known_ends.pop(name, None)
        if not path.parent.is_dir():
            return
        with _locked(path):
            # The journal first: a reader never finds a journal without its snapshot.
            for each in (self.journal_path(name), path, self._meta_path(name)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(each)

    def exists(self, name: str) -> bool:
        """Tell whether a snapshot or a journal of ``name`` exists."""
        return self.path_for(name).exists() or self.journal_path(name).exists()

    def names(self) -> list[str]:
        """The names of the caches with a snapshot, a journal or metadata here, sorted."""
        try:
            entries = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        found = set()
        for entry in entries:
            for suffix in self._suffixes:
                if entry.endswith(suffix) and not entry.startswith(".") and entry != suffix:
                    found.add(entry[: -len(suffix)])
        return sorted(found)

    def usage(self, name: str) -> StoreUsage:
        """The bytes of every file kept for ``name`` and the newest modification time of any.

        ``modified`` is None when no file is kept.  Costs one ``stat`` per file kind.
        """
        size = 0
        newest: float | None = None
        for suffix in self._suffixes:
            try:
                info = os.stat(self.directory / (validate_cache_name(name) + suffix))
            except FileNotFoundError:
                continue
            size += info.st_size
            newest = info.st_mtime if newest is None else max(newest, info.st_mtime)
        return StoreUsage(size, newest)

    # -- metadata: small JSON files, never unpickled --------------------------------

    meta_suffix = ".meta.json"

    @property
    def _suffixes(self) -> tuple[str, ...]:
        return (self.suffix, self.meta_suffix, self.journal_suffix)

    def _meta_path(self, name: str) -> Path:
        return self.directory / (validate_cache_name(name) + self.meta_suffix)

    def read_meta(self, name: str) -> dict[str, Any] | None:
        """The metadata of ``name`` (generation, parents, save time...), or None.

        Metadata is JSON, so reading it never runs code; a damaged file reads
        as None with a warning (its only use is to notice stale caches, and a
        missing generation makes a derived cache rebuild, the safe side).
        """
        return _read_json(self._meta_path(name), f"cache {name!r}: metadata")

    def update_meta(self, name: str, **fields: Any) -> dict[str, Any]:
        """Set metadata fields of ``name`` (a field given as None is removed); return the result.

        The read-modify-write holds the store's lock for ``name``, so two
        processes updating different fields both keep theirs.
        """
        path = self._meta_path(name)
        ensure_private_directory(self.directory)
        with _locked(path):
            meta = self.read_meta(name) or {}
            old = meta.get("generation")
            for field, value in fields.items():
                if value is None:
                    meta.pop(field, None)
                else:
                    meta[field] = value
            _write_json(path, meta)
            generation = meta.get("generation")
            if isinstance(generation, str) and generation != old:
                # Under the lock: events of one cache reach the log in the order written.
                self._events.publish(name, generation)
        return meta

    # -- invalidation events (see cacheman._stores.file_events) ------------------------------

    def subscribe(
        self, callback: Callable[[str | None, str | None], object], *, wait: float = 5.0
    ) -> None:
        """Call ``callback(name, generation)`` when another process gives a cache a new generation.

        Within :data:`~cacheman._stores.file_events.WATCH_INTERVAL` seconds, on the
        process's watcher thread; ``(None, None)`` when events may have been missed.
        (``wait`` is the Redis store's: here the subscription is in place at once.)
        """
        self._events.subscribe(callback)

    def unsubscribe(self, callback: Callable[[str | None, str | None], object]) -> None:
        """Stop calling ``callback``."""
        self._events.unsubscribe(callback)

    def wrote_generation(self, name: str, generation: str | None) -> bool:
        """Whether this process itself lately gave ``name`` the generation ``generation``."""
        return self._events.wrote_generation(name, generation)

    # -- the dependency edges declared by any process ---------------------------------

    edges_file = "_dependencies.json"

    def read_edges(self) -> list[Edge]:
        """Every persisted dependency edge ``(parent, child)``, in the order first declared."""
        path = self.directory / self.edges_file
        data = _read_json(path, "the dependency edges")
        edges = [] if data is None else data.get("edges", [])
        if not _is_edge_list(edges):
            # Valid JSON of another shape is damage too: ignored like broken JSON,
            # and replaced by the next edge declared.
            logger.warning(
                "the dependency edges in %s are not a list of [parent, child] cache names; "
                "ignoring them",
                path,
            )
            return []
        return [(parent, child) for parent, child in edges]

    def add_edges(self, edges: Iterable[Edge]) -> None:
        """Persist ``edges`` as well (edges already there are kept once)."""
        wanted = list(dict.fromkeys(edges))  # an edge given twice in one call is kept once too
        self._rewrite_edges(lambda known: known + [e for e in wanted if e not in known])

    def remove_edges(self, name: str) -> None:
        """Forget every persisted edge that touches ``name``."""
        self._rewrite_edges(lambda known: [e for e in known if name not in e])

    def _rewrite_edges(self, change: Callable[[list[Edge]], list[Edge]]) -> None:
        path = self.directory / self.edges_file
        ensure_private_directory(self.directory)
        with _locked(path):
            known = self.read_edges()
            wanted = change(list(known))
            if wanted != known:
                _write_json(path, {"edges": [list(edge) for edge in wanted]})


def _open_checked(path: Path, what: str) -> tuple[IO[bytes], os.stat_result] | None:
    """Open ``path`` for reading if it is a regular file only we can write; None if missing.

    Raises :class:`~cacheman.errors.InsecureCacheError` (nothing left open) for
    anything else: see :func:`open_regular`.
    """
    try:
        fd, info = open_regular(path, os.O_RDONLY, what)
    except FileNotFoundError:
        return None
    return os.fdopen(fd, "rb"), info


def open_regular(
    path: Path, flags: int, what: str, *, private: bool = True
) -> tuple[int, os.stat_result]:
    """``os.open(path, flags)`` for a file of ours: a private regular file, never a hang.

    Returns the descriptor and its ``fstat``.  Raises ``FileNotFoundError`` if
    ``path`` is missing, and :class:`~cacheman.errors.InsecureCacheError`
    (nothing left open) for a FIFO, socket, device or directory, or (unless
    ``private`` is false: a file that is never unpickled) a file another user
    could have written.  A FIFO would block the open (or a read)
    until some other program writes to it, and a device could hand out endless
    bytes, so the path is checked before it is opened (opening some devices
    has effects), and the open file again, with ``fstat``, since the path may
    change in between.  ``O_NONBLOCK`` keeps even that open from waiting; it
    stays set, as it has no effect on a regular file (two system calls saved on
    every journal append).
    """
    _check_regular(path, os.stat(path), what)
    fd = os.open(path, flags | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        _check_regular(path, info, what)
        if private:
            check_private(path, info, what)
    except BaseException:
        os.close(fd)
        raise
    return fd, info


def _check_regular(path: Path, info: os.stat_result, what: str) -> None:
    """Raise :class:`~cacheman.errors.InsecureCacheError` unless ``info`` is a regular file's."""
    if stat.S_ISREG(info.st_mode):
        return
    kind = next((name for test, name in _FILE_KINDS if test(info.st_mode)), "of another kind")
    raise InsecureCacheError(
        f"refusing to use {what} {str(path)!r}: it is {kind}, not a regular file "
        "(CacheMan only reads and writes regular files: reading a pipe or device could "
        "wait forever, or never end); remove it, and find out what put it there"
    )


_FILE_KINDS: tuple[tuple[Callable[[int], bool], str], ...] = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a directory"),
)


def _read_json(path: Path, what: str) -> dict[str, Any] | None:
    """Read a small JSON object we wrote; None if missing, a warning if damaged."""
    opened = _open_checked(path, "cache file")
    if opened is None:
        return None
    handle = opened[0]
    try:
        with handle:
            data = json.loads(handle.read())
    except ValueError as error:
        logger.warning("%s in %s is damaged (%s); ignoring it", what, path, error)
        return None
    if not isinstance(data, dict):
        logger.warning("%s in %s is not a JSON object; ignoring it", what, path)
        return None
    return data


def _is_edge_list(edges: object) -> bool:
    """Whether ``edges`` (read from JSON) is a list of ``[parent, child]`` valid cache names."""
    if not isinstance(edges, list):
        return False
    for edge in edges:
        if not (isinstance(edge, list) and len(edge) == 2):
            return False
        for name in edge:
            try:
                validate_cache_name(name)
            except ValueError:
                return False
    return True


_BINDING = b"cacheman pickle store: manager, cache\0"
_NAME_LENGTH = struct.Struct("<I")


def cache_signing_key(signing_key: bytes, manager: str, name: str) -> bytes:
    """The key that signs the snapshot and journal of one cache: ``signing_key`` bound to names.

    An HMAC-SHA256, under ``signing_key``, of the manager's and the cache's
    names (each length-prefixed, so no two pairs of names give the same
    input).  A file signed for one cache thus fails the check of any other,
    in this manager or another one, while every cache still needs only the one
    secret.  (A Redis store binds the same names through its key names.)
    """
    message = bytearray(_BINDING)
    for part in (manager, name):
        encoded = os.fsencode(part)
        message += _NAME_LENGTH.pack(len(encoded)) + encoded
    return hmac.new(signing_key, bytes(message), sha256).digest()


def _snapshot_mac(key: bytes, payload: memoryview, fields: bytes) -> bytes:
    mac = hmac.new(key, payload, sha256)
    mac.update(fields)
    return mac.digest()


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as ``path``, atomically (the caller holds the lock of ``path``)."""
    text = json.dumps(data, sort_keys=True).encode()
    replace_file(path, lambda handle: handle.write(text))


class StoreUsage(NamedTuple):
    """What :meth:`PickleStore.usage` returns: bytes on disk, newest modification time."""

    size: int
    modified: float | None


class _Replaced:
    """Marker: the file changed while a load was deciding it was damaged."""


_REPLACED = _Replaced()


class _Snapshot(NamedTuple):
    """A snapshot as read: contents (None if there is none), its journal id, its file."""

    contents: dict[Any, Any] | None
    journal_id: bytes | None
    identity: tuple[int, int] | None


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return info.st_dev, info.st_ino


def _split_snapshot(data: bytes) -> tuple[struct.Struct, memoryview, bytes | None]:
    """The header layout of a snapshot with the magic, its payload and its journal id."""
    version = struct.unpack_from("<H", data, 8)[0] if len(data) >= 10 else None
    if version == 1:
        fields = _FIELDS_V1
    elif version == FORMAT_VERSION or version is None:
        fields = _FIELDS
    else:
        raise CorruptCacheError(
            f"its format version {version} is not one this CacheMan reads "
            f"({FORMAT_VERSION}); a newer CacheMan may have written it"
        )
    header_size = fields.size + _TRAILER.size
    if len(data) < header_size:
        raise CorruptCacheError(f"it is truncated inside its header ({len(data)} bytes)")
    journal_id = fields.unpack_from(data)[4] if fields is _FIELDS else None
    return fields, memoryview(data)[header_size:], journal_id


def _snapshot_journal_id(path: Path) -> bytes | None:
    """The journal id a snapshot names (None if there is none, or it is older or unreadable).

    Read without checking the snapshot's checksum: a damaged snapshot is the
    load's business, and at worst a journal is started that the load sets aside.
    """
    opened = _open_checked(path, "cache file")
    if opened is None:
        return None
    with opened[0] as handle:
        head = handle.read(HEADER_SIZE)
    if not head.startswith(MAGIC):
        return None
    try:
        return _split_snapshot(head)[2]
    except CorruptCacheError:
        return None


def _decode_header_or_none(data: bytes) -> Header | None:
    try:
        return decode_header(data)
    except ValueError:
        return None


def _mixed_signing(name: str, journal: Path, signed: bool) -> str:
    how = "signed, and this store has no signing key" if signed else "not signed"
    return (
        f"cache {name!r}: the journal {journal} is {how}; nothing was unpickled. Use the "
        "same signing key in every process, or save the cache once with the key you "
        "mean to use (a save starts a new journal)."
    )


def _pickled(name: str, changes: list[Change]) -> bytes:
    """The pickle of a journal record's changes (cloudpickle's when pickle refuses a value)."""
    try:
        return pickle.dumps(changes, PICKLE_PROTOCOL)
    except _REFUSED_BY_PICKLE:
        pass
    try:
        return bytes(_cloudpickle().dumps(changes, PICKLE_PROTOCOL))
    except Exception as error:
        items = {key: value for _op, key, value in changes}
        raise UnpicklableValueError(_describe_unpicklable(name, items)) from error


def keep_aside(path: Path) -> Path | None:
    """Move a damaged file of ours aside as ``<file>.corrupt-<UTC time>``; return where.

    None if the file is not there (any more).  Under the file's write lock, so a
    writer never has its new file moved aside.
    """
    with _locked(path):
        if not path.exists():
            return None
        kept = _free_corrupt_name(path)
        os.rename(path, kept)
        _fsync_directory(path.parent)
    return kept


def _free_corrupt_name(path: Path) -> Path:
    """``<file>.corrupt-<UTC time>``, with a counter if two damages share a microsecond."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    candidate = path.with_name(f"{path.name}.corrupt-{stamp}")
    counter = 1
    while candidate.exists():
        candidate = path.with_name(f"{path.name}.corrupt-{stamp}-{counter}")
        counter += 1
    return candidate
