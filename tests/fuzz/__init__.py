"""Fuzz targets for every decoder of untrusted bytes, and a counting runner.

Run: `python -m tests.fuzz [--seconds N | --inputs N]` (see `__main__.py`).
"""
