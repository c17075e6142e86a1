"""Every rule applied to an uploaded model file, in one place for a security review.

An uploaded file is untrusted: formats are recognised from the bytes (never the name), and
nothing a file holds is run, imported or read from elsewhere unless a rule below allows it.
The rules, in the order an upload meets them:

- Before anything here, the body is capped at ``MODELPORT_MAX_MODEL_UPLOAD_BYTES`` while it is
  read, and only a caller allowed to add a version gets that far (``http.uploads``).
- Recognising a file runs none of it (``pickle_kind``, ``skops_archive``, ``xgboost_document``,
  ``lightgbm_header``): pickles by their protocol header, compressed joblib pickles by
  decompressing at most ``_PEEK_BYTES`` out of at most ``_MAX_PEEK_INPUT`` input bytes; skops
  files by their zip directory and CRCs; XGBoost models by a strict JSON / UBJSON read in Python
  (no truncation, no stray bytes, nested at most ``UBJSON_MAX_DEPTH`` deep; the UBJSON reader
  also refuses counts longer than the file); LightGBM models by their text layout, because
  LightGBM aborts the process on some malformed files.
- Pickle and joblib files run code when loaded: accepted only from administrators where
  ``MODELPORT_ALLOW_PICKLE=true`` (``pickles_allowed``, ``refuse_pickle``: 403 otherwise), and
  ``load_pickle`` is the one place a pickle is unpickled.
- skops files: every type the file names must be on an allow-list built from the installed
  scikit-learn, NumPy and SciPy, decided by name before anything is imported (``load_skops``).
  Loading a stored skops artifact to serve it goes through the same ``load_skops``.
- ONNX models (``check_onnx``): no tensor at any depth keeps its data in an external file (ONNX
  Runtime would read it; ``runtimes.onnx`` applies ``refuse_external_data`` again to every model
  it loads), no operator outside ``ai.onnx`` / ``ai.onnx.ml`` (custom operators are native code),
  and ``onnx.checker`` passes.
- XGBoost and LightGBM files are loaded once in a child Python before this process touches them
  (``check_loads_in_child``), within a time limit.

Whether modelport can serve a model (one 2-D numeric input, a fitted estimator, probabilities
for a classifier, a matching signature) is decided where the model is described
(``ingest.preparation`` and the runtimes): those rules describe a model rather than guard
the server.

This module imports nothing from ``runtimes`` (the runtimes import it, to apply the load-time
rules), so it sits below them; the rest of ``ingest`` sits above them.
"""

from __future__ import annotations

import bz2
import functools
import importlib
import io
import json
import lzma
import os
import subprocess
import sys
import threading
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import AttributeProto, GraphProto, NodeProto, SparseTensorProto, TensorProto

from modelport.errors import (
    BadRequestError,
    ForbiddenError,
    ServiceUnavailableError,
    public_text,
)
from modelport.ingest import ubjson
from modelport.ingest.build_only import import_skops_io, without_torch

# --- pickle and joblib -------------------------------------------------------------------------

PICKLE_KINDS = frozenset({"pickle", "joblib"})  # file kinds that run code when loaded
_PICKLE_PROTOCOLS = range(2, 6)  # protocol 2+ files start with 0x80 <protocol>
_PEEK_BYTES = 16
_PEEK_CHUNK = 64 * 1024
_MAX_PEEK_INPUT = 4 * 1024 * 1024


def pickles_allowed(allow_pickle: bool, uploader_is_admin: bool) -> bool:
    """Whether an upload may be a pickle: the operator allows them and an administrator sends it."""
    return allow_pickle and uploader_is_admin


def refuse_pickle(kind: str, allowed: bool) -> None:
    """403 for a pickle or joblib file where pickles are not allowed."""
    if kind in PICKLE_KINDS and not allowed:
        raise ForbiddenError(
            "pickle and joblib files run code when they are loaded, so they are accepted only "
            "from administrators when MODELPORT_ALLOW_PICKLE=true; save the model with skops "
            "(skops.io.dump) or convert it to ONNX instead"
        )


