"""Parts of ``manager.memoize``: what a function depends on, and one computation per key.

:mod:`~cacheman._memo.fingerprint` walks a function's code to the helpers,
classes and constants it reaches; :mod:`~cacheman._memo.leases` lets one
process compute a key while the others wait for its result.
"""
