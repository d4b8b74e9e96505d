"""Read TensorFlow checkpoints without TensorFlow.

Two on-disk formats, both built on TensorFlow's LevelDB-style sorted table (``tensorflow/core/lib/io``):

- **V2** (TF >= 0.12, ``tf.train.Saver`` / ``tf.train.Checkpoint``): ``PREFIX.index`` is a table whose key
  ``""`` holds a ``BundleHeaderProto`` and whose other keys are tensor names mapping to a
  ``BundleEntryProto`` (dtype, shape, shard, offset, size, crc32c); the raw little-endian tensor bytes live
  in ``PREFIX.data-SSSSS-of-NNNNN``.
- **V1** (the single ``*.ckpt`` files of 2016, e.g. TF-slim's ``inception_v3.ckpt``): one table whose key
  ``""`` holds a ``SavedTensorSlices`` with the metadata (names, shapes, dtypes, slices) and whose other
  keys hold one ``SavedSlice`` each, the values inside a ``TensorProto``.

Table layout: data blocks (entries with prefix-compressed keys, then uint32 restart offsets and their
count), each followed by a 5-byte trailer (compression type, masked crc32c of contents + type); an index
block mapping each data block's last key to its (offset, size) handle; a 48-byte footer (metaindex and
index handles as varints, zero padding, magic 0xdb4775248b80fb57). Protobufs are decoded by hand
(varints), so nothing beyond numpy and torch is needed. Every block and (V2) every tensor is checked
against its crc32c.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import WeightsError

log = logging.getLogger(__name__)

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48          # two block handles padded to 40 bytes, then the 8-byte magic
BLOCK_TRAILER = 5         # compression type (1 byte) + masked crc32c (4 bytes)

# TensorFlow DataType enum -> (our name, numpy dtype of the little-endian bytes). bfloat16 travels as its
# uint16 bit pattern (numpy has no bfloat16) and is reinterpreted by torch.
DTYPES: dict[int, tuple[str, str]] = {
    1: ("float32", "<f4"),
    2: ("float64", "<f8"),
    3: ("int32", "<i4"),
    4: ("uint8", "<u1"),
    5: ("int16", "<i2"),
    6: ("int8", "<i1"),
    9: ("int64", "<i8"),
    10: ("bool", "<?"),
    14: ("bfloat16", "<u2"),
    19: ("float16", "<f2"),
}

_NUMPY = {name: np.dtype(layout) for name, layout in DTYPES.values()}   # our name -> numpy dtype
_TF_NAMES = {7: "string", 8: "complex64", 18: "complex128", 20: "resource", 21: "variant"}

# TensorProto's typed value fields (V1 files store values there, not as raw bytes).
_FLOAT_VAL, _DOUBLE_VAL, _INT_VAL, _INT64_VAL, _BOOL_VAL, _HALF_VAL = 5, 6, 7, 10, 11, 13

_VALUE_FIELD = {"float32": _FLOAT_VAL, "float64": _DOUBLE_VAL, "int32": _INT_VAL, "int16": _INT_VAL,
                "int8": _INT_VAL, "uint8": _INT_VAL, "int64": _INT64_VAL, "bool": _BOOL_VAL,
                "float16": _HALF_VAL, "bfloat16": _HALF_VAL}

_POLY = 0x82F63B78   # Castagnoli, reflected


def _make_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ (_POLY if c & 1 else 0)
        table.append(c)
    return table


_TABLE = _make_table()
_TABLE_NP = np.array(_TABLE, dtype=np.uint32)
_LANES = 4096


def _update_slow(reg: int, data: bytes) -> int:
    table = _TABLE
    for b in data:
        reg = table[(reg ^ b) & 0xFF] ^ (reg >> 8)
    return reg


def _advance(columns: list[int], reg: int) -> int:
    # Multiply reg by the GF(2) matrix whose column i is columns[i].
    out, i = 0, 0
    while reg:
        if reg & 1:
            out ^= columns[i]
        reg >>= 1
        i += 1
    return out


def _update(reg: int, data: bytes) -> int:
    """The CRC register after ``data``. Large inputs run as 4096 interleaved lanes in numpy: the register
    update is linear over GF(2), so lane j's result joins the running one as A_L(reg) ^ lane_j, where A_L
    (advance L zero bytes) is measured on 32 extra lanes that start at the unit vectors."""
    n = len(data)
    length = n // _LANES
    if length < 64:
        return _update_slow(reg, data)
    lanes = np.zeros((length, _LANES + 32), dtype=np.uint8)
    lanes[:, :_LANES] = np.frombuffer(data, np.uint8, count=_LANES * length).reshape(_LANES, length).T
    state = np.zeros(_LANES + 32, dtype=np.uint32)
    state[0] = reg
    state[_LANES:] = 1 << np.arange(32, dtype=np.uint32)
    for row in lanes:
        state = _TABLE_NP[(state ^ row) & 0xFF] ^ (state >> 8)
    columns = [int(v) for v in state[_LANES:]]
    out = int(state[0])
    for lane in state[1:_LANES].tolist():
        out = _advance(columns, out) ^ lane
    return _update_slow(out, data[_LANES * length:])


def crc32c(data: bytes, value: int = 0) -> int:
    """CRC-32C (Castagnoli) of ``data``, continuing from the crc ``value`` of earlier bytes."""
    return _update(value ^ 0xFFFFFFFF, bytes(data)) ^ 0xFFFFFFFF


def mask_crc(crc: int) -> int:
    """LevelDB's masked crc (rotate right by 15, add a constant), as stored in the files."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def unmask_crc(masked: int) -> int:
    rot = (masked - 0xA282EAD8) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


