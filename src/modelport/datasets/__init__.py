"""Registered tabular datasets, stored row by row in SQL."""