def pickle_kind(data: bytes) -> str | None:
    """What kind of pickle the bytes are ("pickle", or "joblib" when compressed), or None;
    nothing is unpickled."""
    if _is_pickle(data):
        return "pickle"
    if _is_compressed_pickle(data):
        return "joblib"
    return None


def _is_pickle(data: bytes) -> bool:
    return len(data) >= 2 and data[0] == 0x80 and data[1] in _PICKLE_PROTOCOLS


def _is_compressed_pickle(data: bytes) -> bool:
    """joblib.dump(..., compress=...) writes a compressed pickle: peek inside, never unpickle."""
    if data[:1] == b"\x78" and data[1:2] in (b"\x01", b"\x5e", b"\x9c", b"\xda"):
        return _is_pickle(_peek(zlib.decompressobj, data))
    if data.startswith(b"\x1f\x8b"):  # gzip
        return _is_pickle(_peek(lambda: zlib.decompressobj(16 + zlib.MAX_WBITS), data))
    if data.startswith(b"BZh"):
        return _is_pickle(_peek(bz2.BZ2Decompressor, data))
    if data.startswith((b"\xfd7zXZ\x00", b"\x5d\x00\x00")):  # xz, legacy lzma
        return _is_pickle(_peek(lzma.LZMADecompressor, data))
    # An lz4 frame (joblib reads it with the lz4 package): too rare to peek into.
    return data.startswith(b"\x04\x22\x4d\x18")


def _peek(decompressor: Callable[[], Any], data: bytes) -> bytes:
    """The first bytes of the decompressed stream. bz2 yields nothing before a whole block
    (up to 900 kB) has arrived, so input is fed in chunks until output appears."""
    stream = decompressor()
    found = b""
    try:
        for start in range(0, min(len(data), _MAX_PEEK_INPUT), _PEEK_CHUNK):
            found += stream.decompress(data[start : start + _PEEK_CHUNK], _PEEK_BYTES - len(found))
            if len(found) >= _PEEK_BYTES or getattr(stream, "eof", False):
                break
    except (OSError, ValueError, EOFError, lzma.LZMAError, zlib.error):
        pass
    return found


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


# --- skops -------------------------------------------------------------------------------------

# The libraries whose types a skops file may name (see ``trusted_types``).
TRUSTED_LIBRARIES = ("sklearn", "numpy", "scipy")