class _Corrupt(ValueError):
    """Malformed bytes; re-raised as WeightsError with the file name by the caller."""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= len(buf):
            raise _Corrupt("varint runs past the end")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _Corrupt("varint longer than 10 bytes")


def _signed(value: int) -> int:
    # int32/int64 proto fields: negative numbers are 64-bit two's complement varints.
    return value - (1 << 64) if value >= 1 << 63 else value


def _fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of a serialized message: int for varint/fixed, bytes for len."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = int.from_bytes(buf[pos:pos + 8], "little"), pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + size], pos + size
        elif wire == 5:
            value, pos = int.from_bytes(buf[pos:pos + 4], "little"), pos + 4
        else:
            raise _Corrupt(f"unsupported protobuf wire type {wire}")
        if pos > end:
            raise _Corrupt("protobuf field runs past the end")
        yield number, wire, value


def _shape(buf: bytes) -> tuple[int, ...]:
    # TensorShapeProto: repeated Dim dim = 2 (Dim: int64 size = 1).
    dims = []
    for number, _, value in _fields(buf):
        if number == 2:
            size = 0
            for n, _, v in _fields(value):
                if n == 1:
                    size = _signed(v)
            if size < 0:
                raise _Corrupt("a tensor with an unknown dimension")
            dims.append(size)
    return tuple(dims)


def _extents(buf: bytes) -> list[tuple[int, int | None]]:
    # TensorSliceProto: repeated Extent extent = 1 (start = 1, length = 2; no length = the whole dim).
    out = []
    for number, _, value in _fields(buf):
        if number == 1:
            start, length = 0, None
            for n, _, v in _fields(value):
                if n == 1:
                    start = _signed(v)
                elif n == 2:
                    length = _signed(v)
            out.append((start, length))
    return out


def _dtype_name(code: int) -> str:
    return DTYPES[code][0] if code in DTYPES else _TF_NAMES.get(code, f"DataType {code}")


def _block(data: bytes, offset: int, size: int, label: str) -> bytes:
    end = offset + size + BLOCK_TRAILER
    if offset < 0 or end > len(data):
        raise WeightsError(f"{label}: a table block at bytes {offset}..{end} lies past the end of the "
                           f"{len(data)}-byte file; the file is truncated or damaged, download it again")
    contents = data[offset:offset + size]
    kind = data[offset + size]
    stored = int.from_bytes(data[offset + size + 1:end], "little")
    if unmask_crc(stored) != crc32c(data[offset:offset + size + 1]):
        raise WeightsError(f"{label}: checksum mismatch in the table block at byte {offset}; the file is "
                           f"damaged, download it again")
    if kind == 1:
        raise WeightsError(f"{label}: snappy-compressed table blocks are not supported; re-save the "
                           f"checkpoint uncompressed with a recent TensorFlow (tf.train.Saver writes "
                           f"uncompressed tables)")
    if kind != 0:
        raise WeightsError(f"{label}: unknown table block compression type {kind}; the file is damaged")
    return contents


