"""Stub so that legacy tools (`python setup.py ...`, old pips) still work; metadata lives in setup.cfg."""

from setuptools import setup

setup()
