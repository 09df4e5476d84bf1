"""The persistent cache's own parts: what it changed, and what a save writes."""