def skops_archive(data: bytes) -> list[str]:
    """The members of a skops file: a readable zip with a schema.json, every member's CRC good."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = archive.namelist()
            broken = archive.testzip()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
        raise BadRequestError(
            f"the file is a zip archive that cannot be read (truncated?): {exc}"
        ) from None
    if "schema.json" not in names:
        raise BadRequestError(
            "the file is a zip archive but not a skops model (it has no schema.json); save "
            "scikit-learn models with skops.io.dump"
        )
    if broken is not None:
        raise BadRequestError(f"the skops archive is damaged: member {broken!r} fails its CRC")
    return names


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


# --- ONNX --------------------------------------------------------------------------------------
#
# Tensors hide in more places than the main graph's initializers: sparse initializers, the
# attributes of every node (a ``Constant``'s value, any tensor-valued attribute) and the
# subgraphs that attributes carry (the branches of ``If``, the bodies of ``Loop`` and ``Scan``,
# nested to any depth), model-local functions and training graphs. A tensor anywhere among them
# may say that its data lives in an "external" file; ONNX Runtime would read that file. The
# walk below is iterative (no recursion limit to hit) and visits each of those places once.

# Operator domains ONNX Runtime implements itself; anything else is a custom op (native code).
ALLOWED_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})
SELF_CONTAINED_HINT = (
    "save the model self-contained, with every tensor inside the .onnx file: "
    "onnx.save(model, path, save_as_external_data=False)"
)

Item = tuple[str, GraphProto | NodeProto | AttributeProto]


def walk(
    model: onnx.ModelProto,
) -> Iterator[tuple[str, NodeProto | TensorProto | SparseTensorProto]]:
    """Every node and every tensor in ``model``, each with a short note of where it sits (a
    sparse tensor comes as itself and as the tensors of its values and indices)."""
    pending: list[Item] = [("the main graph", model.graph)]
    for index, info in enumerate(model.training_info):
        pending.append((f"training graph {index} (initialization)", info.initialization))
        pending.append((f"training graph {index} (algorithm)", info.algorithm))
    for function in model.functions:
        where = f"function {function.name!r}"
        pending.extend((where, node) for node in function.node)
        pending.extend((where, attribute) for attribute in function.attribute_proto)
    while pending:
        where, item = pending.pop()
        if isinstance(item, GraphProto):
            yield from ((f"an initializer of {where}", t) for t in item.initializer)
            for sparse in item.sparse_initializer:
                yield from _sparse_parts(f"a sparse initializer of {where}", sparse)
            pending.extend((where, node) for node in item.node)
        elif isinstance(item, NodeProto):
            yield where, item
            inside = f"node {item.name or item.op_type!r} ({item.op_type}) in {where}"
            pending.extend((inside, attribute) for attribute in item.attribute)
        else:
            inside = f"attribute {item.name!r} of {where}"
            yield from ((inside, tensor) for tensor in _attribute_tensors(item))
            sparse = [item.sparse_tensor] if item.HasField("sparse_tensor") else []
            for tensor in [*sparse, *item.sparse_tensors]:
                yield from _sparse_parts(inside, tensor)
            graphs = [item.g] if item.HasField("g") else []
            pending.extend((inside, graph) for graph in [*graphs, *item.graphs])


def _sparse_parts(
    where: str, sparse: SparseTensorProto
) -> Iterator[tuple[str, SparseTensorProto | TensorProto]]:
    """The sparse tensor itself (its dense shape is what ONNX Runtime allocates), then the
    tensors holding its values and indices."""
    yield where, sparse
    yield where, sparse.values
    yield where, sparse.indices


def _attribute_tensors(attribute: AttributeProto) -> Iterator[TensorProto]:
    if attribute.HasField("t"):
        yield attribute.t
    yield from attribute.tensors


def is_external(tensor: TensorProto) -> bool:
    """Whether ONNX Runtime would look for this tensor's data outside the model's bytes."""
    return tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data) > 0


def refuse_external_data(model: onnx.ModelProto) -> None:
    """400 when any tensor, at any depth, keeps its data in another file."""
    for where, item in walk(model):
        if isinstance(item, TensorProto) and is_external(item):
            name = f" {item.name!r}" if item.name else ""
            # The location itself is not echoed: it is a path on someone's machine.
            raise BadRequestError(
                f"the ONNX model keeps the data of tensor{name} ({where}) in an external file, "
                f"which modelport does not read; {SELF_CONTAINED_HINT}"
            )


def custom_domains(model: onnx.ModelProto) -> list[str]:
    """Operator domains beyond ONNX's own, used by any node at any depth or imported."""
    domains = {o.domain for o in model.opset_import}
    for function in model.functions:
        domains |= {function.domain} | {o.domain for o in function.opset_import}
    domains |= {item.domain for _, item in walk(model) if isinstance(item, NodeProto)}
    return sorted(domain for domain in domains if domain not in ALLOWED_DOMAINS)


def check_onnx(model: onnx.ModelProto) -> None:
    """Refuse what would make the server read other files or load native code, wherever it
    sits in the model (subgraphs, functions and node attributes included), then anything
    ``onnx.checker`` finds wrong with the graph."""
    refuse_external_data(model)
    custom = custom_domains(model)
    if custom:
        raise BadRequestError(
            f"the ONNX model uses custom operator domains {custom}, which are not allowed; "
            "use the standard ONNX operators (domains ai.onnx and ai.onnx.ml) only"
        )
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise BadRequestError(
            f"the ONNX model does not pass onnx.checker: {public_text(str(exc))}"
        ) from None


# --- budgets: what a model may declare ---------------------------------------------------------
#
# A file of a few hundred bytes can declare a graph that builds a tensor of terabytes at load, a
# loop of 10^10 iterations, an input a million columns wide, or a booster of 10^8 classes. What
# a file declares is checked here before anything loads it; what loading and running it costs
# is then measured in a child process (``measure_in_child``).

GiB = 1024**3


