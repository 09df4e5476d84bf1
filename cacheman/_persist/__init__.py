"""The persistent cache's parts.

What it changed (:mod:`~cacheman._persist.changes`), what a save writes
(:mod:`~cacheman._persist.saveplan`), whether a derived cache is fresh, stale or
rebuilt elsewhere (:mod:`~cacheman._persist.lineage`), bounds and expiry
(:mod:`~cacheman._persist.bounds`).
"""
