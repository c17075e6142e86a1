"""Model runtimes behind one tiny interface, and the signatures that describe their inputs."""