@dataclass(frozen=True)
class ModelBudgets:
    """The limits a model file is held to; each is a setting (the names are in the messages)."""

    max_nodes: int = 10_000
    max_initializer_bytes: int = GiB
    max_input_width: int = 100_000
    max_loop_trips: int = 1_000_000
    max_classes: int = 10_000
    max_trees: int = 100_000
    trial_memory_bytes: int = 2 * GiB
    trial_seconds: float = 30.0
    trial_rows: int = 1000  # the most rows one runtime call may get
    trials_at_once: int = 2

    @classmethod
    def from_settings(cls, settings: Any) -> ModelBudgets:
        return cls(
            max_nodes=settings.model_max_nodes,
            max_initializer_bytes=settings.model_max_initializer_bytes,
            max_input_width=settings.model_max_input_width,
            max_loop_trips=settings.model_max_loop_trips,
            max_classes=settings.model_max_classes,
            max_trees=settings.model_max_trees,
            trial_memory_bytes=settings.model_trial_memory_bytes,
            trial_seconds=settings.model_trial_seconds,
            trials_at_once=settings.model_trials_at_once,
            # A request larger than a batch runs alone, whole: the trial runs the larger.
            trial_rows=max(settings.max_batch_rows, settings.max_batch_size),
        )


def _over_limit(what: str, value: int, limit: int, setting: str, hint: str) -> BadRequestError:
    return BadRequestError(
        f"{what} {value:,}, over the limit of {limit:,} (MODELPORT_{setting}); {hint}"
    )


# Nodes whose output size follows from constant inputs or attributes: ONNX Runtime builds them
# at load when their inputs are constant (constant folding), or at the first call.
_SHAPE_INPUT = {"ConstantOfShape": 0, "Expand": 1}
_SHAPE_ATTRIBUTE = ("RandomNormal", "RandomUniform")
_SMALL_CONSTANT = 64  # elements: shapes, trip counts and ranges are small tensors
_CLASS_LABELS = ("classlabels_ints", "classlabels_int64s", "classlabels_strings")


def check_onnx_budget(model: onnx.ModelProto, budgets: ModelBudgets) -> None:
    """400 when the model declares more than the budgets allow: nodes (every graph, nested
    included), bytes of initializers and constants (by their declared shapes, sparse ones by
    their dense shape, and tensors built from constant shapes), loop trip counts, input width,
    and the classes and trees of ``ai.onnx.ml`` ensembles."""
    _check_input_width(model, budgets)
    constants = _small_constants(model)
    nodes = 0
    total, largest, largest_where = 0, 0, ""
    for where, item in walk(model):
        if isinstance(item, NodeProto):
            nodes += 1
            _check_loop(item, where, constants, budgets)
            _check_ensemble(item, where, budgets)
            size = _built_bytes(item, constants)
            where = f"node {item.name or item.op_type!r} ({item.op_type}) in {where}"
        elif isinstance(item, SparseTensorProto):
            size = _elements(item.dims) * _item_size(item.values.data_type)
        else:
            size = _elements(item.dims) * _item_size(item.data_type)
        total += size
        if size > largest:
            largest, largest_where = size, where
    if nodes > budgets.max_nodes:
        raise _over_limit(
            "the number of nodes in the ONNX model (every graph, nested ones included) is",
            nodes,
            budgets.max_nodes,
            "MODEL_MAX_NODES",
            "serve a smaller graph",
        )
    if total > budgets.max_initializer_bytes:
        raise BadRequestError(
            f"the ONNX model's initializers and constants declare {total:,} bytes, over the "
            f"limit of {budgets.max_initializer_bytes:,} (MODELPORT_MODEL_MAX_INITIALIZER_BYTES);"
            f" the largest, {largest:,} bytes, is in {largest_where}"
        )


def _check_input_width(model: onnx.ModelProto, budgets: ModelBudgets) -> None:
    """The values one row of each input holds: the product of its fixed dimensions after the
    first (the batch). Checked before the signature, which has one field per value, is built."""
    initializers = {tensor.name for tensor in model.graph.initializer}
    for graph_input in model.graph.input:
        if graph_input.name in initializers:
            continue
        dims = graph_input.type.tensor_type.shape.dim
        width = _elements(d.dim_value for d in dims[1:] if d.HasField("dim_value"))
        if width > budgets.max_input_width:
            raise _over_limit(
                f"the width of the ONNX model's input {graph_input.name!r} (values per row) is",
                width,
                budgets.max_input_width,
                "MODEL_MAX_INPUT_WIDTH",
                "serve a model with fewer features",
            )


