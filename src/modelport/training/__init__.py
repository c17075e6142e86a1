"""Train a model from a registered dataset in a durable job; the result is a new version."""
