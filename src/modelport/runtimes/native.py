"""Native runtimes: scikit-learn, XGBoost and LightGBM models served by their own libraries.

They serve the versions whose conversion to ONNX was impossible or did not match the original
model. Each one exposes what registration needs to describe the model (task, features, classes)
and the same ``predict`` / ``predict_outputs`` as the ONNX runtime:

- classifiers give ``{"label": (rows,), "probabilities": (rows, classes)}``;
- regressors give ``{"prediction": (rows, targets)}``.
"""

from __future__ import annotations

import functools
import importlib
import io
import json
import os
import subprocess
import sys
import threading
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, Literal

import numpy as np

from modelport.errors import BadRequestError, ModelRunError, public_text
from modelport.runtimes.build_only import import_skops_io, without_torch

Task = Literal["classification", "regression"]
CLASSIFICATION: Task = "classification"
REGRESSION: Task = "regression"
NATIVE_FLAVORS = ("sklearn", "sklearn-pickle", "xgboost", "lightgbm")

# The libraries whose types a skops file may name (see ``trusted_types``).
TRUSTED_LIBRARIES = ("sklearn", "numpy", "scipy")

# A model fitted on a DataFrame warns on every plain array; the columns arrive in its order.
warnings.filterwarnings(
    "ignore", message="X does not have valid feature names", category=UserWarning
)


