"""skops files that name what a model should never need: a module whose import runs a program,
or a name under which a scikit-learn, NumPy or SciPy module merely re-exports something from
elsewhere (the standard library's file, process and import functions, ctypes, pathlib)."""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import numpy as np
import skops.io as sio
from sklearn.linear_model import LinearRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

# Importing this module runs NumPy's f2py command-line tool.
RUNS_ON_IMPORT = ("numpy.f2py.__main__", "main")

# (module named in the file, attribute) -> what it really is. Each module imports the object from
# elsewhere, so the name starts with a trusted library but the object does not belong to it.
RE_EXPORTS = {
    ("sklearn.datasets._base", "Path"): "pathlib.Path",
    ("numpy.ctypeslib", "c_intp"): "ctypes.c_long",
    ("sklearn.datasets._covtype", "TemporaryDirectory"): "tempfile.TemporaryDirectory",
    ("sklearn.utils._testing", "check_output"): "subprocess.check_output",
    ("sklearn.datasets._lfw", "remove"): "os.remove",
    ("sklearn.utils.discovery", "import_module"): "importlib.import_module",
}


def skops_naming(module: str, name: str) -> bytes:
    """A fitted ``FunctionTransformer(np.tanh) -> LinearRegression`` pipeline saved with skops,
    its function then renamed to ``module.name`` (what someone editing the file can write)."""
    rows = np.random.default_rng(0).normal(size=(40, 3))
    model = make_pipeline(FunctionTransformer(np.tanh), LinearRegression())
    model.fit(rows, rows @ np.array([1.0, 2.0, 3.0]))
    original = zipfile.ZipFile(io.BytesIO(sio.dumps(model)))
    schema = json.loads(original.read("schema.json"))
    renamed = _rename(schema, ("numpy", "tanh"), (module, name))
    assert renamed == 1, "the pipeline's schema changed shape"
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as edited:
        for member in original.namelist():
            content = original.read(member)
            if member == "schema.json":
                content = json.dumps(schema).encode()
            edited.writestr(member, content)
    return out.getvalue()


def _rename(node: Any, old: tuple[str, str], new: tuple[str, str]) -> int:
    """Point every schema node naming ``old`` at ``new``; returns how many there were."""
    count = 0
    if isinstance(node, dict):
        if (node.get("__module__"), node.get("__class__")) == old:
            node["__module__"], node["__class__"] = new
            count += 1
        count += sum(_rename(value, old, new) for value in node.values())
    elif isinstance(node, list):
        count += sum(_rename(value, old, new) for value in node)
    return count
