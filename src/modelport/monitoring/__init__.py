"""Prediction log, health probes, logging."""
