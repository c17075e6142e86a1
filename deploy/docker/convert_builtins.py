"""Convert the built-in ImageNet classifier to ONNX on the build host, for the image.

The conversion needs PyTorch, which the image must not hold (and which a container build here
could not install: the CPU wheel lies on the host's disk). So the host converts once, in the
project's virtualenv (`make setup` installs PyTorch from requirements.lock), and the Dockerfile
copies the result from deploy/builtins/ into the image, where the container registers it on its
first start. Writes deploy/builtins/imagenet-classifier.onnx and .json (sha256, the check against
PyTorch, the sources). Run: .venv/bin/python deploy/docker/convert_builtins.py [--out DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from modelport.builtin.imagenet import IMAGENET_MODEL_NAME, convert_efficientnet
from modelport.storage.files import write_atomically

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "builtins"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    converted = convert_efficientnet()
    about = {
        "model": IMAGENET_MODEL_NAME,
        "sha256": hashlib.sha256(converted.onnx_bytes).hexdigest(),
        "max_abs_diff": converted.max_abs_diff,
        "source": converted.source,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomically(args.out / f"{IMAGENET_MODEL_NAME}.onnx", converted.onnx_bytes)
    write_atomically(args.out / f"{IMAGENET_MODEL_NAME}.json", json.dumps(about, indent=2).encode())
    for suffix in (".onnx", ".json"):  # public model files; the image's user must read them
        (args.out / f"{IMAGENET_MODEL_NAME}{suffix}").chmod(0o644)
    print(f"wrote {args.out / IMAGENET_MODEL_NAME}.onnx ({len(converted.onnx_bytes):,} bytes)")


if __name__ == "__main__":
    main()
