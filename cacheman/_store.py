"""The default pickle store: one ``<name>.pkl`` file per cache, private and crash-safe.

File format (version 1), all integers little-endian::

    offset size  field
    0      8     magic b"CACHEMAN"
    8      2     format version (1)
    10     2     flags: 1 = signed (HMAC-SHA256), 2 = written by cloudpickle
    12     8     payload length in bytes
    20     4     CRC-32 of the payload, then of bytes 0-19
    24     32    HMAC-SHA256 of the payload, then of bytes 0-19 (zeros if unsigned)
    56     ...   the payload: a pickle (protocol 5) of a plain dict

A file that does not start with the magic is a bare pickle written by CacheMan
2.x and still loads (unless a signing key is set: it carries no signature).

Durability rests on one ordering, kept by :func:`atomic_write`: the new bytes
go to a temporary file in the same directory, are fsynced, and only then
renamed over the old file, after which the directory is fsynced so the rename
itself survives a power cut.  A reader therefore sees the old file or the new
one, never a mix, and needs no lock.  Writers take an ``flock`` on a lock file
beside the cache file, so two processes never interleave; the kernel drops the
lock when its holder dies, so a killed writer never leaves a stale lock behind.
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
import struct
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from hashlib import sha256
from pathlib import Path
from typing import IO, Any

from ._paths import check_private, validate_cache_name
from ._store_api import Edge
from .errors import CorruptCacheError, SignatureMismatchError, UnpicklableValueError

__all__ = [
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "MAGIC",
    "SIGNING_KEY_ENV",
    "PickleStore",
    "atomic_write",
    "resolve_signing_key",
]

logger = logging.getLogger("cacheman")

PICKLE_PROTOCOL = 5
MAGIC = b"CACHEMAN"
FORMAT_VERSION = 1
SIGNING_KEY_ENV = "CACHEMAN_SIGNING_KEY"

_FLAG_SIGNED = 1
_FLAG_CLOUDPICKLE = 2
# The fields the checksum and the signature cover, then the two of them.
_FIELDS = struct.Struct("<8sHHQ")
_HEADER = struct.Struct("<8sHHQI32s")
HEADER_SIZE = _HEADER.size
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
    directory.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
    check_private(directory, os.stat(directory), "cache directory")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold the inter-process write lock of ``path`` (``flock`` on ``.<file name>.lock``).

    The lock file is never deleted: removing it while another process waits on
    it would let a third process lock a new file of the same name.  The explicit
    unlock matters in a process that forks while holding the lock: the child's
    inherited descriptor would otherwise keep the lock until the child exits.
    """
    lock_path = path.with_name(f".{path.name}.lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _FILE_MODE)
    try:
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
    """Saves and loads whole caches as pickle files in one private directory.

    With a ``signing_key`` every file is signed, and a file whose signature is
    missing or wrong is refused before anything in it is unpickled.
    """

    suffix = ".pkl"

    def __init__(self, directory: Path, *, signing_key: bytes | None = None) -> None:
        self.directory = directory
        self.signing_key = signing_key

    def __repr__(self) -> str:
        signed = ", signed" if self.signing_key else ""
        return f"{type(self).__name__}({str(self.directory)!r}{signed})"

    def path_for(self, name: str) -> Path:
        """Return the file that holds cache ``name``; the name can never leave the directory."""
        return self.directory / (validate_cache_name(name) + self.suffix)

    # -- save -------------------------------------------------------------------

    def save(self, name: str, contents: Mapping[Any, Any]) -> None:
        """Write ``contents`` as the saved copy of ``name``, atomically.

        Costs one pickling pass, one fsync of the file and one of the directory.
        Values the standard pickler refuses are written by cloudpickle instead.
        Raises :class:`~cacheman.errors.UnpicklableValueError` (a ``TypeError``)
        if neither can, and :class:`~cacheman.errors.InsecureCacheError` if the
        directory is not private; either way the saved copy is left unchanged.
        """
        path = self.path_for(name)
        plain = contents if _pickles_as_plain_dict(contents) else dict(contents)
        atomic_write(path, lambda handle: self._write_file(name, plain, handle))

    def _write_file(self, name: str, contents: Mapping[Any, Any], handle: IO[bytes]) -> None:
        # The header is written last, once the length and checksums are known;
        # streaming the pickle keeps a large cache from existing twice in memory.
        handle.write(bytes(HEADER_SIZE))
        flags = 0
        writer = self._writer(handle)
        try:
            pickle.dump(contents, writer, PICKLE_PROTOCOL)
        except _REFUSED_BY_PICKLE:
            handle.seek(HEADER_SIZE)
            handle.truncate()
            flags |= _FLAG_CLOUDPICKLE
            writer = self._writer(handle)
            try:
                _cloudpickle().dump(contents, writer, PICKLE_PROTOCOL)
            except Exception as error:
                raise UnpicklableValueError(_describe_unpicklable(name, contents)) from error
        if writer.mac is not None:
            flags |= _FLAG_SIGNED
        fields = _FIELDS.pack(MAGIC, FORMAT_VERSION, flags, writer.length)
        crc = zlib.crc32(fields, writer.crc)
        signature = _NO_SIGNATURE
        if writer.mac is not None:
            writer.mac.update(fields)
            signature = writer.mac.digest()
        handle.seek(0)
        handle.write(_HEADER.pack(MAGIC, FORMAT_VERSION, flags, writer.length, crc, signature))

    def _writer(self, handle: IO[bytes]) -> _DigestingWriter:
        mac = None if self.signing_key is None else hmac.new(self.signing_key, digestmod=sha256)
        return _DigestingWriter(handle, mac)

    # -- load -------------------------------------------------------------------

    def load(self, name: str) -> dict[Any, Any] | None:
        """Return the saved contents of ``name``, or ``None`` if nothing usable is saved.

        A damaged file (empty, truncated, failing its checksum, not unpickling,
        not a mapping) is moved aside as ``<name>.pkl.corrupt-<time>``, a warning
        names it, and ``None`` is returned so that the cache is rebuilt.

        Raises :class:`~cacheman.errors.InsecureCacheError` if the directory or
        file could have been written by another user, and
        :class:`~cacheman.errors.SignatureMismatchError` if a signing key is set
        and the file's signature is missing or wrong.  Those files are refused,
        not rebuilt over: they may be an attack, and the user must look.
        """
        path = self.path_for(name)
        # A writer may replace the file between our read and our quarantine; the
        # quarantine notices and we read again.  Three rounds are plenty: each
        # retry means a complete, checked file was just written.
        for _ in range(3):
            outcome = self._load_once(name, path)
            if not isinstance(outcome, _Replaced):
                return outcome
        raise CorruptCacheError(
            f"cache {name!r}: {path} kept changing while it was read; try again"
        )

    def _load_once(self, name: str, path: Path) -> dict[Any, Any] | _Replaced | None:
        try:
            directory_info = os.stat(path.parent)
        except FileNotFoundError:
            return None
        check_private(path.parent, directory_info, "cache directory")
        try:
            handle = open(path, "rb")  # noqa: SIM115 (held open across the quarantine)
        except FileNotFoundError:
            return None
        with handle:
            # fstat, not stat: the checked file is the one read, whatever is renamed meanwhile.
            info = os.fstat(handle.fileno())
            check_private(path, info, "cache file")
            data = handle.read()
            try:
                return self._decode(name, path, data)
            except CorruptCacheError as damage:
                return self._quarantine(name, path, info, damage)

    def _decode(self, name: str, path: Path, data: bytes) -> dict[Any, Any]:
        """Check and unpickle a whole file's bytes; raise CorruptCacheError if damaged."""
        if not data:
            raise CorruptCacheError("it is empty")
        if data.startswith(MAGIC):
            payload = self._checked_payload(name, path, data)
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
        return loaded if type(loaded) is dict else dict(loaded)

    def _checked_payload(self, name: str, path: Path, data: bytes) -> memoryview:
        if len(data) < HEADER_SIZE:
            raise CorruptCacheError(f"it is truncated inside its header ({len(data)} bytes)")
        _magic, version, flags, length, crc, signature = _HEADER.unpack_from(data)
        if version != FORMAT_VERSION:
            raise CorruptCacheError(
                f"its format version {version} is not one this CacheMan reads "
                f"({FORMAT_VERSION}); a newer CacheMan may have written it"
            )
        payload = memoryview(data)[HEADER_SIZE:]
        if len(payload) != length:
            raise CorruptCacheError(
                f"it is truncated or padded: the header announces {length} bytes of "
                f"pickle, the file holds {len(payload)}"
            )
        fields = data[: _FIELDS.size]
        if zlib.crc32(fields, zlib.crc32(payload)) != crc:
            raise CorruptCacheError("its checksum does not match its contents")
        if self.signing_key is not None:
            self._check_signature(name, path, flags, signature, payload, fields)
        return payload

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
        mac = hmac.new(self.signing_key, payload, sha256)
        mac.update(fields)
        if not hmac.compare_digest(mac.digest(), signature):
            raise SignatureMismatchError(
                f"cache {name!r}: the signature of {path} does not match its contents "
                "(tampered with, or signed with another key); nothing was unpickled. "
                "If you changed the key, delete the file; otherwise find out who wrote it."
            )

    def _quarantine(
        self, name: str, path: Path, opened: os.stat_result, damage: CorruptCacheError
    ) -> _Replaced | None:
        """Move the damaged file aside, unless a writer has replaced it since we opened it.

        The caller still holds the damaged file open, so its inode number cannot
        be reused by a new file while we compare.
        """
        with _locked(path):
            try:
                current = os.stat(path)
            except FileNotFoundError:
                return _REPLACED
            if (current.st_dev, current.st_ino) != (opened.st_dev, opened.st_ino):
                return _REPLACED
            kept = _free_corrupt_name(path)
            os.rename(path, kept)
            _fsync_directory(path.parent)
        logger.warning(
            "cache %r: the saved file %s is damaged (%s); it was kept as %s and the "
            "cache will be rebuilt",
            name,
            path,
            damage,
            kept,
        )
        return None

    # -- delete -------------------------------------------------------------------

    def delete(self, name: str) -> None:
        """Remove the saved copy of ``name`` and its metadata, if any (under the write lock)."""
        path = self.path_for(name)
        if not path.parent.is_dir():
            return
        with _locked(path):
            for each in (path, self._meta_path(name)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(each)

    def exists(self, name: str) -> bool:
        """Tell whether a saved copy of ``name`` exists."""
        return self.path_for(name).exists()

    def names(self) -> list[str]:
        """The names of the caches with a saved copy or metadata here, sorted."""
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

    # -- metadata: small JSON files, never unpickled --------------------------------

    meta_suffix = ".meta.json"

    @property
    def _suffixes(self) -> tuple[str, ...]:
        return (self.suffix, self.meta_suffix)

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
            for field, value in fields.items():
                if value is None:
                    meta.pop(field, None)
                else:
                    meta[field] = value
            _write_json(path, meta)
        return meta

    # -- the dependency edges declared by any process ---------------------------------

    edges_file = "_dependencies.json"

    def read_edges(self) -> list[Edge]:
        """Every persisted dependency edge ``(parent, child)``, in the order first declared."""
        data = _read_json(self.directory / self.edges_file, "the dependency edges")
        edges = [] if data is None else data.get("edges", [])
        return [(str(parent), str(child)) for parent, child in edges]

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


def _read_json(path: Path, what: str) -> dict[str, Any] | None:
    """Read a small JSON object we wrote; None if missing, a warning if damaged."""
    try:
        with open(path, "rb") as handle:
            check_private(path, os.fstat(handle.fileno()), "cache file")
            data = json.loads(handle.read())
    except FileNotFoundError:
        return None
    except ValueError as error:
        logger.warning("%s in %s is damaged (%s); ignoring it", what, path, error)
        return None
    if not isinstance(data, dict):
        logger.warning("%s in %s is not a JSON object; ignoring it", what, path)
        return None
    return data


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as ``path``, atomically (the caller holds the lock of ``path``)."""
    text = json.dumps(data, sort_keys=True).encode()
    replace_file(path, lambda handle: handle.write(text))


class _Replaced:
    """Marker: the file changed while a load was deciding it was damaged."""


_REPLACED = _Replaced()


def _free_corrupt_name(path: Path) -> Path:
    """``<file>.corrupt-<UTC time>``, with a counter if two damages share a microsecond."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    candidate = path.with_name(f"{path.name}.corrupt-{stamp}")
    counter = 1
    while candidate.exists():
        candidate = path.with_name(f"{path.name}.corrupt-{stamp}-{counter}")
        counter += 1
    return candidate
