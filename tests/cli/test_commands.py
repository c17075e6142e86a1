"""The ``modelport`` command: db upgrade, train-wine, models list, builtins install."""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import pytest
from sqlalchemy import Connection, inspect, make_url
from typer.testing import CliRunner, Result

from modelport.builtin.wine import TrainedWine
from modelport.cli import app
from modelport.db.engine import create_engine
from modelport.settings import Settings
from tests.helpers import register_trained, run
from tests.processes import free_port

REGISTERED = re.compile(
    r"registered (?P<name>[\w-]+) v(?P<version>\d+) -> production "
    r"\(MAE (?P<mae>[\d.]+), R² (?P<r2>[\d.]+)\)"
)


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A clean environment: nothing from the caller's MODELPORT_*, no .env, state under tmp."""
    for name in list(os.environ):
        if name.startswith("MODELPORT_"):
            monkeypatch.delenv(name)
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    return {
        "MODELPORT_VAR_DIR": str(tmp_path / "var"),
        "MODELPORT_LOG_FORMAT": "text",
        # Nobody listens there: no test downloads anything.
        "MODELPORT_WINE_DOWNLOAD_URL": f"http://127.0.0.1:{free_port()}/winequality-red.csv",
    }


def modelport(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(app, list(args), env=env)


def _table_names(url: str) -> set[str]:
    async def names() -> set[str]:
        engine = create_engine(url)
        try:
            async with engine.connect() as connection:

                def look(sync: Connection) -> set[str]:
                    return set(inspect(sync).get_table_names())

                return await connection.run_sync(look)
        finally:
            await engine.dispose()

    result: set[str] = run(names())
    return result


def _models_listed(env: dict[str, str]) -> list[list[str]]:
    result = modelport(env, "models", "list")
    assert result.exit_code == 0, result.stderr
    return [line.split("\t") for line in result.stdout.splitlines()]


def _registered(result: Result) -> re.Match[str]:
    assert result.exit_code == 0, result.stderr
    match = REGISTERED.search(result.stdout)
    assert match, result.stdout
    assert float(match["mae"]) < 0.6
    assert float(match["r2"]) > 0.3
    return match


def test_db_upgrade_creates_the_schema(cli_env: dict[str, str], tmp_path: Path) -> None:
    result = modelport(cli_env, "db", "upgrade")

    assert result.exit_code == 0, result.stderr
    assert "database at revision head" in result.stdout
    database = tmp_path / "var" / "modelport.db"
    assert database.is_file()
    assert _table_names(f"sqlite+aiosqlite:///{database}") >= {
        "alembic_version",
        "models",
        "model_versions",
        "model_aliases",
        "predictions",
        "datasets",
        "dataset_rows",
    }


def test_db_upgrade_keeps_what_is_registered(
    cli_env: dict[str, str], settings: Settings, trained_wine: TrainedWine
) -> None:
    register_trained(settings, trained_wine)
    env = {**cli_env, "MODELPORT_DATABASE_URL": settings.database_url.get_secret_value()}

    result = modelport(env, "db", "upgrade")

    assert result.exit_code == 0, result.stderr
    assert "database at revision head" in result.stdout
    assert _models_listed(env) == [["wine-quality", "latest v1", "regression", "production->v1"]]


def test_train_wine_registers_a_new_production_version_each_run(
    cli_env: dict[str, str], wine_csv: Path, tmp_path: Path
) -> None:
    first = _registered(modelport(cli_env, "train-wine", "--data", str(wine_csv), "--name", "red"))
    assert (first["name"], first["version"]) == ("red", "1")

    comma_copy = tmp_path / "red-wine-commas.csv"
    with wine_csv.open(newline="", encoding="utf-8") as source:
        rows = list(csv.reader(source, delimiter=";"))
    with comma_copy.open("w", newline="", encoding="utf-8") as target:
        csv.writer(target).writerows(rows)
    second = _registered(
        modelport(cli_env, "train-wine", "--data", str(comma_copy), "--name", "red")
    )
    assert (second["name"], second["version"]) == ("red", "2")
    assert (second["mae"], second["r2"]) == (first["mae"], first["r2"])  # same wines, same model

    assert _models_listed(cli_env) == [["red", "latest v2", "regression", "production->v2"]]
    artifacts = list((tmp_path / "var" / "artifacts").rglob("*.onnx"))
    assert len(artifacts) == 1  # identical model bytes are stored once


def test_builtins_install_trains_only_what_is_missing(
    cli_env: dict[str, str], wine_csv: Path
) -> None:
    env = {**cli_env, "MODELPORT_DATASETS_DIR": str(wine_csv.parent)}

    first = modelport(env, "builtins", "install")
    assert f"wine-quality: training on {wine_csv.resolve()}" in first.stdout
    assert (_registered(first)["name"], _registered(first)["version"]) == ("wine-quality", "1")
    assert "registered imagenet-classifier v1 -> production" in first.stdout

    again = modelport(env, "builtins", "install")
    assert again.exit_code == 0, again.stderr
    assert again.stdout.split("\n")[:2] == [
        "wine-quality: already registered",
        "imagenet-classifier: already registered",
    ]

    assert _models_listed(env) == [
        ["imagenet-classifier", "latest v1", "image_classification", "production->v1"],
        ["wine-quality", "latest v1", "regression", "production->v1"],
    ]


def test_builtins_install_leaves_a_registered_model_alone(
    cli_env: dict[str, str], settings: Settings, trained_wine: TrainedWine
) -> None:
    register_trained(settings, trained_wine)
    env = {
        **cli_env,
        "MODELPORT_DATABASE_URL": settings.database_url.get_secret_value(),
        "MODELPORT_ARTIFACT_STORE": settings.artifact_store,
    }

    result = modelport(env, "builtins", "install", "--only", "wine-quality")

    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == "wine-quality: already registered"
    assert _models_listed(env) == [["wine-quality", "latest v1", "regression", "production->v1"]]


def test_builtins_install_without_data_says_how_to_provide_it(cli_env: dict[str, str]) -> None:
    result = modelport(cli_env, "builtins", "install", "--only", "wine-quality")

    assert result.exit_code == 1
    assert "could not be downloaded" in result.stderr
    assert "MODELPORT_DATASETS_DIR" in result.stderr
    assert "train-wine --data" in result.stderr
    assert _models_listed(cli_env)[0][0].startswith("no models registered")


def test_models_list_shows_models_and_aliases(
    cli_env: dict[str, str], settings: Settings, trained_wine: TrainedWine
) -> None:
    env = {**cli_env, "MODELPORT_DATABASE_URL": settings.database_url.get_secret_value()}
    assert _models_listed(env) == [
        ["no models registered; run `make run` or `modelport train-wine --data PATH`"]
    ]

    register_trained(settings, trained_wine, name="wine-quality")
    register_trained(settings, trained_wine, name="wine-quality")
    register_trained(settings, trained_wine, name="another-red")

    assert _models_listed(env) == [
        ["another-red", "latest v1", "regression", "production->v1"],
        ["wine-quality", "latest v2", "regression", "production->v2"],
    ]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("a;b\n1;2\n", "lacks the columns"),
        (None, "line 3: not a row of numbers"),
    ],
)
def test_train_wine_on_a_bad_file_explains_and_registers_nothing(
    cli_env: dict[str, str], wine_csv: Path, tmp_path: Path, content: str | None, problem: str
) -> None:
    bad = tmp_path / "bad.csv"
    if content is None:  # the real file with one value garbled
        lines = wine_csv.read_text(encoding="utf-8").splitlines(keepends=True)
        lines[2] = lines[2].replace("7.8", "seven", 1)
        content = "".join(lines)
    bad.write_text(content, encoding="utf-8")

    result = modelport(cli_env, "train-wine", "--data", str(bad))

    assert result.exit_code == 1
    assert result.stderr.startswith(f"modelport: {bad}")
    assert problem in result.stderr
    assert "Traceback" not in result.stderr
    assert _models_listed(cli_env)[0][0].startswith("no models registered")


