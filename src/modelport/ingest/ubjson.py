"""A strict reader for the UBJSON that XGBoost writes (``.ubj`` models).

XGBoost's own reader accepts some truncated files and returns a partial model, so an upload is
read here first (by ``safety.xgboost_document``, which sets how deep it may nest): any truncation
or stray byte is an error, and the model's facts (objective, features, trees) come out as Python
objects without handing the bytes to native code.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Marker -> (numpy big-endian dtype, size). XGBoost writes numbers big-endian, as UBJSON says.
_NUMBERS: dict[bytes, tuple[str, int]] = {
    b"i": (">i1", 1),
    b"U": (">u1", 1),
    b"I": (">i2", 2),
    b"l": (">i4", 4),
    b"L": (">i8", 8),
    b"d": (">f4", 4),
    b"D": (">f8", 8),
}


class UBJSONError(ValueError):
    """The bytes are not one complete UBJSON value."""


def loads(data: bytes, *, max_depth: int) -> Any:
    """The one value ``data`` holds, nested at most ``max_depth`` deep."""
    reader = _Reader(data, max_depth)
    value = reader.value(reader.marker(), 0)
    if reader.position != len(data):
        raise UBJSONError(f"{len(data) - reader.position} unexpected bytes after the value")
    return value


class _Reader:
    def __init__(self, data: bytes, max_depth: int) -> None:
        self.data = data
        self.max_depth = max_depth
        self.position = 0

    def take(self, size: int) -> bytes:
        end = self.position + size
        if size < 0 or end > len(self.data):
            raise UBJSONError(f"the data ends early (at byte {len(self.data)}; truncated?)")
        chunk = self.data[self.position : end]
        self.position = end
        return chunk

    def marker(self) -> bytes:
        marker = self.take(1)
        while marker == b"N":  # no-op padding
            marker = self.take(1)
        return marker

    def length(self) -> int:
        marker = self.marker()
        if marker not in _NUMBERS or marker in (b"d", b"D"):
            raise UBJSONError(f"expected an integer length at byte {self.position - 1}")
        count = int(self.value(marker, 0))
        if count < 0:
            raise UBJSONError(f"negative length at byte {self.position}")
        return count

    def value(self, marker: bytes, depth: int) -> Any:
        if depth > self.max_depth:
            raise UBJSONError(f"nested deeper than {self.max_depth} levels")
        if marker in _NUMBERS:
            dtype, size = _NUMBERS[marker]
            return np.frombuffer(self.take(size), dtype=dtype)[0].item()
        if marker == b"S" or marker == b"H":
            return self.text(self.length())
        if marker == b"C":
            return self.take(1).decode("latin-1")
        if marker == b"T":
            return True
        if marker == b"F":
            return False
        if marker == b"Z":
            return None
        if marker == b"[":
            return self.array(depth)
        if marker == b"{":
            return self.object(depth)
        raise UBJSONError(f"unknown marker {marker!r} at byte {self.position - 1}")

    def text(self, size: int) -> str:
        try:
            return self.take(size).decode("utf-8")
        except UnicodeDecodeError:
            raise UBJSONError(f"a string before byte {self.position} is not UTF-8") from None

    def container_header(self) -> tuple[bytes | None, int | None]:
        """The optional ``$type`` and ``#count`` after ``[`` or ``{``."""
        element_type: bytes | None = None
        if self.data[self.position : self.position + 1] == b"$":
            self.take(1)
            element_type = self.take(1)
        count: int | None = None
        if self.data[self.position : self.position + 1] == b"#":
            self.take(1)
            count = self.length()
        elif element_type is not None:
            raise UBJSONError(f"a typed container without a count at byte {self.position}")
        return element_type, count

    def array(self, depth: int) -> Any:
        element_type, count = self.container_header()
        if count is not None:
            if element_type in _NUMBERS:  # XGBoost's big arrays: read them in one go
                dtype, size = _NUMBERS[element_type]
                return np.frombuffer(self.take(count * size), dtype=dtype)
            if count > len(self.data):
                raise UBJSONError(f"an array claims {count} items; the file is shorter")
            return [self.value(element_type or self.marker(), depth + 1) for _ in range(count)]
        items: list[Any] = []
        while True:
            marker = self.marker()
            if marker == b"]":
                return items
            items.append(self.value(marker, depth + 1))

    def object(self, depth: int) -> dict[str, Any]:
        element_type, count = self.container_header()
        result: dict[str, Any] = {}
        if count is not None:
            if count > len(self.data):
                raise UBJSONError(f"an object claims {count} members; the file is shorter")
            for _ in range(count):
                key = self.text(self.length())
                result[key] = self.value(element_type or self.marker(), depth + 1)
            return result
        while True:
            if self.data[self.position : self.position + 1] == b"}":
                self.take(1)
                return result
            key = self.text(self.length())
            result[key] = self.value(self.marker(), depth + 1)