def _check_loop(
    node: NodeProto, where: str, constants: dict[str, np.ndarray], budgets: ModelBudgets
) -> None:
    """A ``Loop`` runs at most its trip count ``M``: refused above the limit where ``M`` is a
    constant. A loop with neither ``M`` nor a condition never ends, and is refused. Where ``M``
    or the condition is computed, the trial inference and the time limit on every call bound
    it instead."""
    if node.op_type != "Loop" or node.domain not in ("", "ai.onnx"):
        return
    trips = node.input[0] if len(node.input) > 0 else ""
    condition = node.input[1] if len(node.input) > 1 else ""
    loop = f"the Loop {node.name!r} in {where}" if node.name else f"a Loop in {where}"
    if not trips and not condition:
        raise BadRequestError(
            f"{loop} has neither a trip count nor a condition, so it never ends; give it a "
            "trip count"
        )
    value = constants.get(trips)
    if value is not None and value.size == 1:
        count = int(value.ravel()[0])
        if count > budgets.max_loop_trips:
            raise _over_limit(
                f"the trip count of {loop} is",
                count,
                budgets.max_loop_trips,
                "MODEL_MAX_LOOP_TRIPS",
                "loop fewer times",
            )


def _check_ensemble(node: NodeProto, where: str, budgets: ModelBudgets) -> None:
    if node.domain != "ai.onnx.ml":
        return
    for attribute in node.attribute:
        if attribute.name in _CLASS_LABELS:
            labels = len(attribute.ints) or len(attribute.strings)
            if labels > budgets.max_classes:
                raise _over_limit(
                    f"the number of classes of the {node.op_type} in {where} is",
                    labels,
                    budgets.max_classes,
                    "MODEL_MAX_CLASSES",
                    "serve a model with fewer classes",
                )
        elif attribute.name == "nodes_treeids":
            trees = len(set(attribute.ints))
            if trees > budgets.max_trees:
                raise _over_limit(
                    f"the number of trees of the {node.op_type} in {where} is",
                    trees,
                    budgets.max_trees,
                    "MODEL_MAX_TREES",
                    "serve a model with fewer trees",
                )


def _built_bytes(node: NodeProto, constants: dict[str, np.ndarray]) -> int:
    """Bytes a node builds whatever its input: a ``Constant``'s lists of values, and tensors
    whose shape is a constant (``ConstantOfShape``, ``Expand`` at least that shape, ``Range``,
    ``RandomNormal`` / ``RandomUniform``)."""
    if node.op_type == "Constant":
        return sum(
            4 * len(a.floats) + 8 * len(a.ints) + sum(len(v) for v in a.strings)
            for a in node.attribute
        )
    if node.op_type in _SHAPE_INPUT:
        index = _SHAPE_INPUT[node.op_type]
        shape = constants.get(node.input[index]) if len(node.input) > index else None
        if shape is None:
            return 0
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        # ConstantOfShape makes float32 zeros by default; Expand's type is its input's (>= 1).
        size = _item_size(value.data_type) if value is not None else 4
        return _elements(abs(int(d)) for d in shape.ravel()) * (
            size if node.op_type == "ConstantOfShape" else 1
        )
    if node.op_type == "Range":
        bounds = [constants.get(name) for name in node.input[:3]]
        if len(bounds) == 3 and all(b is not None and b.size == 1 for b in bounds):
            start, limit, delta = (float(b.ravel()[0]) for b in bounds if b is not None)
            if delta and np.isfinite([start, limit, delta]).all():
                return max(0, int((limit - start) / delta)) * 4
        return 0
    if node.op_type in _SHAPE_ATTRIBUTE:
        dims = next((list(a.ints) for a in node.attribute if a.name == "shape"), [])
        return _elements(abs(d) for d in dims) * 4
    return 0


