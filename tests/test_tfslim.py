"""TF-slim checkpoints: the tensor-bundle reader (on files written by real TensorFlow and by the test writer),
the TF-slim key map, parity of converted weights, and the bad-input messages."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import randomize_bn
from tf_bundle_writer import write_table, write_v1, write_v2

from inceptionv3.cli.main import main
from inceptionv3.models.inception import inception_v3
from inceptionv3.weights.convert.run import convert
from inceptionv3.weights.convert.tf_bundle import _update_slow, crc32c, mask_crc, open_checkpoint, unmask_crc
from inceptionv3.weights.convert.tfslim import SLIM_CONV_SCOPES, SLIM_HEADS
from inceptionv3.weights.errors import WeightsError
from inceptionv3.weights.load import load_model

DATA = Path(__file__).parent / "data" / "tf"
SIZE = 75


# ---------------------------------------------------------------------------------------------- crc32c


def _crc_bitwise(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def test_crc32c():
    assert crc32c(b"123456789") == 0xE3069283   # the standard CRC-32C check value
    rng = np.random.default_rng(0)
    for n in (0, 1, 7, 1000):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert crc32c(data) == _crc_bitwise(data)
        assert crc32c(data[n // 2:], crc32c(data[:n // 2])) == crc32c(data)   # continuing a crc
    for n in (4096 * 64, 4096 * 64 + 4097):   # the numpy lanes path, with a tail
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert crc32c(data) == _update_slow(0xFFFFFFFF, data) ^ 0xFFFFFFFF
    assert unmask_crc(mask_crc(0xE3069283)) == 0xE3069283 != mask_crc(0xE3069283)


# ---------------------------------------------------------------------------------------------- reader

# What tests/data/tf/make_tf_checkpoints.py gave TensorFlow 2.21 to save (V1 and V2 Saver files, and a
# TF2 object checkpoint); the files are TensorFlow's own output.
TF_VALUES = {
    "InceptionV3/Conv2d_1a_3x3/weights": np.arange(108, dtype=np.float32).reshape(3, 3, 3, 4) / 7 - 2,
    "InceptionV3/Conv2d_1a_3x3/BatchNorm/beta": np.array([0.5, -1.25, 3.0, 1e-3], np.float32),
    "f64": np.array([[1.5, -2.25], [1e300, -0.0]], np.float64),
    "i32": np.array([1, -2, 2**31 - 1], np.int32),
    "i64": np.array([-(2**40), 7], np.int64),
    "f16": np.array([0.5, -65504.0, 1.0 / 3], np.float16),
    "scalar": np.array(3.25, np.float32),
    "b": np.array([True, False, True]),
    "u8": np.array([0, 255, 7], np.uint8),
    "i8": np.array([-128, 5], np.int8),
    "i16": np.array([-300, 32767], np.int16),
    "global_step": np.array(12345, np.int64),
}
BF16 = [1.0, -2.5, 0.015625]   # V2 only: TF's V1 writer cannot save bfloat16


@pytest.mark.parametrize("name", ["v1.ckpt", "v2.ckpt", "v2.ckpt.index", "v2.ckpt.data-00000-of-00001"])
def test_reads_checkpoints_written_by_tensorflow(name):
    ckpt = open_checkpoint(DATA / name)
    assert ckpt.format == ("V1" if name == "v1.ckpt" else "V2")
    assert set(ckpt.tensors) == set(TF_VALUES) | ({"bf16"} if ckpt.format == "V2" else set())
    if ckpt.format == "V2":
        bf16 = ckpt.read("bf16")
        assert bf16.dtype == torch.bfloat16 and bf16.float().tolist() == BF16
    for key, want in TF_VALUES.items():
        got = ckpt.read(key)
        assert ckpt.tensors[key].shape == want.shape and tuple(got.shape) == want.shape
        assert str(got.dtype) == f"torch.{want.dtype}", key
        np.testing.assert_array_equal(got.numpy(), want, err_msg=key)


def test_tf2_object_checkpoint_skips_its_string_graph():
    ckpt = open_checkpoint(DATA / "tf2.ckpt")
    sd = ckpt.read_all()
    assert set(sd) == {"w/.ATTRIBUTES/VARIABLE_VALUE", "step/.ATTRIBUTES/VARIABLE_VALUE"}
    np.testing.assert_allclose(sd["w/.ATTRIBUTES/VARIABLE_VALUE"].numpy(),
                               np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3))
    assert ckpt.tensors["_CHECKPOINTABLE_OBJECT_GRAPH"].dtype == "string"
    with pytest.raises(WeightsError, match="dtype string"):
        ckpt.read("_CHECKPOINTABLE_OBJECT_GRAPH")


def _small_tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    # Many similar names: several blocks, restart points and shared key prefixes.
    out = {f"scope/layer_{i:03d}/weights": rng.standard_normal((i % 5 + 1, 3)).astype(np.float32)
           for i in range(60)}
    out.update(big=rng.standard_normal((300, 40)).astype(np.float32), f64=np.array([1e-300, -2.0]),
               i64=np.array([-(2**50), 3], np.int64), i32=np.array([-7, 2**31 - 1], np.int32),
               scalar=np.array(0.25, np.float32))
    return out


@pytest.mark.parametrize("fmt", ["V1", "V2"])
def test_writer_round_trip(tmp_path, fmt):
    tensors = _small_tensors()
    if fmt == "V2":
        write_v2(tmp_path / "m.ckpt", tensors)
    else:
        write_v1(tmp_path / "m.ckpt", tensors, split={"big", "scope/layer_004/weights"})
    sd = open_checkpoint(tmp_path / "m.ckpt").read_all()
    assert set(sd) == set(tensors)
    for key, want in tensors.items():
        np.testing.assert_array_equal(sd[key].numpy(), want, err_msg=key)


def test_damaged_checkpoints(tmp_path):
    tensors = _small_tensors()
    index, data = write_v2(tmp_path / "m.ckpt", tensors)
    raw = bytearray(data.read_bytes())
    raw[-5] ^= 0x40   # a bit of the last tensor
    data.write_bytes(bytes(raw))
    with pytest.raises(WeightsError, match="checksum mismatch in tensor 'scope/layer_059/weights'.*download"):
        open_checkpoint(tmp_path / "m.ckpt").read_all()
    data.write_bytes(bytes(raw[:-100]))
    with pytest.raises(WeightsError, match=r"ckpt\.data-00000-of-00001: shorter than the index.*truncated"):
        open_checkpoint(index).read_all()
    data.unlink()
    with pytest.raises(WeightsError, match="data file.*missing.*keep the .index and .data"):
        open_checkpoint(index)

    v1 = write_v1(tmp_path / "one.ckpt", tensors)
    v1.write_bytes(v1.read_bytes()[:-3000])
    with pytest.raises(WeightsError, match=r"one\.ckpt: not a TensorFlow checkpoint table.*truncated"):
        open_checkpoint(v1)
    write_table(tmp_path / "snappy.ckpt", [(b"", b"\x0a\x00")], compression=1)
    with pytest.raises(WeightsError, match="snappy-compressed.*re-save"):
        open_checkpoint(tmp_path / "snappy.ckpt")
    with pytest.raises(WeightsError, match="no such TensorFlow checkpoint.*prefix"):
        open_checkpoint(tmp_path / "absent.ckpt")


# ---------------------------------------------------------------------------------------------- key map

# Scopes and HWIO kernel shapes of the released inception_v3.ckpt, read off slim's nets/inception_v3.py
# (not from our map): the irregular names and a sample of the regular ones.
SLIM_KERNELS = {
    "Conv2d_1a_3x3": (3, 3, 3, 32),
    "Conv2d_4a_3x3": (3, 3, 80, 192),
    "Mixed_5b/Branch_1/Conv2d_0b_5x5": (5, 5, 48, 64),
    "Mixed_5b/Branch_3/Conv2d_0b_1x1": (1, 1, 192, 32),
    "Mixed_5c/Branch_1/Conv2d_0b_1x1": (1, 1, 256, 48),
    "Mixed_5c/Branch_1/Conv_1_0c_5x5": (5, 5, 48, 64),
    "Mixed_5d/Branch_1/Conv2d_0a_1x1": (1, 1, 288, 48),
    "Mixed_6a/Branch_0/Conv2d_1a_1x1": (3, 3, 288, 384),
    "Mixed_6a/Branch_1/Conv2d_0b_3x3": (3, 3, 64, 96),
    "Mixed_6a/Branch_1/Conv2d_1a_1x1": (3, 3, 96, 96),
    "Mixed_6b/Branch_1/Conv2d_0b_1x7": (1, 7, 128, 128),
    "Mixed_6b/Branch_2/Conv2d_0b_7x1": (7, 1, 128, 128),
    "Mixed_6e/Branch_2/Conv2d_0e_1x7": (1, 7, 192, 192),
    "Mixed_7a/Branch_0/Conv2d_1a_3x3": (3, 3, 192, 320),
    "Mixed_7a/Branch_1/Conv2d_1a_3x3": (3, 3, 192, 192),
    "Mixed_7b/Branch_1/Conv2d_0b_3x1": (3, 1, 384, 384),
    "Mixed_7c/Branch_1/Conv2d_0c_3x1": (3, 1, 384, 384),
    "Mixed_7c/Branch_2/Conv2d_0d_3x1": (3, 1, 384, 384),
    "AuxLogits/Conv2d_1b_1x1": (1, 1, 768, 128),
    "AuxLogits/Conv2d_2a_5x5": (5, 5, 128, 768),
}


def test_key_map_matches_slims_scopes():
    model = inception_v3(num_classes=1001, aux_logits=True, init_weights=False)
    sd = model.state_dict()
    convs = [k[: -len(".conv.weight")] for k in sd if k.endswith(".conv.weight")]
    assert sorted(SLIM_CONV_SCOPES) == sorted(convs) and len(convs) == 96   # 94 + 2 in the aux head
    assert len(set(SLIM_CONV_SCOPES.values())) == 96                         # one scope each
    by_scope = {scope: ours for ours, scope in SLIM_CONV_SCOPES.items()}
    for scope, hwio in SLIM_KERNELS.items():
        o, i, h, w = sd[f"{by_scope[scope]}.conv.weight"].shape
        assert (h, w, i, o) == hwio, scope


# ---------------------------------------------------------------------------------------------- parity


def to_slim(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """Our weights in TF-slim's names and layouts (HWIO kernels, 1x1-conv classifiers, no gamma)."""
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    out = {"global_step": np.array(1_000_000, np.int64)}
    for ours, scope in SLIM_CONV_SCOPES.items():
        if f"{ours}.conv.weight" not in sd:
            continue
        out[f"InceptionV3/{scope}/weights"] = sd[f"{ours}.conv.weight"].transpose(2, 3, 1, 0)
        for theirs, key in (("beta", "bias"), ("moving_mean", "running_mean"),
                            ("moving_variance", "running_var")):
            out[f"InceptionV3/{scope}/BatchNorm/{theirs}"] = sd[f"{ours}.bn.{key}"]
        out[f"InceptionV3/{scope}/weights/RMSProp"] = np.zeros(1, np.float32)   # an optimizer slot
    for ours, scope in SLIM_HEADS.items():
        if f"{ours}.weight" in sd:
            out[f"InceptionV3/{scope}/weights"] = sd[f"{ours}.weight"].T[None, None]
            out[f"InceptionV3/{scope}/biases"] = sd[f"{ours}.bias"]
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def slim_model():
    """A TF-slim-like InceptionV3 (1001 classes, aux head, TF pooling, BN without scale) and its tensors."""
    torch.manual_seed(0)
    model = inception_v3(num_classes=1001, aux_logits=True, count_include_pad=False)
    randomize_bn(model, 0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, torch.nn.Linear):
                m.weight.normal_(0, 0.1)
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.weight.fill_(1.0)   # slim's batch norm has scale=False
    return model.eval(), to_slim(model)


