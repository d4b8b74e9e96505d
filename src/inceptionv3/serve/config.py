"""``ServeConfig``: the settings of ``inceptionv3 serve``, one field per flag. Torch- and fastapi-free, so
``--help`` stays instant."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..engine.options import BACKENDS, PRECISIONS

TOKEN_ENV = "INCEPTIONV3_TOKEN"
DEFAULT_HOST = "127.0.0.1"     # only this machine, unless told otherwise


def _meta(help_text: str, **extra) -> dict:
    return {"help": help_text, **extra}


@dataclass(frozen=True)
class ServeConfig:
    """How the server runs: the model and engine, the batcher's limits, the request limits and the token."""
    weights: str = field(default="imagenet", metadata=_meta("registry name or weights file"))
    host: str = field(default=DEFAULT_HOST, metadata=_meta("address to bind; 0.0.0.0 exposes the server "
                                                            "to the network"))
    port: int = field(default=8000, metadata=_meta("TCP port (0: any free port)"))
    device: str = field(default="auto", metadata=_meta("auto, cpu, cuda or cuda:N"))
    precision: str = field(default="fp32", metadata=_meta("arithmetic of the engine (auto: bf16 where native)",
                                                          choices=("auto", *PRECISIONS)))
    backend: str = field(default="auto", metadata=_meta("engine runtime (auto: torch; the others export the "
                                                        "graph once to the engine cache)",
                                                        choices=("auto", *BACKENDS)))
    threads: int | None = field(default=None, metadata=_meta("torch compute threads (default: all cores)"))
    max_batch: int = field(default=32, metadata=_meta("images per engine call at most"))
    max_delay_ms: float = field(default=5.0, metadata=_meta("how long a batch waits for company, in ms"))
    max_queue: int = field(default=256, metadata=_meta("images waiting at most; beyond it: 503 + Retry-After"))
    max_upload_mb: float = field(default=20.0, metadata=_meta("largest request body, in MB (413 beyond)"))
    token: str | None = field(default=None, metadata=_meta(f"bearer token the API requires (default: "
                                                            f"${TOKEN_ENV} if set, else none)"))
    top_k: int = field(default=5, metadata=_meta("classes per image in /v1/predict (?top_k= overrides)"))
    name: str | None = field(default=None, metadata=_meta("model name in the v2 protocol (default: "
                                                           "the weights name or file stem)"))
    access_log: bool = field(default=False, metadata=_meta("log every request"))

    def __post_init__(self) -> None:
        for flag, value, low in (("--max-batch", self.max_batch, 1), ("--max-queue", self.max_queue, 1),
                                 ("--top-k", self.top_k, 1), ("--port", self.port, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{flag} must be an integer >= {low}, got {value!r}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port must be at most 65535, got {self.port}")
        if not self.max_delay_ms >= 0:
            raise ValueError(f"--max-delay-ms must be >= 0, got {self.max_delay_ms!r}")
        if not self.max_upload_mb > 0:
            raise ValueError(f"--max-upload-mb must be > 0, got {self.max_upload_mb!r}")
        if self.token is not None and not self.token:
            raise ValueError("--token is empty; give a token, or leave the flag out to serve without one")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def model_name(self) -> str:
        """The name the v2 protocol routes by: --name, else the weights name or the file's stem."""
        if self.name:
            return self.name
        stem = Path(self.weights).stem if os.sep in self.weights or "." in self.weights else self.weights
        return re.sub(r"[^A-Za-z0-9_.-]", "_", stem) or "inceptionv3"


def token_from_env(token: str | None) -> str | None:
    """The token flag, else ``$INCEPTIONV3_TOKEN`` (a token on the command line shows in ``ps``)."""
    return token if token is not None else (os.environ.get(TOKEN_ENV) or None)
