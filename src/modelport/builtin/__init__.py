"""Recipes for the built-in models."""
