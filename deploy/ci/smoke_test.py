"""Smoke-test a built modelport image the way a cluster runs it: two containers of the image,
host networking, one PostgreSQL database, one Redis, one shared artifact folder.

Proves: both become live and ready; the wine model predicts; the image classifier names a cat in
a photo of a cat; the server process is not root; the image holds no PyTorch; a prediction made
through one container is in the log read through the other; an alias moved through one container
is served by the other. Prints each step and the time from `docker run` to ready.

    python deploy/ci/smoke_test.py --image modelport:ci [--docker /usr/bin/docker]
Needs: PostgreSQL on 127.0.0.1:5432 (trust; a scratch database is created and dropped), Redis,
the UCI wine CSV folder (MODELPORT_DATASETS_DIR), psql, and scikit-image for the test photo.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

WINE_ROW = {
    "fixed_acidity": 7.4,
    "volatile_acidity": 0.7,
    "citric_acid": 0.0,
    "residual_sugar": 1.9,
    "chlorides": 0.076,
    "free_sulfur_dioxide": 11.0,
    "total_sulfur_dioxide": 34.0,
    "density": 0.9978,
    "ph": 3.51,
    "sulphates": 0.56,
    "alcohol": 9.4,
}
CAT_LABELS = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}
READY_WAIT_SECONDS = 240
SPREAD_WAIT_SECONDS = 30
CONTAINER_UID = "10001"


class SmokeFailure(AssertionError):
    pass


def step(message: str) -> None:
    print(f"smoke: {message}", flush=True)


def check(condition: bool, message: str) -> None:
    if not condition:
        raise SmokeFailure(message)


def http(
    method: str,
    url: str,
    body: Any = None,
    token: str | None = None,
    files: tuple[str, bytes, str] | None = None,
) -> tuple[int, dict[str, str], Any]:
    headers = {"Accept": "application/json"}
    data: bytes | None = None
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if files is not None:
        boundary = uuid.uuid4().hex
        name, content, kind = files
        head = (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{name}"\r\n'
            f"Content-Type: {kind}\r\n\r\n"
        )
        data = head.encode() + content + f"\r\n--{boundary}--\r\n".encode()
        headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
    elif body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            raw = response.read()
            status, reply_headers = response.status, dict(response.headers)
    except urllib.error.HTTPError as exc:
        raw, status, reply_headers = exc.read(), exc.code, dict(exc.headers)
    try:
        payload = json.loads(raw) if raw else None
    except ValueError:
        payload = raw.decode(errors="replace")
    return status, reply_headers, payload


class Docker:
    def __init__(self, binary: str) -> None:
        self.binary = binary

    def __call__(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        result = subprocess.run(  # noqa: S603
            [self.binary, *args], input=stdin, capture_output=True, text=True, check=False
        )
        if check and result.returncode != 0:
            raise SmokeFailure(f"docker {' '.join(args[:2])} failed: {result.stderr.strip()}")
        return result.stdout.strip()


class Replica:
    """One container of the image, serving on its own port of the host network."""

    def __init__(self, docker: Docker, name: str, port: int) -> None:
        self.docker, self.name, self.port = docker, name, port
        self.base = f"http://127.0.0.1:{port}"
        self.started = 0.0

    def run(self, image: str, env: dict[str, str], mounts: list[str]) -> None:
        args = ["run", "-d", "--name", self.name, "--network", "host", "-e", f"PORT={self.port}"]
        for key, value in env.items():
            args += ["-e", f"{key}={value}"]
        for mount in mounts:
            args += ["-v", mount]
        self.started = time.monotonic()
        self.docker(*args, image)

    def wait_ready(self) -> float:
        deadline = self.started + READY_WAIT_SECONDS
        while time.monotonic() < deadline:
            state = self.docker("inspect", "--format", "{{.State.Status}}", self.name)
            if state != "running":
                raise SmokeFailure(f"{self.name} is {state}:\n{self.logs()}")
            try:
                status, _, _ = http("GET", f"{self.base}/health/ready")
            except OSError:
                status = 0
            if status == 200:
                return time.monotonic() - self.started
            time.sleep(0.25)
        raise SmokeFailure(f"{self.name} not ready after {READY_WAIT_SECONDS}s:\n{self.logs()}")

    def logs(self) -> str:
        result = subprocess.run(  # noqa: S603
            [self.docker.binary, "logs", "--tail", "60", self.name],
            capture_output=True,
            text=True,
            check=False,
        )
        return result.stdout + result.stderr

    def remove(self) -> None:
        self.docker("rm", "-f", self.name, check=False)


def psql(sql: str) -> None:
    subprocess.run(  # noqa: S603
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-q", "-c", sql],  # noqa: S607
        check=True,
        capture_output=True,
    )


def cat_photo() -> bytes:
    from PIL import Image
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.chelsea()).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def poll(what: str, seconds: float, probe: Any) -> tuple[Any, float]:
    """Call ``probe`` until it returns something truthy; fail after ``seconds``."""
    start = time.monotonic()
    while True:
        found = probe()
        if found:
            return found, time.monotonic() - start
        if time.monotonic() - start > seconds:
            raise SmokeFailure(f"{what}: not seen within {seconds}s")
        time.sleep(0.25)


def smoke(args: argparse.Namespace, stack: ExitStack) -> None:
    docker = Docker(args.docker)
    run_id = f"{os.getpid()}-{secrets.token_hex(3)}"
    database = f"modelport_image_{run_id.replace('-', '_')}"
    psql(f'CREATE DATABASE "{database}"')
    stack.callback(psql, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    step(f"scratch database {database}")

    # The artifact store every replica shares (a cluster would use S3), owned by the image's user.
    shared = Path(tempfile.mkdtemp(prefix="modelport-image-artifacts-"))
    stack.callback(shutil.rmtree, shared, ignore_errors=True)
    os.chown(shared, int(CONTAINER_UID), int(CONTAINER_UID))
    env = {
        "MODELPORT_DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{database}",
        "MODELPORT_REDIS_URL": args.redis_url,
        "MODELPORT_ARTIFACT_STORE": "file:///srv/artifacts",
        "MODELPORT_JWT_SECRET": secrets.token_hex(32),
        "MODELPORT_DATASETS_DIR": "/data",
        "MODELPORT_WORKERS": "2",
        "MODELPORT_REGISTRY_CACHE_SECONDS": "1",
    }
    mounts = [f"{shared}:/srv/artifacts", f"{args.datasets}:/data:ro"]

    a = Replica(docker, f"modelport-smoke-a-{run_id}", args.port)
    b = Replica(docker, f"modelport-smoke-b-{run_id}", args.port + 1)
    for replica in (a, b):
        stack.callback(replica.remove)
    # Both at once against an empty database: one migrates and installs, the other waits.
    a.run(args.image, env, mounts)
    b.run(args.image, env, mounts)
    ready_a, ready_b = a.wait_ready(), b.wait_ready()
    step(f"ready: A {ready_a:.1f}s, B {ready_b:.1f}s from docker run (first start, empty database)")
    for replica in (a, b):
        status, _, body = http("GET", f"{replica.base}/health/live")
        check(status == 200 and body == {"status": "alive"}, f"{replica.name} live: {status}")
    step("live and ready: both containers")

    pid = docker("inspect", "--format", "{{.State.Pid}}", a.name)
    uids = Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[:2]
    check(uids[0] != "0" and uids[1] != "0", f"server runs as uid {uids}")
    check(uids[0] == CONTAINER_UID, f"expected uid {CONTAINER_UID}, got {uids[0]}")
    workers = docker("exec", a.name, "sh", "-c", "ls /proc | grep -c '^[0-9]'")
    step(f"server process uid {uids[0]} (not root); {workers} processes in the container")
    no_torch = docker(
        "exec",
        a.name,
        "python3",
        "-c",
        "import importlib.util as u; print(u.find_spec('torch') is None)",
    )
    check(no_torch == "True", "the image holds PyTorch")
    step("no PyTorch in the image")

    status, headers, body = http("POST", f"{a.base}/predict", WINE_ROW)
    check(status == 200, f"wine prediction: {status} {body}")
    check(3 <= body["predicted_quality"] <= 8, f"implausible quality {body}")
    request_id = headers.get("X-Request-ID") or headers.get("x-request-id")
    step(f"wine prediction via A: {body['predicted_quality']:.2f} (v{body['model_version']})")

    status, _, body = http(
        "POST",
        f"{b.base}/api/v1/models/imagenet-classifier/predict",
        files=("chelsea.jpg", cat_photo(), "image/jpeg"),
    )
    check(status == 200, f"image classification: {status} {body}")
    top = body["predictions"][0]
    check(top["label"] in CAT_LABELS, f"a photo of a cat classified as {body['predictions']}")
    step(f"image classification via B: {top['label']} ({top['probability']:.2f})")

    password = secrets.token_urlsafe(18)
    docker(
        "exec", "-i", a.name, "modelport", "users", "create-admin",
        "--email", "admin@smoke.example", "--password-stdin", stdin=password + "\n",
    )  # fmt: skip
    credentials = {"email": "admin@smoke.example", "password": password}
    status, _, tokens = http("POST", f"{b.base}/api/v1/auth/login", credentials)
    check(status == 200, f"admin login via B: {status} {tokens}")
    token = tokens["access_token"]

    def logged() -> Any:
        _, _, page = http("GET", f"{b.base}/api/v1/predictions?model=wine-quality", token=token)
        return [item for item in page.get("items", []) if item.get("request_id") == request_id]

    _, waited = poll("the wine prediction in the log", SPREAD_WAIT_SECONDS, logged)
    step(f"prediction {request_id} made via A is in the log read via B (after {waited:.1f}s)")

    # A second wine model with two versions; the newest is production.
    for _ in range(2):
        out = docker(
            "exec", a.name, "modelport", "train-wine",
            "--data", "/data/winequality-red.csv", "--name", "smoke-wine",
        )  # fmt: skip
        step(f"A: {out}")

    def served_version(replica: Replica) -> int:
        status, _, body = http(
            "POST", f"{replica.base}/api/v1/models/smoke-wine/predict", WINE_ROW, token=token
        )
        check(status == 200, f"{replica.name} smoke-wine: {status} {body}")
        return int(body["model_version"])

    _, _ = poll("v2 served by B", SPREAD_WAIT_SECONDS, lambda: served_version(b) == 2)
    status, _, body = http(
        "PUT",
        f"{a.base}/api/v1/models/smoke-wine/aliases/production",
        {"version": 1},
        token=token,
    )
    check(status == 200, f"moving the alias via A: {status} {body}")
    check(served_version(a) == 1, "A does not serve the version it just promoted")
    _, waited = poll("the alias move on B", SPREAD_WAIT_SECONDS, lambda: served_version(b) == 1)
    step(f"alias production -> v1 moved via A, served by B after {waited:.1f}s: one registry")

    logs = a.logs()
    check('"request_id"' in logs, "no JSON request log lines in the container output")
    step("container log is JSON with request ids")

    docker("restart", "--time", "20", a.name)
    a.started = time.monotonic()
    restart_ready = a.wait_ready()
    step(f"ready {restart_ready:.1f}s after a restart (schema and built-ins already there)")
    check(served_version(a) == 1, "the alias did not survive a restart")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--image", required=True)
    parser.add_argument("--docker", default="docker")
    parser.add_argument("--port", type=int, default=18081, help="A's port; B gets the next one")
    parser.add_argument(
        "--redis-url", default=os.environ.get("IMAGE_TEST_REDIS_URL", "redis://127.0.0.1:6379/10")
    )
    parser.add_argument(
        "--datasets", type=Path, default=Path(os.environ.get("MODELPORT_DATASETS_DIR", ""))
    )
    args = parser.parse_args()
    args.datasets = args.datasets.resolve()
    if not (args.datasets / "winequality-red.csv").is_file():
        print("smoke: set MODELPORT_DATASETS_DIR to the folder of winequality-red.csv")
        return 2
    # Stopped from outside (CI's time limit, Ctrl-C): still remove containers and database.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with ExitStack() as stack:
        try:
            smoke(args, stack)
        except SmokeFailure as exc:
            print(f"smoke: FAILED: {exc}", flush=True)
            return 1
    print("smoke: passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
