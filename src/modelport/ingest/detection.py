"""Recognise what an uploaded model file is from its bytes, never from its name.

Nothing here runs the model's code: pickles are recognised by their protocol header (and
joblib's compressed pickles by decompressing the first few bytes), skops files by their zip
layout, XGBoost files by parsing the JSON/UBJSON in Python, LightGBM files by their text layout.
"""

from __future__ import annotations

import bz2
import io
import json
import lzma
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import onnx
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

from modelport.errors import BadRequestError
from modelport.ingest import ubjson

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
PICKLE_KINDS = {"pickle", "joblib"}

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

_PICKLE_PROTOCOLS = range(2, 6)  # protocol 2+ files start with 0x80 <protocol>
_PEEK_BYTES = 16
_PEEK_CHUNK = 64 * 1024
_MAX_PEEK_INPUT = 4 * 1024 * 1024


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
    if _is_pickle(data):
        return ModelFile("pickle", data)
    if _is_compressed_pickle(data):
        return ModelFile("joblib", data)
    if data.startswith(b"PK\x03\x04"):
        return ModelFile("skops", data, _skops_archive(data))
    stripped = data.lstrip()
    if stripped.startswith(b"{"):
        found = _xgboost(data)
        if found is not None:
            return found
    if data.startswith((b"tree\n", b"tree\r\n")):
        return ModelFile("lightgbm", data, _lightgbm_text(data))
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


# --- pickle and joblib -------------------------------------------------------------------------


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


# --- skops -------------------------------------------------------------------------------------


def _skops_archive(data: bytes) -> list[str]:
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


# --- XGBoost -----------------------------------------------------------------------------------


def _xgboost(data: bytes) -> ModelFile | None:
    """XGBoost JSON or UBJ, or None when the bytes are some other thing starting with '{'."""
    head = data[:256]
    if data.lstrip()[1:2] in (b'"', b"\n", b"\r", b" ", b"\t", b"}"):
        try:
            parsed = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            if b'"learner"' in head:
                raise BadRequestError(
                    f"the XGBoost JSON model is truncated or invalid: {exc}"
                ) from None
            return None
        kind = "xgboost-json"
    else:
        try:
            parsed = ubjson.loads(data)
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
    return ModelFile(kind, data, parsed)


# --- LightGBM ----------------------------------------------------------------------------------


def _lightgbm_text(data: bytes) -> dict[str, str]:
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
