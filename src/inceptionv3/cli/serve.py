"""``inceptionv3 serve``: the network behind HTTP (REST, KServe v2, metrics, a page to try it)."""
from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import sys

from ..serve.config import TOKEN_ENV, ServeConfig, token_from_env
from .common import EXIT_OK, CommandError, add_dataclass_args, config_from

NAME = "serve"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(NAME, help="serve the model over HTTP (REST, KServe v2, a page to try it)",
                       description="Serve a model over HTTP with dynamic batching: REST /v1/predict, "
                                   "/v1/features, /v1/explain; KServe v2 /v2/...; /metrics; the page at /. "
                                   f"Binds 127.0.0.1 unless --host says otherwise. The token may come from "
                                   f"${TOKEN_ENV} instead of --token (which other users can see in ps). "
                                   "Stops on SIGTERM/SIGINT after answering the requests in flight.")
    add_dataclass_args(p, ServeConfig)
    return p


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that port 0 gives a real port to print, and a taken port is
    one clear error."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise CommandError(f"--host {host}: cannot resolve it ({e.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise CommandError(f"--host {host} --port {port}: cannot listen there ({e.strerror}); "
                           "choose another --port, or --port 0 for any free one") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _server(config, on_stop):
    """A uvicorn server whose SIGTERM/SIGINT stop it after the requests in flight and return here (uvicorn's
    own handling re-raises the signal after the drain, which kills the process before it can exit 0);
    ``on_stop()`` runs at the first signal."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            def stop(sig: int, frame: object) -> None:
                print(f"inceptionv3 serve: {signal.Signals(sig).name}: answering the requests in flight, "
                      "refusing new ones (again: stop now)", file=sys.stderr, flush=True)
                on_stop()
                self.handle_exit(sig, frame)
            previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return Server(config)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from ..serve.app import create_app

    config = config_from(ServeConfig, args, token=token_from_env(args.token))
    sock = _bind(config.host, config.port)
    try:
        app = create_app(config)   # loads the model before the server answers anything
    except BaseException:
        sock.close()
        raise
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    service = app.state.service

    def draining() -> None:
        service.ready = False   # readiness probes see the drain and send no more work

    server = _server(uvicorn.Config(app, log_config=None, access_log=config.access_log,
                                    timeout_graceful_shutdown=30, lifespan="on"), draining)
    print(f"inceptionv3 serve: {config.model_name} on http://{shown}:{port}  (page: /, API: /docs, "
          f"token: {'required' if config.token else 'none'})", flush=True)
    server.run(sockets=[sock])
    if not server.started:
        raise CommandError("the server did not start (see the log above)")
    print("inceptionv3 serve: stopped", file=sys.stderr)
    return EXIT_OK