def _outputs(model: torch.nn.Module, x: torch.Tensor, grid: torch.Tensor) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return model(x), model.forward_head(model.forward_features(x), pre_logits=True), model.AuxLogits(grid)


@pytest.mark.parametrize("fmt, keep_background", [("V1", False), ("V2", True)])
def test_slim_parity(slim_model, tmp_path, fmt, keep_background):
    reference, tensors = slim_model
    if fmt == "V1":   # the released inception_v3.ckpt is a single V1 file
        src = write_v1(tmp_path / "inception_v3.ckpt", tensors)
    else:
        write_v2(tmp_path / "model.ckpt-100", tensors)
        src = tmp_path / "model.ckpt-100"
    result = convert(src, "tf-slim", tmp_path / "slim.safetensors", keep_background=keep_background)
    model = load_model(result["path"])
    assert model.config["count_include_pad"] is False and model.AuxLogits is not None
    assert model.meta.preprocess.mean == (0.5, 0.5, 0.5) and model.meta.preprocess.input_size == 299
    assert model.meta.preprocess.interpolation == "bilinear"
    torch.manual_seed(1)
    x, grid = torch.randn(2, 3, SIZE, SIZE), torch.randn(2, 768, 17, 17)
    want, got = _outputs(reference, x, grid), _outputs(model, x, grid)
    rows = slice(None) if keep_background else slice(1, None)
    assert model.num_classes == (1001 if keep_background else 1000)
    assert float(want[0].abs().max()) > 0.5
    torch.testing.assert_close(got[0], want[0][:, rows], rtol=0, atol=1e-4)   # logits
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=1e-4)            # pooled features
    torch.testing.assert_close(got[2], want[2][:, rows], rtol=0, atol=1e-4)   # aux logits
    names = model.meta.class_names
    assert len(names) == model.num_classes and names[-1] == "toilet tissue"
    assert (names[0] == "background") == keep_background


