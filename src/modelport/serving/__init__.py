"""The prediction path: resolve a version, validate rows, run the model, log the call."""
