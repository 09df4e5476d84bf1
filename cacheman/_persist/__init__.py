"""The persistent cache's parts.

What it changed (:mod:`~cacheman._persist.changes`), what a save writes
(:mod:`~cacheman._persist.saveplan`), bounds and expiry (:mod:`~cacheman._persist.bounds`).
"""
