"""The persistent cache: what a save writes, lineage, changes."""
