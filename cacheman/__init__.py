"""CacheMan: dict caches that persist between runs, with hooks and dependency invalidation."""

from ._process.lifecycle import disable_signal_handlers

# Always importable: redis-py itself is imported when a RedisStore is built.
from ._stores.redis import RedisStore
from .autosync import AutoSyncCache, TimeCount
from .cacher import CacheManager, get_cache_manager
from .cachewrap import CacheWrap, NonPersistentCache, PersistentCache
from .csvcache import AutoSyncCSVCache, CSVCache
from .errors import (
    CacheManError,
    CacheNotRegisteredError,
    CorruptCacheError,
    DependencyCycleError,
    InsecureCacheError,
    InvalidCacheNameError,
    ManagerClosedError,
    SignatureMismatchError,
    UnpicklableValueError,
)

__version__ = "3.0.0.dev0"

__all__ = [
    "AutoSyncCSVCache",
    "AutoSyncCache",
    "CSVCache",
    "CacheManError",
    "CacheManager",
    "CacheNotRegisteredError",
    "CacheWrap",
    "CorruptCacheError",
    "DependencyCycleError",
    "InsecureCacheError",
    "InvalidCacheNameError",
    "ManagerClosedError",
    "NonPersistentCache",
    "PersistentCache",
    "RedisStore",
    "SignatureMismatchError",
    "TimeCount",
    "UnpicklableValueError",
    "__version__",
    "disable_signal_handlers",
    "get_cache_manager",
]