def _small_constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Small numeric initializers and ``Constant`` outputs by name, across every graph (names
    are unique in a well-formed model): the values shapes and trip counts are read from."""
    found: dict[str, np.ndarray] = {}
    pending: list[GraphProto] = [model.graph]
    while pending:
        graph = pending.pop()
        for tensor in graph.initializer:
            _remember(found, tensor.name, tensor)
        for node in graph.node:
            for attribute in node.attribute:
                if node.op_type == "Constant" and node.output:
                    if attribute.name == "value" and attribute.HasField("t"):
                        _remember(found, node.output[0], attribute.t)
                    elif attribute.name == "value_ints":
                        found[node.output[0]] = np.array(attribute.ints, dtype=np.int64)
                    elif attribute.name == "value_int":
                        found[node.output[0]] = np.array([attribute.i], dtype=np.int64)
                    elif attribute.name == "value_float":
                        found[node.output[0]] = np.array([attribute.f], dtype=np.float64)
                if attribute.HasField("g"):
                    pending.append(attribute.g)
                pending.extend(attribute.graphs)
    return found


def _remember(found: dict[str, np.ndarray], name: str, tensor: TensorProto) -> None:
    if not name or _elements(tensor.dims) > _SMALL_CONSTANT or is_external(tensor):
        return
    try:
        value = onnx.numpy_helper.to_array(tensor)
    except Exception:  # a malformed tensor: onnx.checker or ONNX Runtime refuses it
        return
    if value.dtype.kind in "iuf":
        found[name] = value


def _elements(dims: Any) -> int:
    count = 1
    for dim in dims:
        count *= max(int(dim), 0)
    return count


def _item_size(data_type: int) -> int:
    try:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(data_type)
    except (KeyError, ValueError, TypeError):
        return 1
    return 8 if dtype == np.dtype(object) else max(dtype.itemsize, 1)


# --- XGBoost and LightGBM ----------------------------------------------------------------------

UBJSON_MAX_DEPTH = 64  # nesting an XGBoost UBJ model may have


def xgboost_document(data: bytes) -> tuple[str, dict[str, Any]] | None:
    """XGBoost JSON or UBJ, read strictly in Python: ``(kind, document)``, or None when the
    bytes are some other thing starting with '{'. XGBoost's own reader accepts some truncated
    files and returns a partial model, so any truncation or stray byte is refused here."""
    head = data[:256]
    if data.lstrip()[1:2] in (b'"', b"\n", b"\r", b" ", b"\t", b"}"):
        try:
            parsed = json.loads(data)
        except RecursionError:
            # json gives up past the interpreter's recursion limit (about a thousand levels);
            # an XGBoost model nests a few levels, so this is no model at all.
            raise BadRequestError(
                "the JSON file is nested too deeply to be a model (XGBoost JSON models nest "
                "a few levels)"
            ) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            if b'"learner"' in head:
                raise BadRequestError(
                    f"the XGBoost JSON model is truncated or invalid: {exc}"
                ) from None
            return None
        kind = "xgboost-json"
    else:
        try:
            parsed = ubjson.loads(data, max_depth=UBJSON_MAX_DEPTH)
        except ubjson.UBJSONError as exc:
            if b"learner" in head:
                raise BadRequestError(
                    f"the XGBoost UBJ model is truncated or invalid: {exc}"
                ) from None
            return None
        kind = "xgboost-ubj"
    if not (isinstance(parsed, dict) and isinstance(parsed.get("learner"), dict)):
        if kind == "xgboost-json":
            return None  # some other JSON document
        raise BadRequestError("the UBJSON file is not an XGBoost model (no 'learner')")
    return kind, parsed


def lightgbm_header(data: bytes) -> dict[str, str]:
    """The header of a LightGBM text model; refuses files LightGBM's parser would crash on.

    LightGBM aborts the whole process on some malformed files, so the layout is checked here
    and the file is then loaded once in a child process before this process touches it.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequestError("the LightGBM model is not UTF-8 text") from None
    header_text, separator, _ = text.partition("\nTree=")
    if not separator:
        raise BadRequestError("the LightGBM model has no trees (is the file truncated?)")
    if "\nend of trees" not in text:
        raise BadRequestError("the LightGBM model is truncated: 'end of trees' is missing")
    header = {}
    for line in header_text.splitlines():
        key, equals, value = line.partition("=")
        if equals:
            header[key.strip()] = value.strip()
    missing = [
        key
        for key in ("version", "num_class", "max_feature_idx", "objective", "feature_names")
        if key not in header
    ]
    if missing:
        raise BadRequestError(f"the LightGBM model's header lacks {missing}")
    return header


