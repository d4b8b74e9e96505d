"""The KServe v2 / Open Inference Protocol endpoints, driven by the real ``tritonclient.http`` client with its
defaults (the binary-data extension), and malformed requests sent by hand (400 with the reason)."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from test_serve_fixtures import CLASSES, make_images, make_weights, running_server

from inceptionv3.engine.inputs import model_transform
from inceptionv3.serve.config import ServeConfig
from inceptionv3.serve.protocol import join_bytes
from inceptionv3.tasks.predict import predict
from inceptionv3.weights.load import load_model

httpclient = pytest.importorskip("tritonclient.http")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("v2")
    weights = make_weights(root / "tiny.safetensors")
    images = make_images(root / "images", n=3)
    expected = predict(images, weights=weights, top_k=3, workers=0)
    with running_server(ServeConfig(weights=str(weights), port=0, max_delay_ms=1, backend="torch")) as running:
        yield {"server": running, "weights": weights, "images": images, "expected": expected}


@pytest.fixture()
def triton(setup):
    client = httpclient.InferenceServerClient(f"127.0.0.1:{setup['server'].port}")
    yield client
    client.close()


def _probabilities(result: dict) -> np.ndarray:
    p = np.zeros(len(CLASSES), np.float32)
    for row in result["predictions"]:
        p[row["index"]] = row["probability"]
    return p


def test_health_and_metadata(triton):
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("tiny")
    meta = triton.get_server_metadata()
    assert meta["name"] == "inceptionv3" and "binary_tensor_data" in meta["extensions"]
    model = triton.get_model_metadata("tiny")
    assert model["name"] == "tiny"
    assert {i["name"]: i["datatype"] for i in model["inputs"]} == {"IMAGE": "BYTES", "INPUT": "FP32"}
    assert {o["name"]: o["shape"] for o in model["outputs"]} == {
        "probabilities": [-1, 3], "logits": [-1, 3], "features": [-1, 2048]}
    assert model["parameters"]["classes"] == CLASSES


def test_encoded_images_as_bytes_match_predict(setup, triton):
    blobs = np.array([p.read_bytes() for p in setup["images"]], dtype=np.object_)
    inp = httpclient.InferInput("IMAGE", [len(blobs)], "BYTES")
    inp.set_data_from_numpy(blobs)              # binary_data=True: the client's default
    result = triton.infer("tiny", [inp])        # no outputs named: every output binary, the default set
    probs = result.as_numpy("probabilities")
    assert probs.shape == (3, 3)
    want = np.stack([_probabilities(r) for r in setup["expected"]])
    np.testing.assert_allclose(probs, want, atol=1e-5)


def test_preprocessed_fp32_and_named_outputs(setup, triton):
    model = load_model(setup["weights"])
    transform = model_transform(model)
    x = np.stack([transform(Image.open(p).convert("RGB")).numpy() for p in setup["images"][:2]])
    inp = httpclient.InferInput("INPUT", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    outputs = [httpclient.InferRequestedOutput("logits"),
               httpclient.InferRequestedOutput("features", binary_data=False)]
    result = triton.infer("tiny", [inp], outputs=outputs)
    logits, features = result.as_numpy("logits"), result.as_numpy("features")
    assert logits.shape == (2, 3) and features.shape == (2, 2048)
    want = np.stack([_probabilities(r) for r in setup["expected"][:2]])
    np.testing.assert_allclose(np.exp(logits) / np.exp(logits).sum(1, keepdims=True), want, atol=1e-5)
    # The same tensor as JSON (no binary extension) gives the same answer.
    inp = httpclient.InferInput("INPUT", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=False)
    again = triton.infer("tiny", [inp], outputs=[httpclient.InferRequestedOutput("logits", binary_data=False)])
    np.testing.assert_allclose(again.as_numpy("logits"), logits, atol=1e-4)


def _post(setup, body, headers=None, model: str = "tiny") -> httpx.Response:
    url = f"{setup['server'].url}/v2/models/{model}/infer"
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(url, content=content, headers=headers or {"content-type": "application/json"}, timeout=60)


def test_malformed_requests_get_400_with_the_reason(setup):
    x = {"name": "INPUT", "datatype": "FP32", "shape": [1, 3, 75, 75], "data": [0.0] * (3 * 75 * 75)}
    cases = [
        (b"{not json", "not valid JSON"),
        ([1, 2], "must be a JSON object"),
        ({"inputs": []}, "non-empty list"),
        ({"inputs": [{**x, "shape": [1, 3, 32, 32], "data": [0.0] * (3 * 32 * 32)}]}, "must have shape [N, 3, 75, 75]"),
        ({"inputs": [{**x, "data": [0.0] * 10}]}, "has 10 elements"),
        ({"inputs": [{**x, "datatype": "INT32", "data": [0] * (3 * 75 * 75)}]}, "datatype INT32 is not accepted"),
        ({"inputs": [{**x, "datatype": "FP33"}]}, "unknown datatype 'FP33'"),
        ({"inputs": [{**x, "shape": "1x3"}]}, "'shape' must be a list"),
        ({"inputs": [x, x]}, "takes one input"),
        ({"inputs": [x], "outputs": [{"name": "boxes"}]}, "unknown output(s) 'boxes'"),
        ({"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1], "data": ["%%%"]}]}, "not valid base64"),
        ({"inputs": [{**x, "data": ["a"] * (3 * 75 * 75)}]}, "must hold numbers"),
    ]
    for body, reason in cases:
        r = _post(setup, body)
        assert r.status_code == 400, (reason, r.status_code, r.text)
        assert reason in r.json()["error"], (reason, r.json())
    # The binary extension: sizes that do not add up.
    head = json.dumps({"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1],
                                   "parameters": {"binary_data_size": 100}}]}).encode()
    for body, length, reason in [(head + b"\0" * 10, len(head), "runs past the body's end"),
                                 (head + b"\0" * 10, 10**6, "Inference-Header-Content-Length is 1000000"),
                                 (head + struct.pack("<I", 500) + b"x" * 96, len(head), "runs past the data's end")]:
        r = _post(setup, body, {"Inference-Header-Content-Length": str(length),
                                "content-type": "application/octet-stream"})
        assert r.status_code == 400 and reason in r.json()["error"], (reason, r.text)


def test_bad_images_and_unknown_models(setup):
    head = {"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1],
                        "parameters": {"binary_data_size": len(join_bytes([b"not an image"]))}}]}
    raw = json.dumps(head).encode()
    r = _post(setup, raw + join_bytes([b"not an image"]), {"Inference-Header-Content-Length": str(len(raw))})
    assert r.status_code == 422 and "IMAGE[0]: not an image PIL can read" in r.json()["detail"]
    r = _post(setup, {"inputs": []}, model="resnet")
    assert r.status_code == 404 and "unknown model 'resnet'" in r.json()["detail"]
    r = httpx.get(f"{setup['server'].url}/v2/models/tiny/versions/7/ready")
    assert r.status_code == 404


def test_the_weights_file_is_the_model_name(setup):
    assert Path(str(setup["weights"])).stem == setup["server"].service.name == "tiny"
