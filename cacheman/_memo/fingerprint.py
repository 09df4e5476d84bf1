"""What a memoized function's results depend on: its code, the user code it reaches, constants.

A memoized result is stale when anything that shaped it changed.  This module
walks, from the memoized function, every function, method and class of *the
user's own code* that it can reach by name, and every module-level or class
constant read along the way, and gives each a short digest (a *part*).  The
fingerprint is the digest of all the parts; comparing the parts of two runs
names what changed.

What counts as reached, from a function's bytecode:

* a global name (``normalize(city)``, ``SCALE``) looked up in the function's
  module: a function is walked, a class walked whole (its methods and class
  attributes), a module noted, any other value read as a constant;
* an attribute name (``helpers.normalize``, ``Config.rate``, ``shape.area()``)
  looked up on every user module reached so far, and on every class defined
  in a user module reached so far (an attribute named like a method of such a
  class reaches that method: the call may go there);
* a name imported inside the function (``from .helpers import normalize``);
* closure cells and default arguments (by value, or walked if functions);
* the function behind a decorator (``__wrapped__``), a ``functools.partial``,
  a bound method, another memoized function.

User code is code whose file is not in the standard library, not in a
``site-packages``/``dist-packages`` directory and not CacheMan's own: code
installed from a package index is left out (its version is the package's
business), code of the user's project, editable installs included, is in.

Code is digested from a normalised instruction stream: opcodes and their
arguments, with constants and names by value and local variables by slot,
so line numbers, comments, docstrings, blank lines, moving code and renaming
locals leave it unchanged.

A constant is read *by value* when it is made of numbers, strings, bytes,
booleans, ``None``, enum members, and tuples, lists, dicts, sets and
frozensets of those (at most :data:`MAX_CONSTANT_ITEMS` items), and it is a
module-level name in UPPER_CASE (PEP 8's constants), a class attribute, or
an immutable closure cell or default argument.  Any other value counts by its
type only (its class is walked if it is the user's), so a value that differs
from run to run (a process id or start time computed at import, a
connection, an accumulator list) does not reset the results at every run.

Not tracked (stated in the docs): calls through names built at run time
(``getattr(obj, name)``), dispatch to methods of classes outside the modules
reached, and data read from files or other stores (use ``depends_on`` or
``version=``).
"""

from __future__ import annotations

import dis
import enum
import functools
import hashlib
import os
import site
import sys
import sysconfig
import types
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from .keys import encode

__all__ = [
    "MAX_CONSTANT_ITEMS",
    "describe_changes",
    "fingerprint_parts",
    "function_behind",
    "is_user_file",
]

#: Containers with more items than this count by type and length, not by value
#: (reading a large table by value would cost more than the function's first call).
MAX_CONSTANT_ITEMS = 10_000

_HASCONST = frozenset(dis.hasconst)
_HASNAME = frozenset(dis.hasname)
_CACHE = dis.opmap.get("CACHE", -1)
_EXTENDED_ARG = dis.opmap["EXTENDED_ARG"]
_LOAD_GLOBAL = dis.opmap["LOAD_GLOBAL"]
_LOAD_ATTR = dis.opmap["LOAD_ATTR"]
_LOAD_SUPER_ATTR = dis.opmap.get("LOAD_SUPER_ATTR", -1)
_IMPORT_NAME = dis.opmap["IMPORT_NAME"]
_GLOBAL_OPS = frozenset({_LOAD_GLOBAL, dis.opmap["LOAD_NAME"]})
_ATTR_OPS = frozenset(
    dis.opmap[name]
    for name in ("LOAD_ATTR", "LOAD_METHOD", "LOAD_SUPER_ATTR", "IMPORT_FROM")
    if name in dis.opmap
)
# Where an instruction's argument holds flags in its low bits beside the name's index.
_NAME_SHIFT = {
    _LOAD_GLOBAL: 1 if sys.version_info >= (3, 11) else 0,
    _LOAD_ATTR: 1 if sys.version_info >= (3, 12) else 0,
    _LOAD_SUPER_ATTR: 2,
}
_SCALARS = (str, bytes, int, float, complex, bool, type(None))
_CONTAINERS = (tuple, list, set, frozenset, dict)
_MUTABLE = (list, set, dict)
# Class members that are bookkeeping, not behaviour.
_SKIPPED_MEMBERS = frozenset(
    {"__dict__", "__weakref__", "__module__", "__doc__", "__qualname__", "__slots__"}
)


