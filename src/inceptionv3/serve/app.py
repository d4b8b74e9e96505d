"""The FastAPI application: REST (``/v1``), KServe v2 (``/v2``), ``/metrics``, the page (``/``) and the
API reference (``/docs``, from ``/openapi.json``).

FastAPI's own docs pages load their scripts from a CDN, so they are off. ``/docs`` is Swagger UI's
interactive page served from the package's own copy of its files where ``swagger-ui-bundle`` is
installed (the ``serve`` extra brings it), else a reference page of ours that reads ``/openapi.json``;
neither loads anything from elsewhere. The guard in front of every route checks the
bearer token (``hmac.compare_digest``, before any body is read) and records each request's route,
status and latency. Request bodies are read by ``uploads.read_body`` only, bounded by the upload limit.
"""
from __future__ import annotations

import asyncio
import hmac
import io
import json
import logging
import time
from contextlib import asynccontextmanager
from importlib.resources import files
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from .. import __version__
from .batcher import QueueFull
from .config import ServeConfig
from .metrics import ServerMetrics
from .protocol import HEADER_LENGTH, InferRequest, ProtocolError, encode_response, parse_request
from .service import Service, as_numpy
from .uploads import Failure, Upload, read_body, uploads_of

log = logging.getLogger(__name__)

STATIC = files("inceptionv3.serve") / "static"
V2_OUTPUTS = ("probabilities", "logits", "features")
MODEL_VERSION = "1"

# Routes anyone may reach without the token: the page and its files, the API reference and the probes
# an orchestrator polls. Everything that runs the model or tells about it needs the token when one is set.
OPEN_PATHS = ("/", "/docs", "/openapi.json", "/favicon.ico", "/v2/health/live", "/v2/health/ready")
OPEN_PREFIXES = ("/static/",)

# The route label of the metrics: a fixed set, so a client probing random paths cannot grow them.
ROUTES = ("/v1/predict", "/v1/features", "/v1/explain", "/v1/model", "/v2/health", "/v2/models", "/v2",
          "/metrics", "/static", "/docs", "/openapi.json")

BINARY_BODY = {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                           "multipart/form-data": {"schema": {"type": "object", "properties": {
                               "file": {"type": "array", "items": {"type": "string", "format": "binary"}}}}}},
               "description": "one image as the raw body, or one or more images as multipart files"}


SWAGGER_PREFIX = "/static/swagger"


