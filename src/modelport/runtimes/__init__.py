"""What serves: ONNX Runtime and the native runtimes behind one tiny interface (``loader``),
and the signatures that describe their inputs."""
