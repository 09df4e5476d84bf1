"""Stub for legacy tools (`python setup.py ...`, old pips); all metadata lives in pyproject.toml."""

from setuptools import setup

setup()