def _swagger_ui_files() -> Any:
    """The folder of Swagger UI's script and style sheet from ``swagger-ui-bundle``, or None."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return None
    return swagger_ui_path if (swagger_ui_path / "swagger-ui-bundle.js").is_file() else None


def route_of(path: str) -> str:
    if path == "/":
        return "/"
    return next((r for r in ROUTES if path == r or path.startswith(r + "/")), "other")


class Guard:
    """ASGI middleware: the token check and the request metrics, around every HTTP request."""

    def __init__(self, app: Any, token: str | None, metrics: ServerMetrics) -> None:
        self.app, self.metrics = app, metrics
        self.token = token.encode() if token is not None else None

    def _allowed(self, scope: dict) -> bool:
        path = scope["path"]
        if self.token is None or path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            return True
        headers = dict(scope.get("headers") or [])
        auth = headers.get(b"authorization", b"")
        given = auth[7:].strip() if auth[:7].lower() == b"bearer " else b""
        # Constant time, so the answer's timing tells nothing about how much of a guess was right.
        return hmac.compare_digest(given, self.token)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        route = route_of(scope["path"])
        status = [500]

        async def sending(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            if self._allowed(scope):
                await self.app(scope, receive, sending)
            else:
                self.metrics.errors.labels("unauthorized").inc()
                response = JSONResponse({"detail": "missing or wrong token: send 'Authorization: Bearer TOKEN' "
                                                   "(the server's --token or $INCEPTIONV3_TOKEN)"},
                                        status_code=401, headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, sending)
        finally:
            self.metrics.requests.labels(route, str(status[0])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - t0)


def _failure_response(e: Failure, metrics: ServerMetrics) -> JSONResponse:
    metrics.errors.labels(e.kind).inc()
    return JSONResponse({"detail": e.detail}, status_code=e.status, headers=e.headers)


async def _body(request: Request, config: ServeConfig) -> bytes:
    return await read_body(request.stream(), request.headers.get("content-length"), config.max_upload_bytes)


def _top_k(value: int | None, config: ServeConfig, classes: int) -> int:
    k = config.top_k if value is None else value
    if k < 1:
        raise Failure(400, "bad_request", f"top_k must be at least 1, got {k}")
    return min(k, classes)


def create_app(config: ServeConfig, service: Service | None = None) -> FastAPI:
    """The application for ``config``; the model is loaded here (before the server listens), unless a
    ``Service`` is given."""
    metrics = service.metrics if service is not None else ServerMetrics()
    service = service or Service(config, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start()
        log.info("model %s ready: %s", service.name, service.engines["logits"].describe())
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="inceptionv3 serve", version=__version__, lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url="/openapi.json",
                  description="InceptionV3 behind HTTP: REST, KServe v2 / Open Inference Protocol, "
                              "Prometheus metrics. See docs/serving.md.")
    app.state.service, app.state.metrics = service, metrics

    @app.exception_handler(Failure)
    async def on_failure(request: Request, e: Failure) -> JSONResponse:
        return _failure_response(e, metrics)

    @app.exception_handler(QueueFull)
    async def on_queue_full(request: Request, e: QueueFull) -> JSONResponse:
        metrics.errors.labels("queue_full").inc()
        return JSONResponse({"detail": str(e)}, status_code=503, headers={"Retry-After": str(e.retry_after)})

    @app.exception_handler(ProtocolError)
    async def on_protocol(request: Request, e: ProtocolError) -> JSONResponse:
        metrics.errors.labels("bad_request").inc()
        return JSONResponse({"error": str(e), "detail": str(e)}, status_code=400)

    # -- the page and the reference --------------------------------------------------------------------
    swagger = _swagger_ui_files()
    if swagger is not None:   # mounted first: /static below would otherwise answer these paths
        app.mount(SWAGGER_PREFIX, StaticFiles(directory=str(swagger)), name="swagger")
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(str(STATIC / "index.html"))

    @app.get("/docs", include_in_schema=False)
    async def docs_page() -> Response:
        if swagger is None:
            return FileResponse(str(STATIC / "docs.html"))
        from fastapi.openapi.docs import get_swagger_ui_html

        # validatorUrl off: Swagger UI would otherwise send the spec to validator.swagger.io
        return get_swagger_ui_html(openapi_url="/openapi.json", title="inceptionv3 serve: API",
                                   swagger_js_url=f"{SWAGGER_PREFIX}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{SWAGGER_PREFIX}/swagger-ui.css",
                                   swagger_favicon_url="/favicon.ico",
                                   swagger_ui_parameters={"validatorUrl": None})

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics (text exposition format)")
    async def prometheus() -> Response:
        for output, b in service.batchers.items():
            metrics.queue_depth.labels(output).set(b.waiting)
        return Response(metrics.exposition(), media_type=metrics.content_type)

    # -- REST ------------------------------------------------------------------------------------------
    @app.get("/v1/model", tags=["rest"], summary="The model: name, classes, preprocessing, engine")
    async def model_info() -> dict:
        return service.describe()

    @app.post("/v1/predict", tags=["rest"], openapi_extra={"requestBody": BINARY_BODY},
              summary="Top-k classes of each image (the JSON of `inceptionv3 predict --format json`)")
    async def predict(request: Request, top_k: int | None = None) -> list[dict]:
        k = _top_k(top_k, config, service.meta.num_classes)
        uploads = uploads_of(await _body(request, config), request.headers.get("content-type"))
        logits = await service.run("logits", await service.decode(uploads))
        return [{"path": u.name, "predictions": p} for u, p in zip(uploads, service.predictions(logits, k))]

    @app.post("/v1/features", tags=["rest"], openapi_extra={"requestBody": BINARY_BODY},
              summary="Feature vectors of each image at a tap (default: the 2048-d pool)")
    async def features(request: Request, layer: str = "pool") -> dict:
        batcher = await service.batcher(layer)
        uploads = uploads_of(await _body(request, config), request.headers.get("content-type"))
        out = await batcher.submit(await service.decode(uploads))
        return {"layer": layer, "dim": int(out.shape[1]),
                "results": [{"path": u.name, "features": row} for u, row in zip(uploads, out.tolist())]}

    @app.post("/v1/explain", tags=["rest"], openapi_extra={"requestBody": BINARY_BODY},
              summary="Grad-CAM (or another Captum method) for the top class or ?target=: a PNG overlay, "
                      "or ?format=json for the raw map")
    async def explain(request: Request, target: str | None = None, method: str = "gradcam",
                      format: str = "png", layer: str | None = None, alpha: float = 0.5) -> Response:
        if format not in ("png", "json"):
            raise Failure(400, "bad_request", f"format must be png or json, got {format!r}")
        if not 0 <= alpha <= 1:
            raise Failure(400, "bad_request", f"alpha must be between 0 and 1, got {alpha}")
        uploads = uploads_of(await _body(request, config), request.headers.get("content-type"))
        if format == "png" and len(uploads) != 1:
            raise Failure(400, "bad_request", f"a PNG answer holds one overlay; got {len(uploads)} images "
                                              "(send one, or ask for ?format=json)")
        results = await service.explain(await service.decode(uploads), target, method, layer, alpha)
        names = service.class_names
        if format == "png":
            r = results[0]
            buf = io.BytesIO()
            r["overlay"].save(buf, format="PNG")
            return Response(buf.getvalue(), media_type="image/png", headers={
                "X-Target": str(r["target"]), "X-Label": names[r["target"]].encode("ascii", "replace").decode(),
                "X-Score": f"{r['score']:.6f}"})
        return JSONResponse([{"path": u.name, "method": method, "target": r["target"],
                              "label": names[r["target"]], "probability": r["score"],
                              "shape": list(r["map"].shape), "map": np.round(r["map"], 5).tolist()}
                             for u, r in zip(uploads, results)])

    # -- KServe v2 / Open Inference Protocol -----------------------------------------------------------
    @app.get("/v2", tags=["v2"], summary="Server metadata")
    async def v2_server() -> dict:
        return {"name": "inceptionv3", "version": __version__, "extensions": ["binary_tensor_data"]}

    @app.get("/v2/health/live", tags=["v2"], summary="Liveness: the process answers")
    async def v2_live() -> dict:
        return {"live": True}

    @app.get("/v2/health/ready", tags=["v2"], summary="Readiness: the model is loaded and serving")
    async def v2_ready() -> Response:
        return JSONResponse({"ready": service.ready}, status_code=200 if service.ready else 503)

    def _model(name: str, version: str | None = None) -> None:
        if name != service.name:
            raise Failure(404, "not_found", f"unknown model {name!r}; this server serves {service.name!r}")
        if version is not None and version != MODEL_VERSION:
            raise Failure(404, "not_found", f"model {name!r} has version {MODEL_VERSION} only, not {version!r}")

    def _metadata() -> dict:
        c, s, _ = service.input_shape
        feat = service.model.num_features
        return {"name": service.name, "versions": [MODEL_VERSION], "platform": "pytorch_inceptionv3",
                "inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [-1]},
                           {"name": "INPUT", "datatype": "FP32", "shape": [-1, c, s, s]}],
                "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, service.meta.num_classes]},
                            {"name": "logits", "datatype": "FP32", "shape": [-1, service.meta.num_classes]},
                            {"name": "features", "datatype": "FP32", "shape": [-1, feat]}],
                "parameters": {"classes": service.class_names, "preprocess": service.meta.preprocess.to_dict()}}

    @app.get("/v2/models/{name}", tags=["v2"], summary="Model metadata: inputs and outputs")
    async def v2_model(name: str) -> dict:
        _model(name)
        return _metadata()

    @app.get("/v2/models/{name}/versions/{version}", tags=["v2"], summary="Model metadata (one version)")
    async def v2_model_version(name: str, version: str) -> dict:
        _model(name, version)
        return _metadata()

    @app.get("/v2/models/{name}/ready", tags=["v2"], summary="Model readiness")
    async def v2_model_ready(name: str) -> Response:
        _model(name)
        return JSONResponse({"name": name, "ready": service.ready}, status_code=200 if service.ready else 503)

    @app.get("/v2/models/{name}/versions/{version}/ready", tags=["v2"], summary="Model readiness (one version)")
    async def v2_model_version_ready(name: str, version: str) -> Response:
        _model(name, version)
        return JSONResponse({"name": name, "ready": service.ready}, status_code=200 if service.ready else 503)

    async def _infer(request: Request, name: str, version: str | None) -> Response:
        _model(name, version)
        body = await _body(request, config)
        req = parse_request(body, request.headers.get(HEADER_LENGTH.lower()))
        images = await _v2_images(req, service)
        wanted = req.outputs or ["probabilities"]
        unknown = [o for o in wanted if o not in V2_OUTPUTS]
        if unknown:
            raise ProtocolError(f"unknown output(s) {', '.join(map(repr, unknown))}; this model has "
                                f"{', '.join(V2_OUTPUTS)}")
        runs = {}
        if "probabilities" in wanted or "logits" in wanted:
            runs["logits"] = service.run("logits", images)
        if "features" in wanted:
            runs["pool"] = service.run("pool", images)
        done = dict(zip(runs, await asyncio.gather(*runs.values())))
        arrays = {"probabilities": lambda: as_numpy(done["logits"].float().softmax(dim=1)),
                  "logits": lambda: as_numpy(done["logits"]), "features": lambda: as_numpy(done["pool"])}
        payload, headers = encode_response(service.name, MODEL_VERSION, req, {o: arrays[o]() for o in wanted})
        return Response(payload, headers=headers, media_type=headers.pop("content-type"))

    @app.post("/v2/models/{name}/infer", tags=["v2"], summary="Inference: JSON tensors or the binary extension")
    async def v2_infer(request: Request, name: str) -> Response:
        return await _infer(request, name, None)

    @app.post("/v2/models/{name}/versions/{version}/infer", tags=["v2"], summary="Inference (one version)")
    async def v2_infer_version(request: Request, name: str, version: str) -> Response:
        return await _infer(request, name, version)

    app.add_middleware(Guard, token=config.token, metrics=metrics)
    return app


async def _v2_images(req: InferRequest, service: Service) -> torch.Tensor:
    """The one input of a v2 request as preprocessed images: BYTES are encoded images (decoded here),
    FP32 must already be N x C x S x S as the weights' preprocessing makes them."""
    if len(req.inputs) != 1:
        raise ProtocolError(f"the model takes one input (IMAGE: BYTES, or INPUT: FP32), got {len(req.inputs)}")
    t = req.inputs[0]
    c, s, _ = service.input_shape
    if t.datatype == "BYTES":
        if len(t.shape) not in (1, 2) or (len(t.shape) == 2 and t.shape[1] != 1) or not t.data:
            raise ProtocolError(f"input {t.name!r}: BYTES of encoded images must have shape [N] or [N, 1] "
                                f"with N >= 1, got {t.shape}")
        return await service.decode([Upload(f"{t.name}[{i}]", b) for i, b in enumerate(t.data)])
    if t.datatype != "FP32":
        raise ProtocolError(f"input {t.name!r}: datatype {t.datatype} is not accepted; send BYTES (encoded "
                            f"images) or FP32 (N x {c} x {s} x {s}, preprocessed)")
    arr = np.asarray(t.data)
    if arr.ndim != 4 or tuple(arr.shape[1:]) != (c, s, s) or arr.shape[0] < 1:
        raise ProtocolError(f"input {t.name!r}: FP32 input must have shape [N, {c}, {s}, {s}] (preprocessed as "
                            f"the weights say: {json.dumps(service.meta.preprocess.to_dict())}), got {t.shape}")
    if not np.isfinite(arr).all():
        raise ProtocolError(f"input {t.name!r}: holds NaN or infinite values")
    if len(arr) > service.config.max_queue:
        raise Failure(413, "too_large", f"{len(arr)} images in one request; the server queues at most "
                                        f"{service.config.max_queue} (--max-queue)")
    return torch.from_numpy(np.array(arr, dtype=np.float32))
