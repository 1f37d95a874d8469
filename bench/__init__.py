"""Benchmarks for eventpipe: ``python -m bench`` runs them all, ``python -m bench gateway`` one of them.

Benchmarks print figures and ratios; they never assert on timings (see bench/README.md).
"""
