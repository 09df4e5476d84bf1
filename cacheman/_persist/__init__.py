"""The persistent cache's parts: bounds and expiry (:mod:`cacheman._persist.bounds`)."""
