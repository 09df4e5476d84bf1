"""The persistent cache's parts: bounds and expiry, the lineage decision."""