def check_boosted_budget(
    kind: str, data: bytes, parsed: dict[str, Any], budgets: ModelBudgets
) -> None:
    """400 when an XGBoost or LightGBM file declares more classes, trees or features than the
    budgets allow: the libraries allocate by what the header says (a LightGBM header of 10^8
    classes makes a prediction of one row take 800 MB), before any tree is read."""
    if kind == "lightgbm":
        library = "LightGBM"
        classes = _count(parsed.get("num_class"), "num_class", library)
        features = _count(parsed.get("max_feature_idx"), "max_feature_idx", library) + 1
        trees = data.count(b"\nTree=")
    else:
        library = "XGBoost"
        learner = parsed.get("learner", {})
        params = learner.get("learner_model_param", {}) if isinstance(learner, dict) else {}
        params = params if isinstance(params, dict) else {}
        classes = _count(params.get("num_class", "0"), "num_class", library)
        features = _count(params.get("num_feature", "0"), "num_feature", library)
        trees = _xgboost_trees(learner)
    for what, value, limit, setting in (
        ("number of classes", classes, budgets.max_classes, "MODEL_MAX_CLASSES"),
        ("number of trees", trees, budgets.max_trees, "MODEL_MAX_TREES"),
        ("number of features", features, budgets.max_input_width, "MODEL_MAX_INPUT_WIDTH"),
    ):
        if value > limit:
            raise _over_limit(
                f"the {library} model's {what} is", value, limit, setting, "serve a smaller model"
            )


def _count(value: Any, key: str, library: str) -> int:
    try:
        return max(int(str(value).strip()), 0)
    except ValueError:
        raise BadRequestError(f"the {library} model's {key} is not a whole number") from None


def _xgboost_trees(learner: Any) -> int:
    """Trees an XGBoost document holds or declares (gbtree, or dart's nested gbtree)."""
    booster = learner.get("gradient_booster", {}) if isinstance(learner, dict) else {}
    booster = booster if isinstance(booster, dict) else {}
    model = booster.get("model") or (booster.get("gbtree") or {}).get("model") or {}
    if not isinstance(model, dict):
        return 0
    declared = model.get("gbtree_model_param", {})
    declared = declared.get("num_trees", "0") if isinstance(declared, dict) else "0"
    trees = model.get("trees", [])
    return max(
        _count(declared, "num_trees", "XGBoost"), len(trees) if isinstance(trees, list) else 0
    )


# --- budgets: what loading and running a model costs, measured in a child process ---------------
#
# Loading a model is native code that may abort the process on malformed input (LightGBM does on
# truncated text), allocate without bound, or run for ever. So a model is first loaded, and a
# trial inference of the largest batch run, in a separate Python (``modelport.ingest.trial``)
# under an address-space limit and a wall-time limit: the server process never meets a file
# that would take it down, and the version records the memory it needs (the model cache is
# bounded by it). XGBoost and LightGBM uploads meet this before this process touches them.

TRIAL_MODULE = "modelport.ingest.trial"
_LIBRARIES = {
    "onnx": "ONNX Runtime",
    "sklearn": "scikit-learn",
    "sklearn-pickle": "scikit-learn",
    "xgboost": "XGBoost",
    "lightgbm": "LightGBM",
}
_MiB = 1024**2


class UnsafeToLoadError(BadRequestError):
    """Loading the model and a trial inference broke the memory or time budget, or killed the
    loader: this file must never be loaded in the server process."""


@dataclass(frozen=True)
class Trial:
    memory_bytes: int  # peak resident memory of the load and the trial, above the child's own
    seconds: float