def _block_entries(block: bytes) -> Iterator[tuple[bytes, bytes]]:
    if len(block) < 4:
        raise _Corrupt("table block shorter than its restart count")
    restarts = int.from_bytes(block[-4:], "little")
    limit = len(block) - 4 - 4 * restarts
    if limit < 0:
        raise _Corrupt("table block restart array larger than the block")
    pos, key = 0, b""
    while pos < limit:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        size, pos = _varint(block, pos)
        if shared > len(key) or pos + unshared + size > limit:
            raise _Corrupt("table entry runs past its block")
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        yield key, block[pos:pos + size]
        pos += size


def _handle(buf: bytes, pos: int = 0) -> tuple[int, int, int]:
    offset, pos = _varint(buf, pos)
    size, pos = _varint(buf, pos)
    return offset, size, pos


def read_table(data: bytes, label: str) -> Iterator[tuple[bytes, bytes]]:
    """Every (key, value) of a table file's bytes, in key order. Raises WeightsError naming ``label``."""
    if len(data) < FOOTER_SIZE or int.from_bytes(data[-8:], "little") != TABLE_MAGIC:
        raise WeightsError(f"{label}: not a TensorFlow checkpoint table (no table magic at the end); the "
                           f"file is truncated, or it is not a checkpoint")
    try:
        footer = data[-FOOTER_SIZE:-8]
        _, _, pos = _handle(footer)              # metaindex: TF writes an empty one
        offset, size, _ = _handle(footer, pos)   # index block
        index = _block(data, offset, size, label)
        for _, value in _block_entries(index):
            block_offset, block_size, _ = _handle(value)
            yield from _block_entries(_block(data, block_offset, block_size, label))
    except _Corrupt as e:
        raise WeightsError(f"{label}: damaged checkpoint table ({e}); download it again") from None


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str                 # "float32", ... or TF's name for types this reader cannot decode
    shape: tuple[int, ...]

    @property
    def supported(self) -> bool:
        return self.dtype in _VALUE_FIELD


def _to_torch(array: np.ndarray, dtype: str) -> torch.Tensor:
    # A native-order, writable, C-ordered copy (np.ascontiguousarray would turn a scalar into shape (1,)).
    t = torch.from_numpy(array.astype(array.dtype.newbyteorder("="), order="C", copy=True))
    return t.view(torch.bfloat16) if dtype == "bfloat16" else t


_DATA_FILE = re.compile(r"^(.*)\.data-\d{5}-of-\d{5}$")


def _resolve(path: Path) -> tuple[str, Path]:
    """("V1", file) or ("V2", prefix) for a checkpoint prefix, its .index / .data-* file, or a V1 file."""
    text = str(path)
    if text.endswith(".index"):
        return "V2", Path(text[: -len(".index")])
    found = _DATA_FILE.match(text)
    if found:
        return "V2", Path(found.group(1))
    if Path(text + ".index").is_file():
        return "V2", path
    if path.is_file():
        return "V1", path
    raise WeightsError(f"{path}: no such TensorFlow checkpoint: neither that file nor {path.name}.index "
                       f"exists. Pass the checkpoint prefix (the path before .index), its .index file, or a "
                       f"single-file (V1) .ckpt")