class _CodeInfo(NamedTuple):
    """One code object, read once: its digest and the names it looks up."""

    digest: bytes
    globals: tuple[str, ...]
    attributes: tuple[str, ...]
    imports: tuple[tuple[str, int], ...]  # (module name, level) of each import statement


_code_infos: dict[types.CodeType, _CodeInfo] = {}


def _code_info(code: types.CodeType) -> _CodeInfo:
    info = _code_infos.get(code)
    if info is None:
        info = _code_infos[code] = _scan(code)
    return info


def _scan(code: types.CodeType) -> _CodeInfo:
    """Digest ``code``'s instructions (nested code included) and collect the names it reads."""
    parts: list[bytes] = []
    encode(
        (code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount, code.co_flags), parts
    )
    # dicts as ordered sets: the walk must visit names in the same order in every run.
    found_globals: dict[str, None] = {}
    found_attributes: dict[str, None] = {}
    imports: dict[tuple[str, int], None] = {}
    raw, names, consts = code.co_code, code.co_names, code.co_consts
    recent: list[object] = [None, None]  # the last two constants loaded (an import's level)
    extended = 0
    for index in range(0, len(raw), 2):
        op = raw[index]
        if op == _CACHE:
            continue
        arg = raw[index + 1] | extended
        if op == _EXTENDED_ARG:
            extended = arg << 8
            continue
        extended = 0
        if op in _HASCONST:
            const = consts[arg]
            parts.append(b"K%c" % op)
            if isinstance(const, types.CodeType):
                inner = _code_info(const)
                parts.append(inner.digest)
                found_globals.update(dict.fromkeys(inner.globals))
                found_attributes.update(dict.fromkeys(inner.attributes))
                imports.update(dict.fromkeys(inner.imports))
            else:
                encode(const, parts)
            recent = [recent[-1], const]
        elif op in _HASNAME:
            name = names[arg >> _NAME_SHIFT.get(op, 0)]
            parts.append(b"N%c%c" % (op, arg & 3))
            encode(name, parts)
            if op in _GLOBAL_OPS:
                found_globals[name] = None
            elif op in _ATTR_OPS:
                found_attributes[name] = None
            elif op == _IMPORT_NAME:
                level = recent[0]
                imports[(name, level if isinstance(level, int) else 0)] = None
                fromlist = recent[1]
                if isinstance(fromlist, tuple):
                    found_attributes.update(dict.fromkeys(fromlist))
        else:
            # Local variables by slot, jumps by offset: renaming or moving keeps these.
            parts.append(b"O%c" % op + arg.to_bytes(4, "big"))
    digest = hashlib.blake2b(b"".join(parts), digest_size=16).digest()
    return _CodeInfo(digest, tuple(found_globals), tuple(found_attributes), tuple(imports))


# -- what is the user's code -----------------------------------------------------------


