"""Running the app: uvicorn on a socket bound here (so a busy port is one clear line, and port 0
picks a free one), in the foreground (``nanobard serve``) or in a thread (tests, benchmarks)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from starlette.types import ASGIApp

from nanobard.serve.app import LOCAL_HOSTS
from nanobard.serve.models import ServeError

logger = logging.getLogger(__name__)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: any free port)."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise ServeError(f"--host {host}: not an address this machine has ({e})") from None
    sock = socket.socket(info[0], socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(info[4])
    except OSError as e:
        sock.close()
        raise ServeError(
            f"cannot listen on {host}:{port} ({e.strerror}); pass another --port "
            "(--port 0 picks a free one)"
        ) from None
    sock.listen(128)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}"


def allowed_hosts(host: str) -> list[str]:
    """Host names answered: the local names, and the address given with --host; for a wildcard
    address (0.0.0.0, ::) also this machine's name and addresses (never "any name": that would
    let a page elsewhere rebind its own name to this machine)."""
    names = {*LOCAL_HOSTS, host}
    if host in ("0.0.0.0", "::", ""):
        me = socket.gethostname()
        names |= {me, socket.getfqdn()}
        try:
            names |= {str(a[4][0]) for a in socket.getaddrinfo(me, None)}
        except socket.gaierror:
            pass
        names.add(_outward_address())
    return sorted(n for n in names if n)


def _outward_address() -> str:
    """The address this machine uses on its network (a UDP socket's own end; nothing is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            return str(s.getsockname()[0])
        except OSError:
            return ""


def warn_if_public(host: str) -> None:
    if host not in LOCAL_HOSTS:
        logger.warning(
            "listening on %s: anyone who can reach this machine can use these models "
            "(requests must name it by %s)",
            host,
            ", ".join(allowed_hosts(host)),
        )


def _server(app: ASGIApp):
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    return uvicorn.Server(config)


def serve_forever(app: ASGIApp, sock: socket.socket) -> None:
    """Serve until Ctrl-C."""
    _server(app).run(sockets=[sock])


@contextmanager
def running(app: ASGIApp, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """The app served in a background thread; yields its URL; stops it on exit."""
    sock = bind(host, port)
    server = _server(app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    if not server.started:
        raise ServeError("the server did not start")
    try:
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
