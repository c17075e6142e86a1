"""Uploaded model files: what they are, whether they may be read, and what is stored to serve
them (converted to ONNX and verified, or kept for a native runtime)."""
