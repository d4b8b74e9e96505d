"""Test-only writer of TensorFlow checkpoints (V2 tensor bundles and V1 single files), written apart from
the reader in inceptionv3.tf_bundle so that the two check each other. It follows TensorFlow's layout: a
LevelDB-style table (prefix-compressed keys, a restart point every 16 entries, 5-byte block trailers, an
index block, a 48-byte footer) holding hand-encoded protobufs.

Only the crc32c primitive is shared with the reader (a pure-Python CRC of ~90 MB would take minutes);
it is checked on its own in test_tfslim.py against the standard check value, a bitwise implementation
and checkpoints written by real TensorFlow.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from inceptionv3.weights.convert.tf_bundle import crc32c

MAGIC = 0xDB4775248B80FB57
# numpy dtype -> TensorFlow DataType enum value
TF_DTYPE = {np.dtype("float32"): 1, np.dtype("float64"): 2, np.dtype("int32"): 3, np.dtype("uint8"): 4,
            np.dtype("int64"): 9, np.dtype("bool"): 10, np.dtype("float16"): 19}


def _masked(crc: int) -> int:
    rotated = ((crc >> 15) | (crc << 17)) & 0xFFFFFFFF
    return (rotated + 0xA282EAD8) & 0xFFFFFFFF


def varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while True:
        low = n & 0x7F
        n >>= 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def field_varint(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value)


def field_bytes(number: int, value: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(value)) + value


def field_fixed32(number: int, value: int) -> bytes:
    return varint(number << 3 | 5) + value.to_bytes(4, "little")


def shape_proto(shape: Iterable[int]) -> bytes:
    return b"".join(field_bytes(2, field_varint(1, d)) for d in shape)


# ---------------------------------------------------------------------------------------------- table


def _block(entries: list[tuple[bytes, bytes]], restart_every: int = 16) -> bytes:
    out, restarts, previous = bytearray(), [], b""
    for i, (key, value) in enumerate(entries):
        shared = 0
        if i % restart_every == 0:
            restarts.append(len(out))
        else:
            while shared < min(len(key), len(previous)) and key[shared] == previous[shared]:
                shared += 1
        out += varint(shared) + varint(len(key) - shared) + varint(len(value)) + key[shared:] + value
        previous = key
    for r in restarts or [0]:
        out += r.to_bytes(4, "little")
    out += len(restarts or [0]).to_bytes(4, "little")
    return bytes(out)


def write_table(path: Path, items: list[tuple[bytes, bytes]], block_size: int = 4096,
                compression: int = 0) -> Path:
    """A table file of sorted (key, value) items; ``compression`` is only written into the trailers."""
    items = sorted(items)
    data = bytearray()

    def emit(block: bytes) -> bytes:
        handle = varint(len(data)) + varint(len(block))
        trailer = bytes([compression])
        data.extend(block + trailer + _masked(crc32c(block + trailer)).to_bytes(4, "little"))
        return handle

    index, pending, size = [], [], 0
    for key, value in items:
        pending.append((key, value))
        size += len(key) + len(value)
        if size >= block_size:
            index.append((pending[-1][0], emit(_block(pending))))
            pending, size = [], 0
    if pending:
        index.append((pending[-1][0], emit(_block(pending))))
    meta_handle = emit(_block([]))
    index_handle = emit(_block(index, restart_every=1))
    footer = (meta_handle + index_handle).ljust(40, b"\0") + MAGIC.to_bytes(8, "little")
    path.write_bytes(bytes(data) + footer)
    return path


# ---------------------------------------------------------------------------------------------- checkpoints


def write_v2(prefix: Path, tensors: dict[str, np.ndarray], with_crc: bool = True) -> list[Path]:
    """PREFIX.index + PREFIX.data-00000-of-00001, as tf.train.Saver writes them."""
    data = bytearray()
    items = [(b"", field_varint(1, 1) + field_bytes(3, field_varint(1, 1)))]   # 1 shard; version
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        raw = array.astype(array.dtype.newbyteorder("<")).tobytes()
        entry = field_varint(1, TF_DTYPE[array.dtype]) + field_bytes(2, shape_proto(array.shape))
        if data:
            entry += field_varint(4, len(data))
        entry += field_varint(5, len(raw))
        if with_crc:
            entry += field_fixed32(6, _masked(crc32c(raw)))
        items.append((name.encode(), entry))
        data += raw
    data_path = Path(f"{prefix}.data-00000-of-00001")
    data_path.write_bytes(bytes(data))
    return [write_table(Path(f"{prefix}.index"), items), data_path]


def _tensor_proto(array: np.ndarray) -> bytes:
    proto = field_varint(1, TF_DTYPE[array.dtype]) + field_bytes(2, shape_proto(array.shape))
    flat = array.reshape(-1)
    if array.dtype == np.float32:
        return proto + field_bytes(5, flat.astype("<f4").tobytes())        # packed float_val
    if array.dtype == np.float64:
        return proto + field_bytes(6, flat.astype("<f8").tobytes())        # packed double_val
    if array.dtype == np.int64:
        return proto + field_bytes(10, b"".join(varint(int(v)) for v in flat))
    if array.dtype in (np.int32, np.uint8):
        return proto + field_bytes(7, b"".join(varint(int(v)) for v in flat))
    raise TypeError(f"no V1 encoding for {array.dtype} in this test writer")


def write_v1(path: Path, tensors: dict[str, np.ndarray], split: set[str] | None = None) -> Path:
    """A single-file V1 checkpoint (TensorSliceWriter's layout); tensors named in ``split`` are stored as
    two slices along their first axis, as partitioned variables are."""
    metas, items = [], []
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        full = b"".join(field_bytes(1, b"") for _ in array.shape)      # every extent: the whole dim
        parts = [(0, 0)]   # one slice: the whole tensor
        if split and name in split:
            half = array.shape[0] // 2
            parts = [(0, half), (half, array.shape[0] - half)]
        slices = []
        for start, length in parts:
            if len(parts) == 1:
                extent = full
            else:
                extent = field_bytes(1, field_varint(1, start) + field_varint(2, length)) + b"".join(
                    field_bytes(1, b"") for _ in array.shape[1:])
            slices.append(extent)
            part = array[start:start + length] if len(parts) > 1 else array
            saved = (field_bytes(1, name.encode()) + field_bytes(2, extent)
                     + field_bytes(3, _tensor_proto(part)))
            key = b"\x00" + name.encode() + b"\x00" + start.to_bytes(8, "big")
            items.append((key, field_bytes(2, saved)))
        metas.append(field_bytes(1, field_bytes(1, name.encode()) + field_bytes(2, shape_proto(array.shape))
                                 + field_varint(3, TF_DTYPE[array.dtype])
                                 + b"".join(field_bytes(4, s) for s in slices)))
    meta = b"".join(metas) + field_bytes(2, field_varint(1, 1))
    items.append((b"", field_bytes(1, meta)))
    return write_table(path, items)
