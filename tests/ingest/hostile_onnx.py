"""ONNX models whose tensors point at "external data": a file the server can read.

Each builder returns a model that, if ONNX Runtime resolved its external data, would predict the
first four bytes of that file (read as a float32) for every row: one numeric 2-D input of
``n_features`` columns and one ``[rows, 1]`` float output, so it passes every other upload check.
Only where the tensor sits in the model differs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from onnx import (
    GraphProto,
    ModelProto,
    NodeProto,
    SparseTensorProto,
    TensorProto,
    helper,
    numpy_helper,
)

LEAKED = "leaked"  # the [1] float tensor holding the file's first four bytes
SECRET_MARKER = np.float32(4242.125)  # what those bytes say, in the secret files tests make


def secret_bytes() -> bytes:
    """A secret file's content: a marker a prediction would reveal, then more secret bytes."""
    return SECRET_MARKER.tobytes() + b"not-for-any-caller" * 4


def external_tensor(name: str, location: str, data_type: int = TensorProto.FLOAT) -> TensorProto:
    """A one-element tensor whose data lives in ``location`` (what onnx.save writes with
    save_as_external_data=True): no data of its own, only where to read it."""
    tensor = TensorProto(name=name, data_type=data_type, dims=[1])
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "4")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def _model(
    nodes: list[NodeProto],
    n_features: int,
    initializer: Sequence[TensorProto] = (),
    sparse_initializer: Sequence[SparseTensorProto] = (),
) -> ModelProto:
    """``rows @ zeros + leaked``: the leaked value on every row."""
    zeros = numpy_helper.from_array(np.zeros((n_features, 1), dtype=np.float32), "zeros")
    tail = [
        helper.make_node("MatMul", ["features", "zeros"], ["nothing"]),
        helper.make_node("Add", ["nothing", LEAKED], ["variable"]),
    ]
    body = helper.make_graph(
        [*nodes, *tail],
        "hostile",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, n_features])],
        [helper.make_tensor_value_info("variable", TensorProto.FLOAT, [None, 1])],
        initializer=[zeros, *initializer],
        sparse_initializer=list(sparse_initializer),
    )
    model = helper.make_model(body, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _branch(name: str, location: str, output: str = "out") -> GraphProto:
    """A subgraph with no inputs whose initializer is the external tensor."""
    return helper.make_graph(
        [helper.make_node("Identity", ["secret"], [output])],
        name,
        [],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, [1])],
        initializer=[external_tensor("secret", location)],
    )


def _true(name: str) -> NodeProto:
    return helper.make_node(
        "Constant", [], [name], value=helper.make_tensor(name, TensorProto.BOOL, [], [True])
    )


def _read_in_a_branch(name: str) -> list[NodeProto]:
    """``leaked = name``, read from inside an If branch: ONNX Runtime's graph optimizers leave
    values only a subgraph reads alone, so this is how an attacker gets a top-level value out."""
    branch = helper.make_graph(
        [helper.make_node("Identity", [name], ["out"])],
        "reader",
        [],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1])],
    )
    return [
        _true("reader_condition"),
        helper.make_node(
            "If", ["reader_condition"], [LEAKED], then_branch=branch, else_branch=branch
        ),
    ]


def top_level(location: str, n_features: int) -> ModelProto:
    return _model(
        _read_in_a_branch("secret"),
        n_features,
        initializer=[external_tensor("secret", location)],
    )


def constant_node(location: str, n_features: int) -> ModelProto:
    node = helper.make_node("Constant", [], ["secret"], value=external_tensor("value", location))
    return _model([node, *_read_in_a_branch("secret")], n_features)


def if_branch(location: str, n_features: int) -> ModelProto:
    nodes = [
        _true("condition"),
        helper.make_node(
            "If",
            ["condition"],
            [LEAKED],
            then_branch=_branch("then", location),
            else_branch=_branch("else", location),
        ),
    ]
    return _model(nodes, n_features)


