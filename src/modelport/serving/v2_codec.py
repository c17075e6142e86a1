"""V2 tensors to and from Python values: JSON ``data`` (flat or nested), the binary tensor
extension, datatypes and shapes, and the encoding of output tensors.

The call (``serving.v2_service``) decides which tensors a model takes and turns their values
into rows; everything that depends only on the protocol's wire format lives here, so a faster
(vectorised) codec has one place to go.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from modelport.errors import InvalidInputError, PayloadTooLargeError
from modelport.runtimes.signature import FieldSpec
from modelport.serving.v2_schemas import DATATYPES, InferenceResponse, RequestInput, ResponseOutput
from modelport.serving.validation import parse_json_body

BINARY_HEADER = "inference-header-content-length"

_FLOAT_TYPES = {"FP16", "FP32", "FP64"}
_INTEGER_RANGES = {
    f"{kind}{bits}": (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    if kind == "INT"
    else (0, 2**bits - 1)
    for kind in ("INT", "UINT")
    for bits in (8, 16, 32, 64)
}
_BINARY_DTYPES = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_ONNX_DATATYPES = {
    np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int64): "INT64",
}
_OUTPUT_DATATYPES = {"float": "FP64", "int": "INT64", "str": "BYTES"}
_OUTPUT_DTYPES = {"FP64": np.dtype("<f8"), "INT64": np.dtype("<i8")}


def input_datatype(dtype: npt.DTypeLike) -> str:
    """The V2 datatype of a runtime's numeric input type (FP32 for any type not listed)."""
    return _ONNX_DATATYPES.get(np.dtype(dtype), "FP32")


def output_datatype(spec: FieldSpec) -> str:
    return _OUTPUT_DATATYPES.get(spec.type, "BYTES")


# --- requests -----------------------------------------------------------------------------------


def decode_body(body: bytes, header_length: str | None) -> Any:
    """JSON, or with the binary extension a JSON header followed by the tensors' bytes;
    binary tensors are decoded into the payload so the prediction log shows them."""
    if header_length is None:
        return parse_json_body(body)
    length = _header_length(header_length, len(body))
    payload = parse_json_body(body[:length])
    _inline_binary(payload, memoryview(body)[length:])
    return payload


def row_count(tensor: RequestInput, max_rows: int) -> int:
    """The rows a tensor holds (its first dimension): at least one, at most ``max_rows``."""
    rows = tensor.shape[0]
    if rows == 0:
        raise InvalidInputError(f"input {tensor.name!r} holds no rows (shape {tensor.shape})")
    if rows > max_rows:
        raise PayloadTooLargeError(
            f"{rows} rows sent; at most {max_rows} rows are accepted per request"
        )
    return rows


def tensor_values(tensor: RequestInput, count: int) -> list[Any]:
    """The tensor's elements, flattened, counted and checked against its datatype."""
    datatype = tensor.datatype
    if datatype not in DATATYPES:
        raise InvalidInputError(
            f"input {tensor.name!r} has the unknown datatype {datatype!r}; "
            f"the protocol's datatypes are {list(DATATYPES)}"
        )
    if datatype not in _FLOAT_TYPES and datatype not in _INTEGER_RANGES:
        raise InvalidInputError(
            f"input {tensor.name!r} has datatype {datatype}; this model takes numbers "
            "(FP32, FP64, FP16 or an integer type)"
        )
    if tensor.data is None:
        raise InvalidInputError(f"input {tensor.name!r} has no data")
    values = _flatten(tensor.name, tensor.data)
    if len(values) != count:
        raise InvalidInputError(
            f"input {tensor.name!r}: shape {tensor.shape} holds {count} values "
            f"but data has {len(values)}"
        )
    bounds = _INTEGER_RANGES.get(datatype)
    for index, value in enumerate(values):
        is_number = isinstance(value, int | float) and not isinstance(value, bool)
        if bounds is None:
            fits = is_number
        else:
            fits = is_number and isinstance(value, int) and bounds[0] <= value <= bounds[1]
        if not fits:
            raise InvalidInputError(
                f"input {tensor.name!r}: element {index} ({_shown(value)}) is not a "
                f"{datatype} value"
            )
    return values


