"""Docker HEALTHCHECK: exit 0 when /health/live answers 200 (the image needs no curl)."""

import os
import sys
import urllib.request

port = os.environ.get("PORT") or os.environ.get("MODELPORT_PORT") or "8000"
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/live", timeout=3) as response:
        sys.exit(0 if response.status == 200 else 1)
except OSError:
    sys.exit(1)