# ---------------------------------------------------------------------------------------------- bad input


def test_slim_bad_inputs(slim_model, tmp_path, capsys):
    _, tensors = slim_model

    def write(name: str, changed: dict) -> Path:
        # No tensor crcs: these files are written only to be refused, and quickly.
        write_v2(tmp_path / name, {k: v for k, v in {**tensors, **changed}.items() if v is not None},
                 with_crc=False)
        return tmp_path / name

    out = tmp_path / "x.safetensors"
    other = write_v2(tmp_path / "v1net", {"InceptionV1/Conv2d_1a_7x7/weights": np.zeros((7, 7, 3, 64),
                                                                                    np.float32)}, False)
    with pytest.raises(WeightsError, match="not a TF-slim InceptionV3 classifier.*InceptionV1"):
        convert(other[0], "tf-slim", out)

    aux = "InceptionV3/AuxLogits/Conv2d_2b_1x1/weights"
    broken = write("broken", {aux: np.zeros((1, 1, 768, 10), np.float32),   # another class count
                              "InceptionV3/Mixed_5b/Branch_0/Conv2d_0a_1x1/BatchNorm/beta": None,
                              "InceptionV3/Mixed_8a/Branch_0/Conv2d_0a_1x1/weights": np.zeros(1, np.float32)})
    with pytest.raises(WeightsError) as e:
        convert(broken, "tf-slim", out)
    message = str(e.value)
    assert str(broken) in message and "missing from the file (1): InceptionV3/Mixed_5b" in message
    assert "not in the key map (1): InceptionV3/Mixed_8a" in message
    assert f"mis-shaped (1): {aux}: file (1, 1, 768, 10) vs expected (1, 1, 768, 1001)" in message

    bias = "InceptionV3/Logits/Conv2d_1c_1x1/biases"
    nan = tensors[bias].copy()
    nan[3] = np.inf
    with pytest.raises(WeightsError, match="NaN or Inf"):
        convert(write("nan", {bias: nan}), "tf-slim", out)

    with pytest.raises(WeightsError, match="no ExponentialMovingAverage copies; convert without --ema"):
        convert(tmp_path / "nan", "tf-slim", out, ema=True)
    assert not out.exists()

    # EMA copies are skipped by default and used with ema=True (--ema).
    kernel = "InceptionV3/Conv2d_1a_3x3/weights"
    ema = write("ema", {f"{kernel}/ExponentialMovingAverage": tensors[kernel] * 2})
    plain = load_model(convert(ema, "tf-slim", tmp_path / "plain.safetensors")["path"])
    assert main(["convert", str(ema) + ".index", "--from", "tf-slim", "--ema", "--keep-background",
                 "--out", str(tmp_path / "ema.safetensors")]) == 0
    assert "tensors checked" in capsys.readouterr().out
    averaged = load_model(tmp_path / "ema.safetensors")
    w = torch.from_numpy(tensors[kernel]).permute(3, 2, 0, 1)
    torch.testing.assert_close(plain.Conv2d_1a_3x3.conv.weight, w, rtol=0, atol=0)
    torch.testing.assert_close(averaged.Conv2d_1a_3x3.conv.weight, 2 * w, rtol=0, atol=0)
    assert averaged.num_classes == 1001

    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "model.pth")   # a PyTorch file
    assert main(["convert", str(tmp_path / "model.pth"), "--from", "tf-slim", "--out", str(out)]) == 2
    assert "model.pth: not a TensorFlow checkpoint table" in capsys.readouterr().err