def _excluded_directories() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    found = {paths.get(key) for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    try:
        found.update(site.getsitepackages())
        found.add(site.getusersitepackages())
    except AttributeError:  # a virtualenv's old site module lacks them
        pass
    found.add(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # cacheman itself
    return tuple(os.path.join(os.path.abspath(p), "") for p in found if p)


_EXCLUDED = _excluded_directories()


@functools.lru_cache(maxsize=4096)
def is_user_file(filename: str) -> bool:
    """Whether code from ``filename`` is the user's (not the standard library, a package, CacheMan).

    ``<string>``, ``<stdin>`` and notebook cells count as the user's; frozen
    standard modules do not.
    """
    if filename.startswith("<"):
        return not filename.startswith("<frozen")
    path = os.path.abspath(filename)
    parts = path.split(os.sep)
    if "site-packages" in parts or "dist-packages" in parts:
        return False
    return not path.startswith(_EXCLUDED)


def _is_user_module(module: types.ModuleType) -> bool:
    name = module.__name__
    if name in sys.builtin_module_names or name.partition(".")[0] in _stdlib_names():
        return False
    filename = getattr(module, "__file__", None)
    if filename is None:
        return False  # a namespace package or a built-in: no code of its own to read
    return is_user_file(filename)


def _stdlib_names() -> frozenset[str]:
    return getattr(sys, "stdlib_module_names", frozenset())


def _is_user_class(kind: type) -> bool:
    module = sys.modules.get(kind.__module__)
    return module is not None and _is_user_module(module)


# -- the walk --------------------------------------------------------------------------


def _digest(parts: list[bytes]) -> bytes:
    return hashlib.blake2b(b"".join(parts), digest_size=8).digest()


def _constant(value: object, budget: list[int]) -> bool:
    """Whether ``value`` is made only of scalars, enum members and plain containers of them."""
    kind = type(value)
    if kind in _SCALARS or isinstance(value, enum.Enum):
        return True
    if kind in _CONTAINERS:
        budget[0] -= len(value)  # type: ignore[arg-type]
        if budget[0] < 0:
            return False
        if isinstance(value, dict):
            return all(_constant(k, budget) and _constant(v, budget) for k, v in value.items())
        return all(_constant(member, budget) for member in value)  # type: ignore[attr-defined]
    return False


def _encode_constant(value: object, out: list[bytes]) -> None:
    if isinstance(value, enum.Enum):
        out.append(f"enum {type(value).__module__}.{type(value).__qualname__}".encode())
        encode(value.name, out)
        if _constant(value.value, [MAX_CONSTANT_ITEMS]) and not isinstance(value.value, enum.Enum):
            _encode_constant(value.value, out)
    elif isinstance(value, dict):
        out.append(b"D%d" % len(value))
        for key, member in sorted(value.items(), key=lambda item: repr(item[0])):
            _encode_constant(key, out)
            _encode_constant(member, out)
    elif type(value) in (tuple, list, set, frozenset):
        members = list(value)  # type: ignore[call-overload]
        if type(value) in (set, frozenset):
            members.sort(key=repr)
        out.append(b"%s%d" % (type(value).__name__.encode(), len(members)))
        for member in members:
            _encode_constant(member, out)
    else:
        encode(value, out)


class _Walker:
    """One walk from a function: the parts found, and what is left to match by name."""

    def __init__(self) -> None:
        self.parts: dict[str, bytes] = {}
        self.seen: set[int] = set()
        self.keep: list[object] = []  # keeps visited objects alive, so their ids stay theirs
        self.attributes: dict[str, None] = {}
        self.modules: list[types.ModuleType] = []
        self.indexed: set[str] = set()
        self.classes: set[type] = set()
        #: attribute name -> the members of the user's classes with that name
        self.members: dict[str, list[tuple[str, object]]] = {}

    def _first_visit(self, thing: object) -> bool:
        if id(thing) in self.seen:
            return False
        self.seen.add(id(thing))
        self.keep.append(thing)
        return True

    def _add(self, label: str, digest: bytes) -> None:
        unique, count = label, 1
        # Another digest under the label: two lambdas of one module share a qualname.
        while unique in self.parts:
            if self.parts[unique] == digest:
                return  # the same thing, read again by another path
            count += 1
            unique = f"{label} #{count}"
        self.parts[unique] = digest

    def reference(
        self, label: str, thing: object, *, mutable: bool = True, by_value: bool = True
    ) -> None:
        """Something the code reads by name: walk it if it is code, else read it as a constant.

        ``by_value=False`` (a module-level name not in UPPER_CASE) reads a
        value by its type only: such values are often computed as the program
        starts (a process id, a start time).  ``mutable=False`` (closure cells,
        default arguments) reads lists, dicts
        and sets by type only: there they are usually accumulators the program
        fills as it runs, not constants.
        """
        function = function_behind(thing)
        if function is not None:
            self.function(function)
        elif isinstance(thing, type):
            self.klass(thing)
        elif isinstance(thing, types.ModuleType):
            self.module(thing)
        elif isinstance(thing, (staticmethod, classmethod)):
            self.reference(label, thing.__func__)
        elif isinstance(thing, property):
            for accessor in (thing.fget, thing.fset, thing.fdel):
                if accessor is not None:
                    self.reference(label, accessor)
        else:
            self.value(label, thing, mutable=mutable, by_value=by_value)

    def function(self, function: types.FunctionType) -> None:
        if not self._first_visit(function):
            return
        code = function.__code__
        if not is_user_file(code.co_filename):
            return
        label = f"function {function.__module__}.{function.__qualname__}"
        info = _code_info(code)
        self._add(label, info.digest)
        wrapped = getattr(function, "__wrapped__", None)
        if wrapped is not None:  # a decorator of the user's own: both count
            self.reference(f"{label} wrapped", wrapped)
        for index, default in enumerate(function.__defaults__ or ()):
            self.reference(f"{label} default {index}", default, mutable=False)
        for name, default in sorted((function.__kwdefaults__ or {}).items()):
            self.reference(f"{label} default {name}", default, mutable=False)
        for name, cell in zip(code.co_freevars, function.__closure__ or (), strict=False):
            try:
                contents = cell.cell_contents
            except ValueError:  # a cell not filled yet
                continue
            self.reference(f"{label} cell {name}", contents, mutable=False)
        namespace = function.__globals__
        module_name = namespace.get("__name__", "?")
        self._index(sys.modules.get(module_name))
        for name in info.globals:
            if name in namespace:
                self._global(module_name, name, namespace[name])
        for target, level in info.imports:
            self._imported(target, level, namespace.get("__package__"))
        for name in info.attributes:
            self.attribute(name)

    def _imported(self, target: str, level: int, package: str | None) -> None:
        if level:
            base = (package or "").rsplit(".", level - 1)[0]
            target = f"{base}.{target}" if target else base
        module = sys.modules.get(target)
        if module is not None:
            self.module(module)

    def attribute(self, name: str) -> None:
        if name in self.attributes:
            return
        self.attributes[name] = None
        for module in self.modules:
            if name in vars(module):
                self._global(module.__name__, name, vars(module)[name])
        for label, member in self.members.get(name, ()):
            self.reference(label, member)

    def module(self, module: types.ModuleType) -> None:
        if not self._first_visit(module) or not _is_user_module(module):
            return
        self.modules.append(module)
        self._index(module)
        namespace = vars(module)
        for name in list(self.attributes):
            if name in namespace:
                self._global(module.__name__, name, namespace[name])

    def _index(self, module: types.ModuleType | None) -> None:
        """Note the members of the classes ``module`` defines, for attributes read on instances."""
        if module is None or module.__name__ in self.indexed or not _is_user_module(module):
            return
        self.indexed.add(module.__name__)
        new: list[tuple[str, str, object]] = []
        for kind in list(vars(module).values()):
            # Imported classes too: an instance of one may reach this module's code.
            if isinstance(kind, type) and kind not in self.classes and _is_user_class(kind):
                self.classes.add(kind)
                for name, member in vars(kind).items():
                    if name not in _SKIPPED_MEMBERS:
                        label = f"member {kind.__module__}.{kind.__qualname__}.{name}"
                        self.members.setdefault(name, []).append((label, member))
                        new.append((name, label, member))
        for name, label, member in new:
            if name in self.attributes:
                self.reference(label, member)

    def klass(self, kind: type) -> None:
        if not self._first_visit(kind) or not _is_user_class(kind):
            return
        self._add(f"class {kind.__module__}.{kind.__qualname__}", _digest([b"class"]))
        for base in kind.__mro__[1:]:
            self.klass(base)
        for name in sorted(vars(kind)):
            if name not in _SKIPPED_MEMBERS:
                label = f"member {kind.__module__}.{kind.__qualname__}.{name}"
                self.reference(label, vars(kind)[name])

    def _global(self, module: str, name: str, thing: object) -> None:
        # PEP 8 names constants in UPPER_CASE: those are read by value.
        self.reference(f"global {module}.{name}", thing, by_value=_constant_name(name))

    def value(
        self, label: str, value: object, *, mutable: bool = True, by_value: bool = True
    ) -> None:
        kind = type(value)
        out: list[bytes] = []
        if (
            by_value
            and (mutable or kind not in _MUTABLE)
            and _constant(value, [MAX_CONSTANT_ITEMS])
        ):
            _encode_constant(value, out)
            self._add(label, _digest(out))
            return
        # By type only: its state may differ from run to run.
        out.append(f"{kind.__module__}.{kind.__qualname__}".encode())
        self._add(label, _digest(out))
        if kind in _CONTAINERS and self._first_visit(value):
            # A dispatch table ({"csv": read_csv, ...}): walk the functions it holds.
            members: Iterable[object] = (
                value.values() if isinstance(value, dict) else value  # type: ignore[assignment]
            )
            for index, member in enumerate(members):
                if index >= MAX_CONSTANT_ITEMS:
                    break
                if function_behind(member) is not None or isinstance(member, type):
                    self.reference(f"{label}[{index}]", member)
        elif _is_user_class(kind):
            self.klass(kind)


def _constant_name(name: str) -> bool:
    """``SCALE``, ``MAX_ITEMS``, ``_RATE``: a name in UPPER_CASE, a constant by convention."""
    return name.upper() == name and name.lower() != name


def function_behind(thing: object) -> types.FunctionType | None:
    """The plain function ``thing`` runs: through decorators, partials, bound methods, memoize."""
    for _ in range(32):  # a cycle of __wrapped__ is the user's bug, not a reason to hang
        if isinstance(thing, types.FunctionType):
            wrapped = getattr(thing, "__wrapped__", None)
            if wrapped is not None and not is_user_file(thing.__code__.co_filename):
                thing = wrapped  # a library's decorator: what it wraps is the user's code
                continue
            return thing
        if isinstance(thing, types.MethodType):
            thing = thing.__func__
        elif isinstance(thing, functools.partial):
            thing = thing.func
        elif hasattr(thing, "__wrapped__") and not isinstance(thing, type):
            thing = thing.__wrapped__  # memoized functions, functools.wraps on callables
        else:
            return None
    return None


def fingerprint_parts(function: Callable[..., Any], *, follow: bool = True) -> dict[str, str]:
    """Each function, class member and constant ``function`` reaches, with its digest (hex).

    The keys name what each part is (``function pkg.mod.normalize``,
    ``global pkg.mod.SCALE``, ``function pkg.mod.f cell scale``); equal in
    every run whose code is equal.  ``follow=False``: the function's own code only.
    """
    walker = _Walker()
    root = function_behind(function)
    if root is None:
        raise TypeError(f"{function!r} has no Python code to fingerprint")
    if follow:
        walker.function(root)
    if not walker.parts:  # the function itself is outside the user's code: keep its code
        walker.parts[f"function {root.__module__}.{root.__qualname__}"] = _code_info(
            root.__code__
        ).digest
    return {label: digest.hex() for label, digest in walker.parts.items()}


def describe_changes(old: dict[str, str], new: dict[str, str], limit: int = 5) -> str:
    """What differs between two sets of parts, for a log message: ``function m.f changed, ...``."""
    changes = [f"{label} changed" for label in new if label in old and old[label] != new[label]]
    changes += [f"{label} is new" for label in new if label not in old]
    changes += [f"{label} is gone" for label in old if label not in new]
    if not changes:
        return "the fingerprint recipe changed"
    more = f" and {len(changes) - limit} more" if len(changes) > limit else ""
    return ", ".join(changes[:limit]) + more
