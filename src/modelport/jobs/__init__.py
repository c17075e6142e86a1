"""Durable background jobs: a table of work that survives restarts and runs once per job."""