class TFCheckpoint:
    """A TensorFlow checkpoint opened for reading: ``tensors`` lists what it holds, ``read`` loads one."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.format, target = _resolve(Path(path))
        self.label = str(target) + (".index" if self.format == "V2" else "")
        index_path = Path(self.label)
        if not index_path.is_file():
            raise WeightsError(f"{index_path}: no such checkpoint file")
        data = index_path.read_bytes()
        self.files = [index_path]
        self.tensors: dict[str, TensorInfo] = {}
        try:
            if self.format == "V2":
                self._open_v2(target, data)
            else:
                self._open_v1(data)
        except _Corrupt as e:
            raise WeightsError(f"{self.label}: damaged checkpoint ({e}); download it again") from None

    # -- V2: index table + data shards ----------------------------------------------------------------

    def _open_v2(self, prefix: Path, data: bytes) -> None:
        entries = read_table(data, self.label)
        first = next(entries, None)
        if first is None or first[0] != b"":
            raise WeightsError(f"{self.label}: the index has no header entry; not a TensorFlow checkpoint")
        shards, self._big_endian = 1, False
        for number, _, value in _fields(first[1]):
            if number == 1:
                shards = int(value)
            elif number == 2:
                self._big_endian = value == 1
        self._entries: dict[str, dict] = {}
        for key, value in entries:
            entry: dict = {"dtype": 0, "shape": (), "shard": 0, "offset": 0, "size": 0, "crc": None,
                           "sliced": False}
            for number, _, v in _fields(value):
                if number == 1:
                    entry["dtype"] = v
                elif number == 2:
                    entry["shape"] = _shape(v)
                elif number == 3:
                    entry["shard"] = v
                elif number == 4:
                    entry["offset"] = v
                elif number == 5:
                    entry["size"] = v
                elif number == 6:
                    entry["crc"] = v
                elif number == 7:
                    entry["sliced"] = True
            name = key.decode("utf-8", "replace")
            self._entries[name] = entry
            self.tensors[name] = TensorInfo(name, _dtype_name(entry["dtype"]), entry["shape"])
        self._data_files = [Path(f"{prefix}.data-{i:05d}-of-{shards:05d}") for i in range(shards)]
        missing = [str(p) for p in self._data_files if not p.is_file()]
        if missing:
            raise WeightsError(f"{self.label}: the checkpoint's data file(s) are missing: "
                               f"{', '.join(missing)}; keep the .index and .data-* files together")
        self.files += self._data_files

    def _read_v2(self, info: TensorInfo) -> torch.Tensor:
        entry = self._entries[info.name]
        if entry["sliced"]:
            raise WeightsError(f"{self.label}: tensor {info.name!r} is saved as partitioned slices, which "
                               f"this reader does not assemble; re-save it unpartitioned")
        if entry["shard"] >= len(self._data_files):
            raise WeightsError(f"{self.label}: tensor {info.name!r} points at data shard {entry['shard']} of "
                               f"{len(self._data_files)}; the index is damaged")
        path = self._data_files[entry["shard"]]
        with open(path, "rb") as f:
            f.seek(entry["offset"])
            raw = f.read(entry["size"])
        if len(raw) != entry["size"]:
            raise WeightsError(f"{path}: shorter than the index says (tensor {info.name!r} needs bytes "
                               f"{entry['offset']}..{entry['offset'] + entry['size']}); the file is "
                               f"truncated, download it again")
        if entry["crc"] is not None and unmask_crc(entry["crc"]) != crc32c(raw):
            raise WeightsError(f"{path}: checksum mismatch in tensor {info.name!r}; the file is damaged, "
                               f"download it again")
        dtype = _NUMPY[info.dtype]
        if self._big_endian:
            dtype = dtype.newbyteorder(">")
        numel = int(np.prod(info.shape, dtype=np.int64))
        if len(raw) != numel * dtype.itemsize:
            raise WeightsError(f"{self.label}: tensor {info.name!r} has {len(raw)} bytes for shape "
                               f"{info.shape} of {info.dtype}; the checkpoint is damaged")
        return _to_torch(np.frombuffer(raw, dtype).reshape(info.shape), info.dtype)

    # -- V1: one table of SavedTensorSlices ---------------------------------------------------------

    def _open_v1(self, data: bytes) -> None:
        self._slices: dict[str, list[tuple[list, bytes]]] = {}
        entries = read_table(data, self.label)
        first = next(entries, None)
        # V1 keeps a SavedTensorSliceMeta (a message, wire type 2) in field 1 of the "" entry; a V2 index
        # keeps BundleHeaderProto's varints there.
        if first is None or first[0] != b"" or not any(n == 1 and w == 2 for n, w, _ in _fields(first[1])):
            raise WeightsError(f"{self.label}: not a single-file (V1) TensorFlow checkpoint; a V2 checkpoint "
                               f"is passed as PREFIX or PREFIX.index, next to its .data-* files")
        for number, wire, meta in _fields(first[1]):
            if number == 1 and wire == 2:        # SavedTensorSliceMeta: repeated SavedSliceMeta = 1
                for n, _, item in _fields(meta):
                    if n == 1:
                        self._add_meta(item)
        for _, value in entries:
            for number, wire, v in _fields(value):
                if number == 2 and wire == 2:    # SavedTensorSlices.data: SavedSlice
                    self._add_slice(v)

    def _add_meta(self, buf: bytes) -> None:
        name, shape, dtype = "", (), 0
        for number, _, value in _fields(buf):
            if number == 1:
                name = value.decode("utf-8", "replace")
            elif number == 2:
                shape = _shape(value)
            elif number == 3:
                dtype = value
        self.tensors[name] = TensorInfo(name, _dtype_name(dtype), shape)

    def _add_slice(self, buf: bytes) -> None:
        name, extents, proto = "", [], b""
        for number, _, value in _fields(buf):
            if number == 1:
                name = value.decode("utf-8", "replace")
            elif number == 2:
                extents = _extents(value)
            elif number == 3:
                proto = value
        self._slices.setdefault(name, []).append((extents, proto))

    def _read_v1(self, info: TensorInfo) -> torch.Tensor:
        dtype = _NUMPY[info.dtype]
        slices = self._slices.get(info.name)
        if not slices:
            raise WeightsError(f"{self.label}: tensor {info.name!r} is listed but has no data; the file is "
                               f"damaged")
        out = np.zeros(info.shape, dtype=dtype)
        covered = 0
        for extents, proto in slices:
            region = tuple(slice(s, None if n is None else s + n) for s, n in extents[:len(info.shape)])
            target = out[region] if region else out
            target[...] = _tensor_proto_values(proto, info, target.size, dtype).reshape(target.shape)
            covered += target.size
        if covered != out.size:
            raise WeightsError(f"{self.label}: the slices of {info.name!r} cover {covered} of {out.size} "
                               f"values; the checkpoint is incomplete")
        return _to_torch(out, info.dtype)

    # -- both ---------------------------------------------------------------------------------------

    def read(self, name: str) -> torch.Tensor:
        """The tensor called ``name`` (float32, int64 ... as stored)."""
        info = self.tensors.get(name)
        if info is None:
            raise WeightsError(f"{self.label}: no tensor {name!r} in this checkpoint")
        if not info.supported:
            raise WeightsError(f"{self.label}: tensor {name!r} has dtype {info.dtype}, which this reader "
                               f"does not decode")
        try:
            return self._read_v2(info) if self.format == "V2" else self._read_v1(info)
        except _Corrupt as e:
            raise WeightsError(f"{self.label}: damaged tensor {name!r} ({e}); download it again") from None

    def read_all(self) -> dict[str, torch.Tensor]:
        """Every tensor of a supported dtype; others (TF2's string object graph ...) are logged, left out."""
        skipped = [n for n, i in self.tensors.items() if not i.supported]
        if skipped:
            log.info("%s: left out %d tensor(s) of unsupported dtypes: %s", self.label, len(skipped),
                     ", ".join(skipped[:5]))
        return {n: self.read(n) for n, i in self.tensors.items() if i.supported}


def _tensor_proto_values(buf: bytes, info: TensorInfo, count: int, dtype: np.dtype) -> np.ndarray:
    """``count`` values of a TensorProto: raw ``tensor_content`` or the dtype's repeated value field."""
    field = _VALUE_FIELD[info.dtype]
    chunks: list[bytes] = []
    singles: list[int] = []
    content = None
    for number, wire, value in _fields(buf):
        if number == 4:
            content = value
        elif number == field:
            if wire == 2:
                chunks.append(value)      # packed
            else:
                singles.append(value)     # one unpacked value
    if content is not None:
        values = np.frombuffer(content, dtype)
    elif field in (_FLOAT_VAL, _DOUBLE_VAL):
        raw = b"".join(chunks) + b"".join(v.to_bytes(dtype.itemsize, "little") for v in singles)
        values = np.frombuffer(raw, dtype)
    else:   # varints: ints, bools, and halfs as their 16-bit patterns
        for chunk in chunks:
            pos = 0
            while pos < len(chunk):
                v, pos = _varint(chunk, pos)
                singles.append(v)
        ints = [_signed(v) for v in singles]
        if info.dtype in ("float16", "bfloat16"):
            values = np.array(ints, dtype=np.uint16).view(dtype)
        else:
            values = np.array(ints, dtype=np.int64).astype(dtype)
    if values.size == 1 and count > 1:   # TensorProto's short form: one value repeated
        values = np.full(count, values[0], dtype=dtype)
    if values.size != count:
        raise WeightsError(f"tensor {info.name!r}: {values.size} stored values for a slice of {count}; the "
                           f"checkpoint is damaged")
    return values


def open_checkpoint(path: str | os.PathLike) -> TFCheckpoint:
    """Open a TF checkpoint: a V2 prefix (``model.ckpt``), its ``.index`` / ``.data-*`` file, or a V1 file."""
    return TFCheckpoint(path)
