"""Stub for legacy tools (`python setup.py ...`, old pips); all metadata lives in setup.cfg."""

from setuptools import setup

setup()
