"""Recognise what an uploaded model file is from its bytes, never from its name.

Nothing here runs the model's code: the format readers that look inside a file (pickle headers,
skops archives, XGBoost JSON/UBJSON, LightGBM text) are rules of ``safety``, applied here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import onnx
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

from modelport.errors import BadRequestError
from modelport.ingest import safety

# kind -> (framework, what a person calls the format)
KINDS: dict[str, tuple[str, str]] = {
    "onnx": ("onnx", "an ONNX model"),
    "skops": ("sklearn", "a scikit-learn model saved with skops"),
    "pickle": ("sklearn", "a Python pickle"),
    "joblib": ("sklearn", "a compressed joblib pickle"),
    "xgboost-json": ("xgboost", "an XGBoost model (JSON)"),
    "xgboost-ubj": ("xgboost", "an XGBoost model (UBJ)"),
    "lightgbm": ("lightgbm", "a LightGBM model (text)"),
}

# What a declared flavor may be, and the file kinds it accepts.
DECLARED_FLAVORS: dict[str, tuple[str, set[str]]] = {
    "onnx": ("ONNX", {"onnx"}),
    "sklearn": ("scikit-learn", {"skops", "pickle", "joblib"}),
    "scikit-learn": ("scikit-learn", {"skops", "pickle", "joblib"}),
    "skops": ("skops", {"skops"}),
    "pickle": ("pickle", {"pickle", "joblib"}),
    "joblib": ("joblib", {"pickle", "joblib"}),
    "xgboost": ("XGBoost", {"xgboost-json", "xgboost-ubj"}),
    "lightgbm": ("LightGBM", {"lightgbm"}),
}


class UnknownFormatError(BadRequestError):
    """The bytes are none of the formats modelport reads (as opposed to a damaged one)."""


@dataclass(frozen=True)
class ModelFile:
    """An upload whose format is known; ``parsed`` holds what was read to recognise it."""

    kind: str
    data: bytes
    parsed: Any = None

    @property
    def framework(self) -> str:
        return KINDS[self.kind][0]

    @property
    def description(self) -> str:
        return KINDS[self.kind][1]


def identify(data: bytes, declared_flavor: str | None = None) -> ModelFile:
    """The file's format; when a flavor is declared, the file must be of that flavor (400)."""
    if not data:
        raise BadRequestError("the uploaded model file is empty")
    if declared_flavor is None:
        return detect(data)
    key = declared_flavor.strip().lower()
    if key not in DECLARED_FLAVORS:
        raise BadRequestError(
            f"unknown model flavor {declared_flavor!r}; supported: "
            "onnx, sklearn (skops, or pickle/joblib where allowed), xgboost, lightgbm"
        )
    label, accepted = DECLARED_FLAVORS[key]
    try:
        found = detect(data)
    except UnknownFormatError:
        if accepted == {"onnx"}:
            load_onnx(data)  # raises what exactly is wrong with it as ONNX
        raise BadRequestError(
            f"the file is not a valid {label} model (nor any format modelport recognises)"
        ) from None
    except BadRequestError as exc:  # recognised, but damaged: say how
        raise BadRequestError(f"the file is not a valid {label} model: {exc.message}") from None
    if found.kind not in accepted:
        raise BadRequestError(
            f"the file was declared as {label} but it is {found.description}; "
            f"upload a {label} model or leave out the flavor to have it detected"
        )
    return found


def detect(data: bytes) -> ModelFile:
    if not data:
        raise BadRequestError("the uploaded model file is empty")
    pickled = safety.pickle_kind(data)
    if pickled is not None:
        return ModelFile(pickled, data)
    if data.startswith(b"PK\x03\x04"):
        return ModelFile("skops", data, safety.skops_archive(data))
    if data.lstrip().startswith(b"{"):
        document = safety.xgboost_document(data)
        if document is not None:
            kind, parsed = document
            return ModelFile(kind, data, parsed)
    if data.startswith((b"tree\n", b"tree\r\n")):
        return ModelFile("lightgbm", data, safety.lightgbm_header(data))
    try:
        model = load_onnx(data)
    except BadRequestError as exc:
        onnx_problem = exc.message
    else:
        return ModelFile("onnx", data, model)
    if data[:1] == b"\x80":
        raise BadRequestError(
            "the file starts like a pickle but with an unknown protocol (2-5 are recognised)"
        )
    raise UnknownFormatError(
        "the file is not a model format modelport recognises: ONNX, scikit-learn (skops; "
        "pickle/joblib where allowed), XGBoost (JSON or UBJ) or LightGBM (text); as ONNX it "
        f"reads as: {onnx_problem}"
    )


def load_onnx(data: bytes) -> onnx.ModelProto:
    try:
        model = onnx.load_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise BadRequestError(f"not a valid ONNX model: {exc}") from None
    if not model.graph.node and not model.graph.output:
        raise BadRequestError("not a valid ONNX model: the graph is empty (truncated file?)")
    return model
