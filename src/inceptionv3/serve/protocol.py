"""KServe v2 / Open Inference Protocol: requests and responses as JSON tensors, with the binary-data
extension that ``tritonclient.http`` uses by default.

A request body is JSON, or JSON followed by the inputs' raw bytes when the header
``Inference-Header-Content-Length`` gives the JSON's length; an input with ``parameters.binary_data_size``
takes that many bytes from the rest, in input order. BYTES elements are a 4-byte little-endian length and
the bytes (binary), or base64 strings (JSON). Responses put the outputs that asked for it (or all, with
``binary_data_output``) after the JSON the same way. Every malformed request is a ``ProtocolError``
naming what is wrong (the app answers 400). No torch, no web framework: arrays and bytes only.
"""
from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from dataclasses import dataclass, field

import numpy as np

HEADER_LENGTH = "Inference-Header-Content-Length"

# The protocol's numeric datatypes and their numpy dtypes (little-endian, as the extension sends them).
DTYPES = {"BOOL": "?", "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "INT8": "<i1",
          "INT16": "<i2", "INT32": "<i4", "INT64": "<i8", "FP16": "<f2", "FP32": "<f4", "FP64": "<f8"}


class ProtocolError(ValueError):
    """A v2 request that does not follow the protocol; the message says what and where."""


@dataclass
class Tensor:
    """One input tensor: numeric data as an array of ``shape``, BYTES as a list of byte strings."""
    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray | list[bytes]


@dataclass
class InferRequest:
    id: str | None
    inputs: list[Tensor]
    outputs: list[str] | None              # None: the model's default outputs
    binary_outputs: set[str] = field(default_factory=set)
    all_binary: bool = False               # "binary_data_output": every output as binary


def _parameters(obj: dict, where: str) -> dict:
    params = obj.get("parameters") or {}
    if not isinstance(params, dict):
        raise ProtocolError(f"{where}: 'parameters' must be an object, got {type(params).__name__}")
    return params


def _shape(value: object, where: str) -> list[int]:
    if (not isinstance(value, list) or
            not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value)):
        raise ProtocolError(f"{where}: 'shape' must be a list of non-negative integers, got {value!r}")
    return list(value)


def _split_bytes(raw: bytes, where: str) -> list[bytes]:
    """The elements of a binary BYTES tensor: each a 4-byte little-endian length, then its bytes."""
    out, pos = [], 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise ProtocolError(f"{where}: BYTES data ends inside an element's 4-byte length")
        (n,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + n > len(raw):
            raise ProtocolError(f"{where}: BYTES element of {n} bytes runs past the data's end")
        out.append(raw[pos:pos + n])
        pos += n
    return out


def join_bytes(items: list[bytes]) -> bytes:
    """A BYTES tensor's binary form (the inverse of the split above)."""
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def _flatten(data: object) -> list:
    """JSON tensor data is flat or nested row-major; both mean the same elements in order."""
    if not isinstance(data, list):
        return [data]
    if not data or not isinstance(data[0], list):
        return data
    out: list = []
    stack = [iter(data)]
    while stack:
        for x in stack[-1]:
            if isinstance(x, list):
                stack.append(iter(x))
                break
            out.append(x)
        else:
            stack.pop()
    return out


def _json_data(obj: dict, datatype: str, shape: list[int], where: str) -> np.ndarray | list[bytes]:
    if "data" not in obj:
        raise ProtocolError(f"{where}: no 'data' and no 'binary_data_size' parameter")
    flat = _flatten(obj["data"])
    if datatype == "BYTES":
        items = []
        for i, s in enumerate(flat):
            if not isinstance(s, str):
                raise ProtocolError(f"{where}: BYTES element {i} must be a base64 string in JSON")
            try:
                items.append(base64.b64decode(s, validate=True))
            except (binascii.Error, ValueError):
                raise ProtocolError(f"{where}: BYTES element {i} is not valid base64 (JSON carries encoded "
                                    "images as base64; or send them binary)") from None
        return items
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) or
               (datatype == "BOOL" and isinstance(v, bool)) for v in flat):
        raise ProtocolError(f"{where}: 'data' must hold numbers for datatype {datatype}")
    arr = np.asarray(flat, dtype=DTYPES[datatype])
    if arr.size != math.prod(shape):
        raise ProtocolError(f"{where}: 'data' has {arr.size} elements, shape {shape} needs {math.prod(shape)}")
    return arr.reshape(shape)