class NativeRuntime:
    """What every native model offers; subclasses fill in the facts and ``predict_outputs``."""

    flavor: str
    input_name: ClassVar[str] = "features"
    input_dtype: ClassVar[type[np.generic]] = np.float64
    task: Task
    n_features: int
    feature_names: list[str] | None = None  # as the model knows them
    classes: list[Any] | None = None  # JSON-friendly class labels, for classifiers

    def predict_outputs(self, features: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def predict(self, features: np.ndarray) -> np.ndarray:
        """The first output: labels for classifiers, values for regressors."""
        return next(iter(self.predict_outputs(features).values()))

    def feature_ranges(self) -> list[tuple[float, float] | None]:
        """Where the model's splits lie per feature, for verification rows (None: unknown)."""
        return [None] * self.n_features

    def _classified(self, probabilities: np.ndarray) -> dict[str, np.ndarray]:
        """Labels as the library's scikit-learn wrapper picks them: the most likely class."""
        if probabilities.ndim == 1:  # binary models give P(class 1)
            probabilities = np.column_stack([1.0 - probabilities, probabilities])
        classes = np.asarray(self.classes if self.classes is not None else [])
        labels = classes[np.argmax(probabilities, axis=1)]
        return {"label": labels, "probabilities": probabilities.astype(np.float64)}


@contextmanager
def model_run(library: str) -> Iterator[None]:
    """What the library raises while predicting is the model failing on this input: a
    ModelRunError whose library text is for the log, not for the caller."""
    try:
        yield
    except Exception as exc:
        raise ModelRunError(f"{library}: {type(exc).__name__}: {exc}") from exc


def json_class(value: Any) -> Any:
    """A class label as JSON holds it: integers stay integers, everything else is a string."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return str(value)


# --- scikit-learn ------------------------------------------------------------------------------


class SklearnRuntime(NativeRuntime):
    """A fitted scikit-learn estimator (or pipeline) that predicts from a numeric matrix."""

    flavor = "sklearn"

    def __init__(self, estimator: Any) -> None:
        from sklearn.base import is_classifier, is_regressor
        from sklearn.exceptions import NotFittedError
        from sklearn.utils.validation import check_is_fitted

        if not hasattr(estimator, "predict"):
            raise BadRequestError(
                f"the file holds a {type(estimator).__name__}, which has no predict(); upload a "
                "fitted scikit-learn classifier or regressor"
            )
        try:
            check_is_fitted(estimator)
        except (NotFittedError, TypeError):
            raise BadRequestError(
                f"the {type(estimator).__name__} in the file is not fitted; fit it before saving"
            ) from None
        n_features = getattr(estimator, "n_features_in_", None)
        if not isinstance(n_features, int | np.integer):
            raise BadRequestError(
                f"the {type(estimator).__name__} does not record how many features it takes "
                "(n_features_in_)"
            )
        self.estimator = estimator
        self.n_features = int(n_features)
        names = getattr(estimator, "feature_names_in_", None)
        self.feature_names = [str(name) for name in names] if names is not None else None
        if is_classifier(estimator):
            self.task = CLASSIFICATION
            classes = np.asarray(getattr(estimator, "classes_", []))
            if classes.ndim != 1 or classes.size < 2:
                raise BadRequestError(
                    "multi-output classifiers are not supported; upload one classifier per target"
                )
            if not hasattr(estimator, "predict_proba"):
                raise BadRequestError(
                    f"the {type(estimator).__name__} gives no class probabilities "
                    "(predict_proba); e.g. fit SVC with probability=True, or wrap the model "
                    "in CalibratedClassifierCV"
                )
            self.classes = [json_class(value) for value in classes]
        elif is_regressor(estimator):
            self.task = REGRESSION
        else:
            raise BadRequestError(
                f"the {type(estimator).__name__} is neither a classifier nor a regressor; "
                "modelport serves models that predict labels or values"
            )

    def predict_outputs(self, features: np.ndarray) -> dict[str, np.ndarray]:
        rows = self._named(np.asarray(features, dtype=np.float64))
        with model_run("scikit-learn"):
            if self.task == CLASSIFICATION:
                return {
                    "label": np.asarray(self.estimator.predict(rows)),
                    "probabilities": np.asarray(
                        self.estimator.predict_proba(rows), dtype=np.float64
                    ),
                }
            values = np.asarray(self.estimator.predict(rows), dtype=np.float64)
            return {"prediction": values.reshape(len(rows), -1)}

    def _named(self, rows: np.ndarray) -> Any:
        """A model fitted on a DataFrame gets one with its column names: pipelines may pick
        columns by name (and scikit-learn warns on plain arrays)."""
        if self.feature_names is None:
            return rows
        try:
            import pandas as pd  # type: ignore[import-untyped]
        except ImportError:  # without pandas the columns still arrive in the fitted order
            return rows
        return pd.DataFrame(rows, columns=self.feature_names, copy=False)

    def feature_ranges(self) -> list[tuple[float, float] | None]:
        trees = []
        if hasattr(self.estimator, "tree_"):
            trees = [self.estimator.tree_]
        elif hasattr(self.estimator, "estimators_"):
            members = np.ravel(np.asarray(self.estimator.estimators_, dtype=object))
            trees = [member.tree_ for member in members if hasattr(member, "tree_")]
        splits = [
            (np.asarray(tree.feature), np.asarray(tree.threshold, dtype=np.float64))
            for tree in trees
        ]
        return _split_ranges(splits, self.n_features)


class PickledSklearnRuntime(SklearnRuntime):
    flavor = "sklearn-pickle"


def load_skops(data: bytes) -> Any:
    """Load a skops file whose every type is on the allow-list (see ``trusted_types``).

    Trust is decided from the names the file gives, before anything is imported: a file cannot
    make the server import a module (importing one can run it) just by naming it.
    """
    _refuse_untrusted(_skops_type_names(data))
    sio = import_skops_io()
    try:
        # skops's own audit adds the bound methods and bit generators a schema names in values.
        needed = sio.get_untrusted_types(data=data)
    except Exception as exc:  # skops raises many types for damaged archives
        raise BadRequestError(f"the skops file cannot be read: {public_text(str(exc))}") from None
    _refuse_untrusted(set(needed))
    try:
        return sio.loads(data, trusted=needed)
    except Exception as exc:
        raise BadRequestError(f"the skops file cannot be loaded: {public_text(str(exc))}") from None


def _refuse_untrusted(names: set[str]) -> None:
    refused = sorted(name for name in names if not _is_trusted(name))
    if refused:
        raise BadRequestError(
            f"the skops file needs {', '.join(refused[:10])}, which modelport does not trust: "
            "only scikit-learn estimators and the parts they are made of, NumPy and SciPy "
            "arrays and NumPy/SciPy ufuncs are accepted; save a model built from those"
        )


def _skops_type_names(data: bytes) -> set[str]:
    """Every ``module.name`` the file's schema refers to, read as JSON (nothing is imported)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            schema = json.loads(archive.read("schema.json"))
    except (zipfile.BadZipFile, KeyError, OSError, ValueError, RecursionError) as exc:
        raise BadRequestError(f"the skops file cannot be read: {exc}") from None
    names: set[str] = set()
    pending = [schema]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            module, name = item.get("__module__"), item.get("__class__")
            if module is not None or name is not None:
                names.add(f"{module}.{name}")
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return names


def _is_trusted(name: str) -> bool:
    """On the allow-list, and importing it gives exactly the object the list was built from."""
    allowed = trusted_types().get(name)
    if allowed is None:
        return False  # decided from the name alone: nothing was imported
    module_name, _, attribute = name.rpartition(".")
    module = importlib.import_module(module_name)  # already loaded: the list was built from it
    return getattr(module, attribute, None) is allowed


# Types fitted estimators are made of besides other estimators: module -> class names, or None
# for every class that module itself defines (classes it imports from elsewhere never count).
_SKLEARN_PARTS: dict[str, tuple[str, ...] | None] = {
    "sklearn.tree._tree": ("Tree",),
    "sklearn.ensemble._hist_gradient_boosting.binning": ("_BinMapper",),
    "sklearn.ensemble._hist_gradient_boosting.predictor": ("TreePredictor",),
    "sklearn._loss.loss": None,
    "sklearn._loss.link": None,
    "sklearn._loss._loss": None,
    "sklearn.linear_model._sgd_fast": None,
    "sklearn.neighbors._kd_tree": ("KDTree",),
    "sklearn.neighbors._ball_tree": ("BallTree",),
    "sklearn.metrics._dist_metrics": None,
    "sklearn.gaussian_process.kernels": None,
    "sklearn.gaussian_process._gpc": ("_BinaryGaussianProcessClassifierLaplace",),
    "sklearn.neural_network._stochastic_optimizers": None,
    "sklearn.calibration": ("_CalibratedClassifier", "_SigmoidCalibration"),
    "sklearn.cluster._bisect_k_means": ("_BisectingTree",),
}
# The plain values and containers skops writes.
_BUILTINS = (bool, int, float, complex, str, bytes, bytearray, list, tuple, set, dict, slice)


@functools.cache
def trusted_types() -> dict[str, Any]:
    """What a skops file may name: ``module.name`` as skops writes it -> the object.

    Built once from the installed libraries, never from a file: every estimator scikit-learn
    lists, the parts estimators are made of (``_SKLEARN_PARTS``), NumPy's array, dtype, scalar
    and random-state types, SciPy's sparse matrices, NumPy and SciPy ufuncs, and the built-in
    containers. A class is keyed by the module that defines it (its real ``__module__``), so a
    name under which some other module merely re-exports it is not on the list.
    """
    with without_torch():  # listing estimators imports every scikit-learn module
        from sklearn.utils.discovery import all_estimators

        estimators = [cls for _, cls in all_estimators()]
    import scipy.sparse  # type: ignore[import-untyped]
    import scipy.special  # type: ignore[import-untyped]

    classes: list[type] = [*_BUILTINS, *estimators, *_sklearn_parts()]
    classes += [np.ndarray, np.dtype, np.ma.MaskedArray, *np.sctypeDict.values()]
    classes += [c for c in vars(np.dtypes).values() if isinstance(c, type)]
    classes += [np.random.RandomState, np.random.Generator, np.random.SeedSequence]
    classes += [
        c
        for c in vars(np.random).values()
        if isinstance(c, type) and issubclass(c, np.random.BitGenerator)
    ]
    classes += [
        c
        for c in vars(scipy.sparse).values()
        if isinstance(c, type) and issubclass(c, scipy.sparse.sparray | scipy.sparse.spmatrix)
    ]
    trusted: dict[str, Any] = {
        f"{cls.__module__}.{cls.__name__}": cls
        for cls in classes
        if cls.__module__.split(".", 1)[0] in (*TRUSTED_LIBRARIES, "builtins")
    }
    trusted.update(_ufuncs(np, scipy.special))
    return trusted


def _sklearn_parts() -> list[type]:
    found: list[type] = []
    for module_name, names in _SKLEARN_PARTS.items():
        try:
            module = importlib.import_module(module_name)
        except ImportError:  # an older or newer scikit-learn without this module
            continue
        defined = {
            name: value
            for name, value in vars(module).items()
            if isinstance(value, type) and value.__module__ == module_name
        }
        found += [defined[n] for n in names if n in defined] if names else list(defined.values())
    return found


def _ufuncs(*namespaces: Any) -> dict[str, Any]:
    """Ufuncs under every name skops may have written for them. skops names a ufunc by the
    first loaded module it finds it in, which differs between processes (SciPy's live in
    private modules), so each NumPy or SciPy module already loaded that holds one counts."""
    ufuncs = {
        id(value): value
        for namespace in namespaces
        for value in vars(namespace).values()
        if isinstance(value, np.ufunc)
    }
    names: dict[str, Any] = {}
    for module_name, module in list(sys.modules.items()):
        if module is None or module_name.split(".", 1)[0] not in ("numpy", "scipy"):
            continue
        for attribute, value in list(getattr(module, "__dict__", {}).items()):
            if id(value) in ufuncs and attribute == value.__name__:
                names[f"{module_name}.{attribute}"] = value
    return names


def load_pickle(data: bytes) -> Any:
    """Unpickle (plain pickle or joblib, compressed or not). Runs the file's code: callers
    must have checked that pickles are allowed for this upload."""
    import joblib  # type: ignore[import-untyped]

    try:
        return joblib.load(io.BytesIO(data))
    except Exception as exc:
        raise BadRequestError(
            f"the pickle cannot be loaded (truncated, or made with packages not installed "
            f"here): {public_text(f'{type(exc).__name__}: {exc}')}"
        ) from None


# --- XGBoost -----------------------------------------------------------------------------------


class XGBoostRuntime(NativeRuntime):
    flavor = "xgboost"

    def __init__(self, data: bytes, threads: int = 1, parsed: dict[str, Any] | None = None):
        import xgboost as xgb

        booster = xgb.Booster()
        try:
            booster.load_model(bytearray(data))
        except xgb.core.XGBoostError as exc:
            raise BadRequestError(f"XGBoost cannot load the file: {_first_line(exc)}") from None
        booster.set_param({"nthread": threads})
        self.booster = booster
        config = json.loads(booster.save_config())["learner"]
        self.objective: str = config["objective"]["name"]
        self.n_features = booster.num_features()
        self.feature_names = list(booster.feature_names) if booster.feature_names else None
        best = booster.attr("best_iteration")
        self.iteration_range = (0, int(best) + 1) if best is not None else (0, 0)
        self._parsed = parsed
        # gblinear has no inplace_predict; its DMatrix path is guarded to be safe across threads.
        self._linear = config["gradient_booster"]["name"] == "gblinear"
        self._lock = threading.Lock()
        if self.objective.startswith(("binary:", "multi:")):
            self.task = CLASSIFICATION
            num_class = int(config["learner_model_param"].get("num_class", "0"))
            self.classes = list(range(num_class)) if num_class > 1 else [0, 1]
        else:
            self.task = REGRESSION

    def predict_outputs(self, features: np.ndarray) -> dict[str, np.ndarray]:
        rows = np.asarray(features, dtype=np.float32)
        predict_type = (
            "margin" if self.objective in ("multi:softmax", "binary:logitraw") else "value"
        )
        with model_run("XGBoost"):
            raw = self._raw(rows, predict_type)
            if self.task == REGRESSION:
                return {"prediction": raw.reshape(len(rows), -1)}
        if self.objective == "multi:softmax":
            shifted = np.exp(raw - raw.max(axis=1, keepdims=True))
            raw = shifted / shifted.sum(axis=1, keepdims=True)
        elif self.objective == "binary:logitraw":
            raw = 1.0 / (1.0 + np.exp(-raw))
        if raw.ndim == 2 and raw.shape[1] == 1:
            raw = raw[:, 0]
        return self._classified(raw)

    def _raw(self, rows: np.ndarray, predict_type: str) -> np.ndarray:
        if self._linear:
            import xgboost as xgb

            with self._lock:
                result = self.booster.predict(
                    xgb.DMatrix(rows),
                    output_margin=predict_type == "margin",
                    iteration_range=self.iteration_range,
                    validate_features=False,
                )
        else:
            result = self.booster.inplace_predict(
                rows,
                iteration_range=self.iteration_range,
                predict_type=predict_type,
                validate_features=False,
            )
        return np.asarray(result, dtype=np.float64)

    def feature_ranges(self) -> list[tuple[float, float] | None]:
        if self._parsed is None:
            return super().feature_ranges()
        booster = self._parsed.get("learner", {}).get("gradient_booster", {})
        model = booster.get("model") or booster.get("gbtree", {}).get("model") or {}
        splits = []
        for tree in model.get("trees", []):
            try:
                leaves = np.asarray(tree["left_children"]) == -1
                features = np.where(leaves, -1, np.asarray(tree["split_indices"]))
                splits.append((features, np.asarray(tree["split_conditions"], dtype=np.float64)))
            except (KeyError, ValueError, TypeError):
                continue
        return _split_ranges(splits, self.n_features)

    def for_conversion(self) -> Any:
        """A copy onnxmltools can read: it wants features named f0, f1, ... or not at all."""
        start, stop = self.iteration_range
        booster = self.booster[start:stop] if stop else self.booster.copy()
        booster.feature_names = None
        booster.feature_types = None
        return booster


# --- LightGBM ----------------------------------------------------------------------------------


class LightGBMRuntime(NativeRuntime):
    flavor = "lightgbm"

    def __init__(self, data: bytes, threads: int = 1, header: dict[str, str] | None = None):
        import lightgbm as lgb

        text = data.decode("utf-8")
        try:
            self.booster = lgb.Booster(model_str=text)
        except lgb.basic.LightGBMError as exc:
            raise BadRequestError(f"LightGBM cannot load the file: {_first_line(exc)}") from None
        self.threads = threads
        self._lock = threading.Lock()  # LightGBM's predictor state is shared per booster
        header = header if header is not None else _lightgbm_header(text)
        self.objective = header.get("objective", "").split(" ")[0]
        self.n_features = self.booster.num_feature()
        names = list(self.booster.feature_name())
        self.feature_names = None if names == [f"Column_{i}" for i in range(len(names))] else names
        self._feature_infos = header.get("feature_infos", "").split(" ")
        if self.objective in ("binary", "multiclass", "multiclassova", "softmax", "ovr"):
            self.task = CLASSIFICATION
            num_class = int(header.get("num_class", "1"))
            self.classes = list(range(num_class)) if num_class > 1 else [0, 1]
        else:
            self.task = REGRESSION

    def predict_outputs(self, features: np.ndarray) -> dict[str, np.ndarray]:
        rows = np.asarray(features, dtype=np.float64)
        with model_run("LightGBM"), self._lock:
            raw = np.asarray(self.booster.predict(rows, num_threads=self.threads))
            if self.task == REGRESSION:
                return {"prediction": raw.astype(np.float64).reshape(len(rows), -1)}
        return self._classified(raw.astype(np.float64))

    def feature_ranges(self) -> list[tuple[float, float] | None]:
        ranges: list[tuple[float, float] | None] = []
        for info in self._feature_infos[: self.n_features]:
            low, colon, high = info.strip("[]").partition(":")
            try:
                ranges.append((float(low), float(high)) if colon and ":" not in high else None)
            except ValueError:
                ranges.append(None)
        return ranges + [None] * (self.n_features - len(ranges))


def _lightgbm_header(text: str) -> dict[str, str]:
    header = {}
    for line in text.partition("\nTree=")[0].splitlines():
        key, equals, value = line.partition("=")
        if equals:
            header[key.strip()] = value.strip()
    return header


# --- shared ------------------------------------------------------------------------------------


def _split_ranges(
    splits: list[tuple[np.ndarray, np.ndarray]], n_features: int
) -> list[tuple[float, float] | None]:
    """Per feature, the span of the thresholds trees split it at (None: never split)."""
    lows = np.full(n_features, np.inf)
    highs = np.full(n_features, -np.inf)
    for features, thresholds in splits:
        used = (features >= 0) & (features < n_features) & np.isfinite(thresholds)
        np.minimum.at(lows, features[used], thresholds[used])
        np.maximum.at(highs, features[used], thresholds[used])
    return [
        (float(low), float(high)) if low <= high else None
        for low, high in zip(lows, highs, strict=True)
    ]


def _first_line(exc: BaseException) -> str:
    return public_text((str(exc).strip().splitlines() or [type(exc).__name__])[0])


# Loading XGBoost and LightGBM files is native code that can abort the process on malformed
# input (LightGBM does on truncated text), so an upload is loaded once in a child first.
# Optional integrations the libraries import when present; the check needs none of them, and
# skipping them makes the child start in under a second instead of several.
_CHILD_PRELUDE = (
    "import sys\n"
    "for name in ('sklearn', 'pandas', 'pyarrow', 'polars', 'dask', 'cudf', 'cupy', "
    "'datatable', 'graphviz', 'matplotlib'):\n"
    "    sys.modules[name] = None\n"
    "import numpy as np\n"
)
_CHILD_CHECKS = {
    "xgboost": _CHILD_PRELUDE
    + (
        "import xgboost as xgb\n"
        "b = xgb.Booster()\n"
        "b.load_model(bytearray(sys.stdin.buffer.read()))\n"
        "b.predict(xgb.DMatrix(np.zeros((2, b.num_features()))), validate_features=False)\n"
        "b.get_dump(dump_format='json')\n"
    ),
    "lightgbm": _CHILD_PRELUDE
    + (
        "import lightgbm as lgb\n"
        "b = lgb.Booster(model_str=sys.stdin.buffer.read().decode('utf-8'))\n"
        "b.predict(np.zeros((2, b.num_feature())), num_threads=1)\n"
        "b.dump_model()\n"
    ),
}
_LIBRARY_NAMES = {"xgboost": "XGBoost", "lightgbm": "LightGBM"}


def check_loads_in_child(flavor: str, data: bytes, timeout: float = 120.0) -> None:
    """Load ``data`` with the native library in a separate Python; 400 if that fails or dies."""
    library = _LIBRARY_NAMES[flavor]
    try:
        result = subprocess.run(  # noqa: S603 - our own interpreter and script; data on stdin
            [sys.executable, "-c", _CHILD_CHECKS[flavor]],
            input=data,
            capture_output=True,
            timeout=timeout,
            check=False,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
    except subprocess.TimeoutExpired:
        raise BadRequestError(f"{library} took over {timeout:.0f}s to load the file") from None
    if result.returncode == 0:
        return
    lines = [line for line in result.stderr.decode("utf-8", "replace").splitlines() if line]
    fatal = [line for line in lines if "Fatal" in line or "Error" in line]
    if fatal or lines:
        reason = public_text((fatal or lines)[-1])
    else:
        reason = "the file is damaged or truncated"
    crashed = " (its loader crashed)" if result.returncode < 0 else ""
    raise BadRequestError(f"{library} cannot load the file{crashed}: {reason}")
