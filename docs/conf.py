"""Sphinx configuration for the CacheMan documentation."""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
# Build from this checkout even when the package is not installed.
sys.path.insert(0, str(_HERE.parent))

import cacheman  # noqa: E402

project = "CacheMan"
author = "The CacheMan authors"
copyright = "The CacheMan authors"
release = cacheman.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
    "sphinx.ext.viewcode",
]

exclude_patterns = ["_build"]
root_doc = "index"

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}

# Only the docs extra (sphinx) is needed: alabaster ships with Sphinx.
html_theme = "alabaster"
html_title = f"CacheMan {release}"
# docs/_static belongs to the pages that add pictures; list it only when present,
# since a missing static directory is a warning and the build treats warnings as errors.
html_static_path = ["_static"] if (_HERE / "_static").is_dir() else []
