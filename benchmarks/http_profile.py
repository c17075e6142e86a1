"""The HTTP path of one worker under wrk, and where its time goes (py-spy flame graph).

Starts ``modelport serve`` in one of two set-ups and drives single-row wine predictions with
``wrk`` at each concurrency level:

- ``anonymous``: ``make run``'s default, SQLite, no credentials;
- ``api-key``: PostgreSQL (a scratch database), Redis rate limits, an API key on every request.

With ``--profile OUT.svg`` the last level is also sampled with ``py-spy record`` (nonblocking)
on the worker process. Prints one markdown table (req/s, p50, p99, non-2xx answers).

    .venv/bin/python benchmarks/http_profile.py --setup api-key --profile benchmarks/profiles/x.svg
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from redis import Redis
from servers import ServerError, clean_env, free_port, launch
from sqlalchemy import text

from modelport.auth.service import create_user
from modelport.builtin.wine import read_wine_csv, register_wine, train_wine
from modelport.builtin.wine_data import locate_wine_csv
from modelport.db.engine import create_engine, create_session_factory
from modelport.db.migrate import upgrade
from modelport.settings import Settings
from modelport.storage.factory import open_artifact_store

MODELPORT = Path(sys.executable).with_name("modelport")
PY_SPY = Path(sys.executable).with_name("py-spy")
ROW = {
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
ADMIN_EMAIL = "bench-admin@example.com"
ADMIN_PASSWORD = "benchmark admin password"  # a scratch account in a scratch database


@dataclass(frozen=True)
class Level:
    concurrency: int
    per_second: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setup", choices=["anonymous", "api-key"], default="anonymous")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--duration", type=int, default=10, help="seconds per level")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of load before each level")
    parser.add_argument(
        "--concurrency",
        type=lambda value: [int(part) for part in value.split(",")],
        default=[1, 16, 64],
    )
    parser.add_argument("--profile", type=Path, help="flame graph (SVG) of the last level")
    parser.add_argument(
        "--postgres",
        default=os.environ.get(
            "MODELPORT_TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
        ),
        help="a PostgreSQL URL whose server may get a scratch database (api-key set-up)",
    )
    parser.add_argument(
        "--redis",
        default=os.environ.get("MODELPORT_TEST_REDIS_URL", "redis://127.0.0.1:6379/15"),
        help="a Redis database this run may empty (api-key set-up)",
    )
    return parser.parse_args()


async def _admin(url: str, statement: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            await connection.execute(text(statement))
    finally:
        await engine.dispose()


@contextmanager
def scratch_postgres(admin_url: str) -> Iterator[str]:
    name = f"modelport_http_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(admin_url, f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        asyncio.run(_admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def prepare(settings: Settings, admin: bool) -> None:
    """The schema, the wine model as production v1 and (for the key set-up) an administrator."""
    upgrade(settings.database_url)
    trained = train_wine(read_wine_csv(locate_wine_csv(settings)))

    async def register() -> None:
        engine = create_engine(settings.database_url)
        try:
            async with create_session_factory(engine)() as session:
                await register_wine(session, open_artifact_store(settings), trained)
                if admin:
                    await create_user(session, ADMIN_EMAIL, ADMIN_PASSWORD, role="admin")
                await session.commit()
        finally:
            await engine.dispose()

    asyncio.run(register())


@contextmanager
def serve(env: dict[str, str], port: int, workers: int, log: Path) -> Iterator[int]:
    """``modelport serve`` started the way benchmarks/servers.py starts every server; its pid."""
    argv = [str(MODELPORT), "serve", "--port", str(port), "--workers", str(workers)]
    ready = f"http://127.0.0.1:{port}/health/ready"
    try:
        with launch(argv, env=env, cwd=Path.cwd(), log=log, ready_url=ready) as process:
            yield process.pid
    except ServerError:
        # The log is in a temporary folder about to be removed: show it now.
        sys.exit(f"modelport serve did not start:\n{log.read_text(errors='replace')}")


def api_key(base_url: str) -> str:
    """A predict-only key with a limit far above what one machine can send."""
    with httpx.Client(base_url=base_url, timeout=30) as client:
        login = client.post(
            "/api/v1/auth/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
        )
        login.raise_for_status()
        token = login.json()["access_token"]
        created = client.post(
            "/api/v1/api-keys",
            json={"name": "bench", "scopes": ["predict"], "rate_limit_per_minute": 1_000_000},
            headers={"Authorization": f"Bearer {token}"},
        )
        created.raise_for_status()
        return str(created.json()["key"])


def wrk_script(directory: Path, key: str | None) -> Path:
    headers = {"Content-Type": "application/json", **({"X-API-Key": key} if key else {})}
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(json.dumps(ROW))}"]
    lines += [f'wrk.headers["{name}"] = "{value}"' for name, value in headers.items()]
    script = directory / "predict.lua"
    script.write_text("\n".join(lines) + "\n")
    return script


def _milliseconds(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def wrk(url: str, script: Path, concurrency: int, seconds: int) -> Level:
    threads = min(concurrency, 2)
    command = ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{seconds}s", "--latency"]
    output = subprocess.run(
        [*command, "-s", str(script), url],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    percentiles = dict(re.findall(r"^\s+(50|99)\.?0*%\s+(\S+)\s*$", output, re.MULTILINE))
    assert {"50", "99"} <= percentiles.keys(), output
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    assert rate is not None, output
    return Level(
        concurrency,
        float(rate.group(1)),
        _milliseconds(percentiles["50"]),
        _milliseconds(percentiles["99"]),
        int(non_2xx.group(1)) if non_2xx else 0,
        sum(int(n) for n in errors.groups()) if errors else 0,
    )


def main() -> None:
    args = parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="modelport-http-") as temporary,
        contextlib_exit(args) as database_url,
    ):
        var = Path(temporary) / "var"
        var.mkdir()
        settings = Settings(
            var_dir=var,
            database_url=database_url or f"sqlite+aiosqlite:///{var / 'modelport.db'}",
            artifact_store=(var / "artifacts").as_uri(),
        )
        print("training and registering the wine model ...", flush=True)
        prepare(settings, admin=args.setup == "api-key")
        env = clean_env(
            MODELPORT_VAR_DIR=str(var),
            MODELPORT_DATABASE_URL=settings.database_url.get_secret_value(),
            MODELPORT_ARTIFACT_STORE=settings.artifact_store,
            # One address sends everything: the anonymous limit would measure itself.
            MODELPORT_RATE_LIMIT_ANONYMOUS_PER_MINUTE="100000000",
        )
        if args.setup == "api-key":
            Redis.from_url(args.redis).flushdb()
            env["MODELPORT_REDIS_URL"] = args.redis
        port = free_port()
        url = f"http://127.0.0.1:{port}/predict"
        levels = []
        with serve(env, port, args.workers, Path(temporary) / "serve.log") as pid:
            key = api_key(f"http://127.0.0.1:{port}") if args.setup == "api-key" else None
            script = wrk_script(Path(temporary), key)
            for index, concurrency in enumerate(args.concurrency):
                print(f"c={concurrency} ...", flush=True)
                wrk(url, script, concurrency, args.warmup)
                spy = None
                if args.profile and index == len(args.concurrency) - 1:
                    args.profile.parent.mkdir(parents=True, exist_ok=True)
                    record = [str(PY_SPY), "record", "--nonblocking", "--pid", str(pid)]
                    spy = subprocess.Popen(
                        [*record, "-d", str(args.duration), "-o", str(args.profile)],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                levels.append(wrk(url, script, concurrency, args.duration))
                if spy is not None:
                    spy.wait(timeout=120)
    print(
        f"\n{args.setup}, {args.workers} worker(s), {os.cpu_count()} CPU(s), "
        f"{args.duration} s per level\n"
    )
    print("| c | req/s | p50 ms | p99 ms | non-2xx | socket errors |")
    print("|---|---|---|---|---|---|")
    for level in levels:
        print(
            f"| {level.concurrency} | {level.per_second:,.0f} | {level.p50_ms:.2f} | "
            f"{level.p99_ms:.2f} | {level.non_2xx} | {level.socket_errors} |"
        )


@contextmanager
def contextlib_exit(args: argparse.Namespace) -> Iterator[str | None]:
    if args.setup != "api-key":
        yield None
        return
    with scratch_postgres(args.postgres) as url:
        yield url


if __name__ == "__main__":
    main()
