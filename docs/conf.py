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

# The pages' and docstrings' ``>>>`` examples are run by tests/test_docs.py, each
# page in a fresh interpreter.  sphinx.ext.doctest is left out on purpose: its
# builder runs every page and every autodoc'd docstring in one interpreter, where
# the examples (which, like a reader's session, build on one another) collide.
extensions = [
    "sphinx.ext.autodoc",
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
