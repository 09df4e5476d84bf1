"""Stable digests for memoize: the key of a call, and the encoding fingerprints use.

A memoized result is found again in a later run, or by another process, only if
its key is the same there, so nothing here uses ``hash()`` (salted per process
for ``str`` and ``bytes``) or the iteration order of a set or a dict (which
follows those salted hashes).  Every value becomes bytes that depend only on
the value and its type, and the bytes are hashed with BLAKE2b.

Two encodings, told apart by the hash's ``person`` parameter so they can never
produce the same digest:

* the fast one, for calls whose arguments are all ``str``, ``int``, ``float``,
  ``bool``, ``bytes``, ``None`` or tuples of those: the argument tuple in
  ``marshal`` format version 2, which tags each value with its type (so ``1``,
  ``1.0`` and ``True`` differ) and writes it by value, in C;
* the general one (:func:`encode`), a tagged, length-prefixed walk of the value
  that sorts the members of sets and the items of dicts by their own encoding,
  reads numpy arrays as dtype, shape and raw bytes, and pickles what it does
  not know.
"""

from __future__ import annotations

import dataclasses
import hashlib
import marshal
import pickle
import sys
from typing import Any

__all__ = ["DIGEST_SIZE", "args_digest", "encode", "value_digest"]

#: Bytes in a key digest: 128 bits, so a collision is out of reach for any cache size.
DIGEST_SIZE = 16

# Version 2 of marshal writes every str, int, float, bool, bytes, None and tuple
# by value alone: unlike later versions it has no back-references (which would
# make ("ab", "ab") encode differently when both are one object) and no
# "interned" flag on str.
_MARSHAL_VERSION = 2
_FAST = hashlib.blake2b(digest_size=DIGEST_SIZE, person=b"fast")
_SCALARS = frozenset({str, int, float, bool, bytes, type(None)})


def _plain(values: tuple[Any, ...]) -> bool:
    """Whether every member is a scalar of :data:`_SCALARS` or a tuple of such (recursively)."""
    for value in values:
        kind = type(value)
        if kind not in _SCALARS and not (kind is tuple and _plain(value)):
            return False
    return True


def args_digest(values: tuple[Any, ...]) -> bytes:
    """The digest of a call's argument values (already put in parameter order).

    This is the hot path of every memoized call: for plain values it costs a
    ``marshal.dumps`` and one hash, and never pickles.
    """
    for value in values:  # _plain(values), inlined: this runs on every call
        kind = type(value)
        if kind not in _SCALARS and not (kind is tuple and _plain(value)):
            return value_digest(values)
    hasher = _FAST.copy()  # cheaper than building one with its parameters
    hasher.update(marshal.dumps(values, _MARSHAL_VERSION))
    return hasher.digest()


def value_digest(value: object) -> bytes:
    """The digest of any value through the general encoding (:func:`encode`)."""
    parts: list[bytes] = []
    encode(value, parts)
    return hashlib.blake2b(b"".join(parts), digest_size=DIGEST_SIZE, person=b"tree").digest()


def _atom(tag: bytes, payload: bytes) -> bytes:
    # The length prefix keeps ("ab", "c") and ("a", "bc") apart.
    return tag + len(payload).to_bytes(8, "big") + payload


def _encoded(value: object) -> bytes:
    parts: list[bytes] = []
    encode(value, parts)
    return b"".join(parts)


def encode(value: Any, out: list[bytes]) -> None:
    """Append to ``out`` bytes that stand for ``value`` and its type, equal in every process.

    Tuples and lists keep their order; sets and dicts do not (their members are
    sorted by their own encoding).  An object of another type is pickled, which
    is stable for the usual value types; one that cannot be pickled raises
    ``TypeError``.
    """
    kind = type(value)
    scalar = _scalar(value, kind)
    if scalar is not None:
        out.append(scalar)
    elif kind is tuple or kind is list:
        out.append((b"t" if kind is tuple else b"l") + len(value).to_bytes(8, "big"))
        for member in value:
            encode(member, out)
    elif kind is set or kind is frozenset:
        members = sorted(map(_encoded, value))
        out.append((b"e" if kind is set else b"E") + len(members).to_bytes(8, "big"))
        out.extend(members)
    elif isinstance(value, dict):
        items = sorted(((_encoded(k), v) for k, v in value.items()), key=lambda item: item[0])
        name = b"" if kind is dict else _type_name(kind)
        out.append(_atom(b"d", name) + len(items).to_bytes(8, "big"))
        for encoded_key, member in items:
            out.append(encoded_key)
            encode(member, out)
    elif kind.__module__ == "numpy" and _encode_numpy(value, out):
        pass
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = dataclasses.fields(value)
        out.append(_atom(b"c", _type_name(kind)) + len(fields).to_bytes(8, "big"))
        for field in fields:
            out.append(_atom(b"s", field.name.encode()))
            encode(getattr(value, field.name), out)
    else:
        out.append(_atom(b"p", _type_name(kind)) + _atom(b"", _pickled(value)))


def _scalar(value: Any, kind: type) -> bytes | None:
    """The encoding of a str, int, bool, float, bytes, bytearray or None; None for other types."""
    if kind is str:
        return _atom(b"s", value.encode("utf-8", "surrogatepass"))
    if kind is int or kind is bool:
        tag = b"b" if kind is bool else b"i"
        return _atom(tag, value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True))
    if kind is float:
        return _atom(b"f", float.hex(value).encode())
    if value is None:
        return b"n"
    if kind is bytes or kind is bytearray:
        return _atom(b"y" if kind is bytes else b"Y", bytes(value))
    return None


def _type_name(kind: type) -> bytes:
    return f"{kind.__module__}.{kind.__qualname__}".encode()


def _pickled(value: object) -> bytes:
    try:
        return pickle.dumps(value, protocol=5)
    except Exception as error:
        raise TypeError(
            f"cannot make a memoize key from a {type(value).__name__}: it is not a type memoize "
            f"knows and it cannot be pickled ({error}); pass key= to say what identifies a call"
        ) from None


def _encode_numpy(value: object, out: list[bytes]) -> bool:
    """Encode a numpy array or scalar; False if ``value`` is another numpy type.

    numpy is imported already whenever one of its objects exists, so this
    never imports it.
    """
    numpy = sys.modules["numpy"]
    if isinstance(value, numpy.ndarray):
        header = f"{value.dtype.str}{value.shape}".encode()
        if value.dtype.hasobject:
            # The raw bytes of an object array are pointers: encode the objects.
            out.append(_atom(b"O", header))
            encode(value.tolist(), out)
        else:
            out.append(_atom(b"a", header) + _atom(b"", numpy.ascontiguousarray(value).tobytes()))
        return True
    if isinstance(value, numpy.generic) and not value.dtype.hasobject:
        out.append(_atom(b"g", value.dtype.str.encode()) + _atom(b"", value.tobytes()))
        return True
    return False
