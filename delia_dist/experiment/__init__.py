"""Experiments: the baseline-vs-DELIA matrix and its report."""