def _flatten(name: str, data: Any) -> list[Any]:
    """Flat or nested JSON arrays, in row-major order."""
    if not isinstance(data, list):
        raise InvalidInputError(f"input {name!r}: data must be a JSON array (flat or nested)")
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _shown(value: Any) -> str:
    text = orjson.dumps(value).decode() if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _header_length(declared: str, body_length: int) -> int:
    if not declared.isascii() or not declared.isdigit() or int(declared) > body_length:
        raise InvalidInputError(
            f"the Inference-Header-Content-Length header ({declared[:20]!r}) must be the "
            f"byte length of the JSON part of the body ({body_length} bytes in all)"
        )
    return int(declared)


def _inline_binary(payload: Any, blob: memoryview) -> None:
    """Replace each input's ``binary_data_size`` bytes (in input order) by its values."""
    inputs = payload.get("inputs") if isinstance(payload, dict) else None
    offset = 0
    for tensor in inputs if isinstance(inputs, list) else []:
        parameters = tensor.get("parameters") if isinstance(tensor, dict) else None
        size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
        if size is None:
            continue
        name = tensor.get("name")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidInputError(f"input {name!r}: binary_data_size must be a byte count")
        if tensor.get("data") is not None:
            raise InvalidInputError(f"input {name!r} has both data and binary_data_size")
        if offset + size > len(blob):
            raise InvalidInputError(
                f"input {name!r}: binary_data_size {size} runs past the end of the body"
            )
        tensor["data"] = _decode_binary(name, tensor.get("datatype"), blob[offset : offset + size])
        offset += size
    if offset != len(blob):
        raise InvalidInputError(
            f"the body holds {len(blob) - offset} bytes of binary data that no input claims"
        )


def _decode_binary(name: Any, datatype: Any, chunk: memoryview) -> list[Any]:
    dtype = _BINARY_DTYPES.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise InvalidInputError(
            f"input {name!r}: binary data of datatype {datatype!r} is not supported here; "
            f"send one of {sorted(_BINARY_DTYPES)}"
        )
    if len(chunk) % dtype.itemsize:
        raise InvalidInputError(
            f"input {name!r}: {len(chunk)} bytes is not a whole number of {datatype} values"
        )
    array = np.frombuffer(chunk, dtype=dtype)
    if dtype.kind == "f" and not np.isfinite(array).all():
        index = int(np.flatnonzero(~np.isfinite(array))[0])
        raise InvalidInputError(
            f"input {name!r}: element {index} is NaN or infinite; send finite numbers"
        )
    values: list[Any] = array.tolist()
    return values


# --- responses ----------------------------------------------------------------------------------


def encode_output(
    name: str, datatype: str, values: list[Any], binary: bool
) -> tuple[ResponseOutput, bytes | None]:
    """One output tensor from its per-row values (a classifier's probabilities come as one
    ``{class: probability}`` per row and become ``[rows, classes]``); with ``binary`` its data
    travels as the returned bytes instead of in the JSON."""
    rows = len(values)
    output = ResponseOutput(name=name, shape=[rows], datatype=datatype)
    if values and isinstance(values[0], dict):  # class -> probability, per row
        classes = list(values[0])
        values = [row[label] for row in values for label in classes]
        output.shape = [rows, len(classes)]
        output.parameters = {"classes": classes}
    if not binary:
        output.data = values
        return output, None
    blob = _encode_binary(values, datatype)
    output.parameters = {**(output.parameters or {}), "binary_data_size": len(blob)}
    return output, blob


def encode_response(
    response: InferenceResponse, blobs: list[bytes]
) -> tuple[bytes, dict[str, str]]:
    """The response body and headers: JSON, or a JSON header plus binary tensors."""
    header = orjson.dumps(response.model_dump(exclude_none=True))
    if not blobs:
        return header, {"content-type": "application/json"}
    return header + b"".join(blobs), {
        "content-type": "application/octet-stream",
        BINARY_HEADER: str(len(header)),
    }


def _encode_binary(values: list[Any], datatype: str) -> bytes:
    dtype = _OUTPUT_DTYPES.get(datatype)
    if dtype is not None:
        return np.asarray(values, dtype=dtype).tobytes()
    encoded = [str(value).encode() for value in values]  # BYTES: 4-byte length, then the bytes
    return b"".join(len(item).to_bytes(4, "little") + item for item in encoded)