def measure_in_child(flavor: str, data: bytes, budgets: ModelBudgets) -> Trial:
    """Load ``data`` as ``flavor`` (a serving flavor) and run a trial inference of
    ``budgets.trial_rows`` rows of zeros in a child Python within the memory and time budgets.

    Raises ``UnsafeToLoadError`` (400) when the child runs out of memory or time or dies, and
    ``BadRequestError`` when the library cannot load the file at all.
    """
    library = _LIBRARIES[flavor]
    arguments = [str(budgets.trial_rows), str(budgets.trial_memory_bytes)]
    slots = _trial_slots(budgets.trials_at_once)
    # Trials at once bound what they take together (each up to the trial memory); an upload
    # waits for a slot at most as long as one trial may run.
    if not slots.acquire(timeout=budgets.trial_seconds):
        raise ServiceUnavailableError(
            f"{budgets.trials_at_once} other model files are being checked "
            "(MODELPORT_MODEL_TRIALS_AT_ONCE); try again in a minute"
        )
    try:
        return _run_trial(flavor, library, arguments, data, budgets)
    finally:
        slots.release()


@functools.cache
def _trial_slots(count: int) -> threading.BoundedSemaphore:
    return threading.BoundedSemaphore(count)


def _run_trial(
    flavor: str, library: str, arguments: list[str], data: bytes, budgets: ModelBudgets
) -> Trial:
    try:
        result = subprocess.run(  # noqa: S603 - our own interpreter and module; data on stdin
            [sys.executable, "-m", TRIAL_MODULE, flavor, *arguments],
            input=data,
            capture_output=True,
            timeout=budgets.trial_seconds,
            check=False,
            env=_child_environment(),
        )
    except subprocess.TimeoutExpired:  # subprocess.run has killed the child
        raise UnsafeToLoadError(
            f"loading the model and a trial inference of {budgets.trial_rows:,} rows took over "
            f"{budgets.trial_seconds:g} s, the limit (MODELPORT_MODEL_TRIAL_SECONDS); serve a "
            "smaller or faster model"
        ) from None
    report = _last_json(result.stdout)
    if result.returncode == 0 and "memory_bytes" in report:
        memory = int(report["memory_bytes"])
        if memory > budgets.trial_memory_bytes:
            raise _out_of_memory(budgets, f"it used {memory // _MiB:,} MiB")
        return Trial(memory, float(report.get("seconds", 0.0)))
    reason = public_text(str(report.get("error") or _last_line(result.stderr)), 400)
    if report.get("out_of_memory"):
        raise _out_of_memory(budgets, reason)
    if result.returncode > 0:  # the library refused the file (or, rarely, exited)
        raise BadRequestError(f"{library} cannot load the file: {reason or 'it is damaged'}")
    # Killed by a signal (a native abort, a crash): the same file would take the server down.
    raise UnsafeToLoadError(
        f"{library} cannot load the file (its loader crashed; loading it would take the server "
        f"down, or it needs more than the {budgets.trial_memory_bytes // _MiB:,} MiB of "
        f"MODELPORT_MODEL_TRIAL_MEMORY_BYTES): {reason or 'the file is damaged or truncated'}"
    )


def _out_of_memory(budgets: ModelBudgets, reason: str) -> UnsafeToLoadError:
    return UnsafeToLoadError(
        f"loading the model and a trial inference of {budgets.trial_rows:,} rows needs more "
        f"than {budgets.trial_memory_bytes // _MiB:,} MiB of memory, the limit "
        f"(MODELPORT_MODEL_TRIAL_MEMORY_BYTES); serve a smaller model ({reason})"
    )


def _child_environment() -> dict[str, str]:
    """The child finds this very modelport, and its libraries keep to one thread (fewer
    threads reserve less address space, and the trial leaves the other core to the server)."""
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)
    return {
        **os.environ,
        "PYTHONPATH": path,
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MALLOC_ARENA_MAX": "2",
    }


def _last_json(stdout: bytes) -> dict[str, Any]:
    for line in reversed(stdout.decode("utf-8", "replace").splitlines()):
        try:
            parsed = json.loads(line)
        except ValueError:
            continue
        if isinstance(parsed, dict):
            return parsed
    return {}


def _last_line(stderr: bytes) -> str:
    lines = [line for line in stderr.decode("utf-8", "replace").splitlines() if line.strip()]
    fatal = [line for line in lines if "Fatal" in line or "Error" in line]
    return (fatal or lines or [""])[-1]
