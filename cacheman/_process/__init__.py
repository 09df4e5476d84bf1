"""The process around the caches: signals and exit, the background thread, forked saves."""
