"""Everything an ONNX model holds, at any depth, and the checks that it reads nothing else.

Tensors hide in more places than the main graph's initializers: sparse initializers, the
attributes of every node (a ``Constant``'s value, any tensor-valued attribute) and the subgraphs
that attributes carry (the branches of ``If``, the bodies of ``Loop`` and ``Scan``, nested to any
depth), model-local functions and training graphs. A tensor anywhere among them may say that its
data lives in an "external" file; ONNX Runtime would read that file. The walk below is iterative
(no recursion limit to hit) and visits each of those places once.
"""

from __future__ import annotations

from collections.abc import Iterator

import onnx
from onnx import AttributeProto, GraphProto, NodeProto, TensorProto

from modelport.errors import BadRequestError

# Operator domains ONNX Runtime implements itself; anything else is a custom op (native code).
ALLOWED_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})
SELF_CONTAINED_HINT = (
    "save the model self-contained, with every tensor inside the .onnx file: "
    "onnx.save(model, path, save_as_external_data=False)"
)

Item = tuple[str, GraphProto | NodeProto | AttributeProto]


def walk(model: onnx.ModelProto) -> Iterator[tuple[str, NodeProto | TensorProto]]:
    """Every node and every tensor in ``model``, each with a short note of where it sits."""
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
                yield f"a sparse initializer of {where}", sparse.values
                yield f"a sparse initializer of {where}", sparse.indices
            pending.extend((where, node) for node in item.node)
        elif isinstance(item, NodeProto):
            yield where, item
            inside = f"node {item.name or item.op_type!r} ({item.op_type}) in {where}"
            pending.extend((inside, attribute) for attribute in item.attribute)
        else:
            inside = f"attribute {item.name!r} of {where}"
            yield from ((inside, tensor) for tensor in _attribute_tensors(item))
            graphs = [item.g] if item.HasField("g") else []
            pending.extend((inside, graph) for graph in [*graphs, *item.graphs])


def _attribute_tensors(attribute: AttributeProto) -> Iterator[TensorProto]:
    if attribute.HasField("t"):
        yield attribute.t
    yield from attribute.tensors
    sparse = [attribute.sparse_tensor] if attribute.HasField("sparse_tensor") else []
    for tensor in [*sparse, *attribute.sparse_tensors]:
        yield tensor.values
        yield tensor.indices


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