def _binary_data(raw: bytes, datatype: str, shape: list[int], where: str) -> np.ndarray | list[bytes]:
    if datatype == "BYTES":
        return _split_bytes(raw, where)
    itemsize = np.dtype(DTYPES[datatype]).itemsize
    if len(raw) != math.prod(shape) * itemsize:
        raise ProtocolError(f"{where}: {len(raw)} bytes of {datatype}, shape {shape} needs "
                            f"{math.prod(shape) * itemsize}")
    return np.frombuffer(raw, dtype=DTYPES[datatype]).reshape(shape)


def parse_request(body: bytes, header_length: str | None) -> InferRequest:
    """An ``InferRequest`` from a v2 request body (and the binary extension's header, if sent)."""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise ProtocolError(f"{HEADER_LENGTH} must be an integer, got {header_length!r}") from None
        if not 0 < n <= len(body):
            raise ProtocolError(f"{HEADER_LENGTH} is {n}, but the body has {len(body)} bytes")
        head, rest = body[:n], body[n:]
    else:
        head, rest = body, b""
    try:
        doc = json.loads(head)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ProtocolError(f"the request is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ProtocolError(f"the request must be a JSON object, got {type(doc).__name__}")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ProtocolError("the request needs 'inputs': a non-empty list of tensors")
    tensors, pos = [], 0
    for i, obj in enumerate(inputs):
        where = f"inputs[{i}]"
        if not isinstance(obj, dict):
            raise ProtocolError(f"{where} must be an object with name, shape, datatype and data")
        name, datatype = obj.get("name"), obj.get("datatype")
        if not isinstance(name, str) or not name:
            raise ProtocolError(f"{where}: 'name' must be a non-empty string")
        where = f"input {name!r}"
        if datatype != "BYTES" and datatype not in DTYPES:
            raise ProtocolError(f"{where}: unknown datatype {datatype!r}; known: BYTES, {', '.join(DTYPES)}")
        shape = _shape(obj.get("shape"), where)
        size = _parameters(obj, where).get("binary_data_size")
        if size is None:
            data = _json_data(obj, datatype, shape, where)
        else:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ProtocolError(f"{where}: binary_data_size must be a non-negative integer, got {size!r}")
            if pos + size > len(rest):
                raise ProtocolError(f"{where}: binary_data_size {size} runs past the body's end "
                                    f"({len(rest) - pos} bytes left)")
            data = _binary_data(rest[pos:pos + size], datatype, shape, where)
            pos += size
        if datatype == "BYTES" and len(data) != math.prod(shape):
            raise ProtocolError(f"{where}: {len(data)} BYTES elements, shape {shape} needs {math.prod(shape)}")
        tensors.append(Tensor(name, datatype, shape, data))
    if pos != len(rest):
        raise ProtocolError(f"{len(rest) - pos} bytes after the JSON belong to no input's binary_data_size")
    outputs, binary = None, set()
    if doc.get("outputs") is not None:
        if not isinstance(doc["outputs"], list):
            raise ProtocolError("'outputs' must be a list of {\"name\": ...} objects")
        outputs = []
        for i, obj in enumerate(doc["outputs"]):
            if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
                raise ProtocolError(f"outputs[{i}] must be an object with a 'name'")
            outputs.append(obj["name"])
            if _parameters(obj, f"output {obj['name']!r}").get("binary_data"):
                binary.add(obj["name"])
    request_id = doc.get("id")
    return InferRequest(id=str(request_id) if request_id is not None else None, inputs=tensors,
                        outputs=outputs, binary_outputs=binary,
                        all_binary=bool(_parameters(doc, "the request").get("binary_data_output")))


def encode_response(model: str, version: str, request: InferRequest,
                    outputs: dict[str, np.ndarray]) -> tuple[bytes, dict[str, str]]:
    """The response body and its extra headers: JSON, with binary outputs after it where asked."""
    doc: dict = {"model_name": model, "model_version": version, "outputs": []}
    if request.id is not None:
        doc["id"] = request.id
    blobs = []
    for name, arr in outputs.items():
        datatype = next(k for k, v in DTYPES.items() if np.dtype(v) == arr.dtype.newbyteorder("<"))
        entry: dict = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
        if request.all_binary or name in request.binary_outputs:
            raw = np.ascontiguousarray(arr, dtype=DTYPES[datatype]).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = arr.reshape(-1).tolist()
        doc["outputs"].append(entry)
    head = json.dumps(doc).encode()
    if not blobs:
        return head, {"content-type": "application/json"}
    return head + b"".join(blobs), {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(head))}