def nested_two_deep(location: str, n_features: int) -> ModelProto:
    """An If whose branch holds another If whose branch holds the tensor."""
    inner = helper.make_node(
        "If",
        ["inner_condition"],
        ["out"],
        then_branch=_branch("inner_then", location),
        else_branch=_branch("inner_else", location),
    )
    outer_branch = helper.make_graph(
        [_true("inner_condition"), inner],
        "outer_then",
        [],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1])],
    )
    harmless = helper.make_graph(
        [
            helper.make_node(
                "Constant",
                [],
                ["out"],
                value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]),
            )
        ],
        "outer_else",
        [],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1])],
    )
    nodes = [
        _true("condition"),
        helper.make_node(
            "If", ["condition"], [LEAKED], then_branch=outer_branch, else_branch=harmless
        ),
    ]
    return _model(nodes, n_features)


def loop_body(location: str, n_features: int) -> ModelProto:
    """One iteration of a Loop whose body emits the tensor as its scan output."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["condition_in"], ["condition_out"]),
            helper.make_node("Identity", ["secret"], ["out"]),
        ],
        "loop_body",
        [
            helper.make_tensor_value_info("iteration", TensorProto.INT64, []),
            helper.make_tensor_value_info("condition_in", TensorProto.BOOL, []),
        ],
        [
            helper.make_tensor_value_info("condition_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("out", TensorProto.FLOAT, [1]),
        ],
        initializer=[external_tensor("secret", location)],
    )
    nodes = [
        helper.make_node(
            "Constant", [], ["trips"], value=helper.make_tensor("trips", TensorProto.INT64, [], [1])
        ),
        _true("condition"),
        helper.make_node("Loop", ["trips", "condition"], ["stacked"], body=body),
        helper.make_node(
            "Constant",
            [],
            ["shape"],
            value=helper.make_tensor("shape", TensorProto.INT64, [1], [1]),
        ),
        helper.make_node("Reshape", ["stacked", "shape"], [LEAKED]),
    ]
    return _model(nodes, n_features)


def scan_body(location: str, n_features: int) -> ModelProto:
    """A Scan over one element whose body adds the tensor to it (zero)."""
    body = helper.make_graph(
        [helper.make_node("Add", ["element", "secret"], ["out"])],
        "scan_body",
        [helper.make_tensor_value_info("element", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1])],
        initializer=[external_tensor("secret", location)],
    )
    nodes = [
        helper.make_node(
            "Constant",
            [],
            ["scanned"],
            value=helper.make_tensor("scanned", TensorProto.FLOAT, [1, 1], [0.0]),
        ),
        helper.make_node("Scan", ["scanned"], ["stacked"], body=body, num_scan_inputs=1),
        helper.make_node(
            "Constant",
            [],
            ["shape"],
            value=helper.make_tensor("shape", TensorProto.INT64, [1], [1]),
        ),
        helper.make_node("Reshape", ["stacked", "shape"], [LEAKED]),
    ]
    return _model(nodes, n_features)


def sparse_initializer(location: str, n_features: int) -> ModelProto:
    """A sparse initializer (one stored value at index 0) whose values are external."""
    sparse = helper.make_sparse_tensor(
        external_tensor("secret", location),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "secret_indices"),
        [1],
    )
    return _model(
        [helper.make_node("Identity", ["secret"], [LEAKED])],
        n_features,
        sparse_initializer=[sparse],
    )


VARIANTS: dict[str, Callable[[str, int], ModelProto]] = {
    "top-level-initializer": top_level,
    "constant-node": constant_node,
    "if-branch": if_branch,
    "loop-body": loop_body,
    "scan-body": scan_body,
    "nested-two-deep": nested_two_deep,
    "sparse-initializer": sparse_initializer,
}


def hostile_onnx(variant: str, location: str, n_features: int = 3) -> bytes:
    return bytes(VARIANTS[variant](location, n_features).SerializeToString())


def custom_op_in_a_branch(n_features: int = 3) -> bytes:
    """An If branch that calls an operator from a custom domain (native code a library adds)."""
    branch = helper.make_graph(
        [helper.make_node("Evil", ["features"], ["out"], domain="com.attacker")],
        "then",
        [],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1])],
    )
    nodes = [
        _true("condition"),
        helper.make_node("If", ["condition"], [LEAKED], then_branch=branch, else_branch=branch),
    ]
    return bytes(_model(nodes, n_features).SerializeToString())


def plant_secrets(root: Path) -> tuple[Path, dict[str, str]]:
    """A working directory with a secret where the server used to keep its JWT secret
    (``var/jwt-secret``), another secret next to that directory, and the external-data
    locations that name them: relative, absolute, and with ".." staying inside or leaving."""
    workdir = root / "workdir"
    (workdir / "var").mkdir(parents=True)
    (workdir / "var" / "jwt-secret").write_bytes(secret_bytes())
    (root / "outside-secret").write_bytes(secret_bytes())
    return workdir, {
        "relative": "var/jwt-secret",
        "absolute": str(workdir / "var" / "jwt-secret"),
        "dot-dot-inside": "var/../var/jwt-secret",
        "dot-dot-outside": "../outside-secret",
    }


def input_driven_loop(n_features: int, trips_per_unit: int = 10**10) -> bytes:
    """A Loop whose trip count comes from the input (the first row's first feature times
    ``trips_per_unit``), so no check of the file can tell how long it runs: about 10^10
    iterations for a wine row. Each iteration adds 1 to a counter; the answer is the count on
    every row. Well under 1 KB."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["condition_in"], ["condition_out"]),
            helper.make_node("Add", ["count_in", "one"], ["count_out"]),
        ],
        "count",
        [
            helper.make_tensor_value_info("iteration", TensorProto.INT64, []),
            helper.make_tensor_value_info("condition_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("count_in", TensorProto.FLOAT, [1]),
        ],
        [
            helper.make_tensor_value_info("condition_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("count_out", TensorProto.FLOAT, [1]),
        ],
        initializer=[numpy_helper.from_array(np.ones(1, np.float32), "one")],
    )
    nodes = [
        helper.make_node("ReduceMax", ["features"], ["largest"], keepdims=0),
        helper.make_node("Cast", ["largest"], ["units"], to=TensorProto.INT64),
        helper.make_node("Mul", ["units", "per_unit"], ["trips"]),
        _true("condition"),
        helper.make_node("Loop", ["trips", "condition", "start"], [LEAKED], body=body),
    ]
    initializer = [
        numpy_helper.from_array(np.array(trips_per_unit, np.int64), "per_unit"),
        numpy_helper.from_array(np.zeros(1, np.float32), "start"),
    ]
    return bytes(_model(nodes, n_features, initializer).SerializeToString())


# --- budgets: tiny files that declare huge work ------------------------------------------------
#
# Each is a regressor of ``n_features`` float inputs and one [rows, 1] output, valid for
# onnx.checker, a few hundred bytes long; what it declares is what costs.


def _int64s(name: str, values: list[int]) -> NodeProto:
    return helper.make_node(
        "Constant",
        [],
        [name],
        value=helper.make_tensor(name, TensorProto.INT64, [len(values)], values),
    )


def _plus_scalar(scalar: str, n_features: int, nodes: list[NodeProto]) -> bytes:
    """``sum(row) + scalar`` for every row: the output depends on ``scalar``, so no optimizer
    can drop the nodes that make it."""
    return bytes(onnx_model_of(_plus_scalar_nodes(scalar, nodes), n_features).SerializeToString())


def _plus_scalar_nodes(scalar: str, nodes: list[NodeProto]) -> list[NodeProto]:
    return [
        *nodes,
        _int64s("row_axes", [1]),
        helper.make_node("ReduceSum", ["features", "row_axes"], ["row_sum"], keepdims=1),
        helper.make_node("Add", ["row_sum", scalar], ["variable"]),
    ]


def onnx_model_of(nodes: list[NodeProto], n_features: int) -> ModelProto:
    """A regressor: ``features`` [None, n_features] float in, ``variable`` [None, 1] out."""
    graph = helper.make_graph(
        nodes,
        "budget",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, n_features])],
        [helper.make_tensor_value_info("variable", TensorProto.FLOAT, [None, 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def huge_constant(side: int = 100_000, n_features: int = 3) -> bytes:
    """A ``side`` x ``side`` float tensor of zeros, built at load from a constant shape
    (40 GB for the default), summed to one value."""
    return _plus_scalar(
        "total",
        n_features,
        [
            _int64s("huge_shape", [side, side]),
            helper.make_node("ConstantOfShape", ["huge_shape"], ["huge"]),
            helper.make_node("ReduceSum", ["huge"], ["total"], keepdims=0),
        ],
    )


def huge_at_run(factor: int = 650, n_features: int = 3) -> bytes:
    """Float zeros of shape ``(rows x factor, features x factor)``: no shape is constant, so
    only running the model shows what it takes (5 GB for 1,000 rows of 3 features: an amount
    this machine could give, so only the trial's memory limit stops it)."""
    return _plus_scalar(
        "total",
        n_features,
        [
            helper.make_node("Shape", ["features"], ["input_shape"]),
            _int64s("factor", [factor, factor]),
            helper.make_node("Mul", ["input_shape", "factor"], ["huge_shape"]),
            helper.make_node("ConstantOfShape", ["huge_shape"], ["huge"]),
            helper.make_node("ReduceSum", ["huge"], ["total"], keepdims=0),
        ],
    )


def endless_loop(trips: int = 10**10, n_features: int = 3) -> bytes:
    """A Loop of ``trips`` iterations that adds one each time; its count is the output."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["condition_in"], ["condition_out"]),
            helper.make_node(
                "Constant", [], ["one"], value=helper.make_tensor("one", TensorProto.FLOAT, [], [1])
            ),
            helper.make_node("Add", ["count_in", "one"], ["count_out"]),
        ],
        "loop_body",
        [
            helper.make_tensor_value_info("iteration", TensorProto.INT64, []),
            helper.make_tensor_value_info("condition_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("count_in", TensorProto.FLOAT, []),
        ],
        [
            helper.make_tensor_value_info("condition_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("count_out", TensorProto.FLOAT, []),
        ],
    )
    return _plus_scalar(
        "count",
        n_features,
        [
            helper.make_node(
                "Constant",
                [],
                ["trips"],
                value=helper.make_tensor("trips", TensorProto.INT64, [], [trips]),
            ),
            _true("condition"),
            helper.make_node(
                "Constant",
                [],
                ["zero"],
                value=helper.make_tensor("zero", TensorProto.FLOAT, [], [0]),
            ),
            helper.make_node("Loop", ["trips", "condition", "zero"], ["count"], body=body),
        ],
    )


def wide_input(width: int = 1_000_000) -> bytes:
    """One input declared ``[None, width]``, summed per row."""
    return _plus_scalar("zero_scalar", width, [_zero_scalar()])


def many_nodes(count: int, n_features: int = 3) -> bytes:
    """A chain of ``count`` Identity nodes."""
    chain = [_zero_scalar("link_0")]
    chain += [helper.make_node("Identity", [f"link_{i}"], [f"link_{i + 1}"]) for i in range(count)]
    return _plus_scalar(f"link_{count}", n_features, chain)


def _zero_scalar(name: str = "zero_scalar") -> NodeProto:
    return helper.make_node(
        "Constant", [], [name], value=helper.make_tensor(name, TensorProto.FLOAT, [], [0])
    )


def huge_sparse_initializer(side: int = 100_000, n_features: int = 3) -> bytes:
    """A sparse initializer of one stored value whose dense shape is ``side`` x ``side``:
    ONNX Runtime makes it dense at load."""
    sparse = helper.make_sparse_tensor(
        numpy_helper.from_array(np.array([1.0], dtype=np.float32), "sparse"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "sparse_indices"),
        [side, side],
    )
    graph = onnx_model_of(
        _plus_scalar_nodes(
            "total", [helper.make_node("ReduceSum", ["sparse"], ["total"], keepdims=0)]
        ),
        n_features,
    )
    graph.graph.sparse_initializer.append(sparse)
    return bytes(graph.SerializeToString())


def loop_without_end(n_features: int = 3) -> bytes:
    """A Loop with neither a trip count nor a condition: it never stops."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["condition_in"], ["condition_out"]),
            helper.make_node("Identity", ["count_in"], ["count_out"]),
        ],
        "loop_body",
        [
            helper.make_tensor_value_info("iteration", TensorProto.INT64, []),
            helper.make_tensor_value_info("condition_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("count_in", TensorProto.FLOAT, []),
        ],
        [
            helper.make_tensor_value_info("condition_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("count_out", TensorProto.FLOAT, []),
        ],
    )
    loop = helper.make_node("Loop", ["", "", "zero_scalar"], ["count"], body=body)
    return _plus_scalar("count", n_features, [_zero_scalar(), loop])