def test_train_wine_on_a_missing_file_explains(cli_env: dict[str, str], tmp_path: Path) -> None:
    result = modelport(cli_env, "train-wine", "--data", str(tmp_path / "nope.csv"))

    assert result.exit_code == 1
    assert "cannot read" in result.stderr
    assert "No such file" in result.stderr


def test_train_wine_requires_data(cli_env: dict[str, str]) -> None:
    result = modelport(cli_env, "train-wine")

    assert result.exit_code == 2
    assert "--data" in result.stderr


@pytest.mark.parametrize("command", [["db", "upgrade"], ["models", "list"], ["serve"]])
def test_an_unreachable_database_is_one_clear_line(
    cli_env: dict[str, str], command: list[str]
) -> None:
    url = f"postgresql://modelport:s3cret@127.0.0.1:{free_port()}/modelport"

    result = modelport({**cli_env, "MODELPORT_DATABASE_URL": url}, *command)

    assert result.exit_code == 1
    assert "cannot use the database postgresql+asyncpg://modelport:***@127.0.0.1" in result.stderr
    assert "MODELPORT_DATABASE_URL" in result.stderr
    assert "s3cret" not in result.stderr
    assert "Traceback" not in result.stderr


def test_a_database_that_does_not_exist_is_named(
    cli_env: dict[str, str], postgres_url: str
) -> None:
    missing = make_url(postgres_url).set(database="modelport_no_such_database")
    env = {**cli_env, "MODELPORT_DATABASE_URL": missing.render_as_string(hide_password=False)}

    result = modelport(env, "db", "upgrade")

    assert result.exit_code == 1
    assert 'database "modelport_no_such_database" does not exist' in result.stderr


def test_a_var_dir_that_cannot_be_created_is_named(cli_env: dict[str, str], tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder", encoding="utf-8")
    env = {**cli_env, "MODELPORT_VAR_DIR": str(blocker / "var")}

    result = modelport(env, "db", "upgrade")

    assert result.exit_code == 1
    assert f"cannot create MODELPORT_VAR_DIR {blocker / 'var'}" in result.stderr


def test_by_default_state_goes_to_the_users_state_directory_not_the_working_one(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    """The database (and the JWT secret beside it) must not be reachable by a relative path
    from the directory the server runs in."""
    env: dict[str, str | None] = {**cli_env, "MODELPORT_VAR_DIR": None, "XDG_STATE_HOME": None}
    env["HOME"] = str(tmp_path / "home")

    result = CliRunner().invoke(app, ["db", "upgrade"], env=env)

    assert result.exit_code == 0, result.output
    state = tmp_path / "home" / ".local" / "state" / "modelport"
    assert "models" in _table_names(f"sqlite+aiosqlite:///{state / 'modelport.db'}")
    assert list(Path.cwd().iterdir()) == []
