"""The web app of ``nanobard serve``: a Starlette ASGI app serving one page (packaged with
nanobard: no CDN, works offline) and a JSON API, run by uvicorn.

    GET  /               the explorer (index.html, app.js, style.css: the only files served)
    GET  /api/models     the served models: id, name, kind, parameters, tokenizer, context, ...
    GET  /api/status     generations running now, tokens generated since start-up
    POST /api/analyze    {"model", "text", ...} -> interp.probe.Probe as JSON
    POST /api/generate   {"model", "prompt", ...} -> server-sent events: "text" pieces, then
                         "done" (or "error"); closing the connection stops the generation

Inference runs in worker threads, so the event loop keeps answering while a model works; see
models.py for how one model's passes take turns. Every error is a 4xx (or, for a bug, a 500)
with a one-line JSON body ``{"error": "..."}``; the server keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nanobard.errors import NanobardError
from nanobard.interp.probe import MAX_CHARS, MAX_TOP
from nanobard.model.sampling import SamplingConfig
from nanobard.serve.models import ServedModel, ServeError, default_text

logger = logging.getLogger(__name__)

MAX_BODY = 64 * 1024  # bytes of a request body: 4,096 characters fit with room to spare
MAX_NEW_TOKENS = 2000
MAX_TEMPERATURE = 5.0
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
STATIC = {"/": ("index.html", "text/html"), "/app.js": ("app.js", "text/javascript"),
          "/style.css": ("style.css", "text/css")}  # fmt: skip
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class ApiError(Exception):
    """A request the API refuses: ``status`` and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------------------------
# reading a request


async def _body(request: Request) -> dict[str, Any]:
    """The JSON object of the body, read no further than MAX_BODY bytes."""
    size = request.headers.get("content-length")
    if size is not None and (not size.isdigit() or int(size) > MAX_BODY):
        raise ApiError(413, f"the request body is over {MAX_BODY:,} bytes")
    chunks, total = [], 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > MAX_BODY:
                raise ApiError(413, f"the request body is over {MAX_BODY:,} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ApiError(400, "the client went away before sending the whole body") from None
    try:
        data = json.loads(b"".join(chunks))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the body is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    return data


class Fields:
    """Typed, range-checked fields of a request body; unknown fields are refused by name."""

    def __init__(self, data: dict[str, Any], known: tuple[str, ...]):
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ApiError(400, f"unknown field(s) {unknown}; known: {list(known)}")
        self.data = data

    def text(self, name: str, default: str | None = None) -> str:
        v = self.data.get(name, default)
        if not isinstance(v, str):
            raise ApiError(400, f"{name} must be a string")
        if not v:
            raise ApiError(400, f"{name} is empty; type at least one character")
        if len(v) > MAX_CHARS:
            raise ApiError(400, f"{name} has {len(v):,} characters; the limit is {MAX_CHARS:,}")
        return v

    def number(self, name: str, default: float, low: float, high: float, integer: bool = False):
        v = self.data.get(name, default)
        ok = isinstance(v, int) if integer else isinstance(v, (int, float))
        if v is None and default is None:
            return None
        if not ok or isinstance(v, bool) or not low <= v <= high:
            kind = "an integer" if integer else "a number"
            raise ApiError(400, f"{name} must be {kind} in {low:g} .. {high:g}, got {v!r}")
        return v

    def flag(self, name: str) -> bool:
        v = self.data.get(name, False)
        if not isinstance(v, bool):
            raise ApiError(400, f"{name} must be true or false")
        return v

    def heads(self, name: str, many: bool) -> Any:
        v = self.data.get(name, [] if many else None)
        pairs = v if many else ([] if v is None else [v])
        if not isinstance(pairs, list) or not all(_is_pair(p) for p in pairs):
            shape = "a list of [layer, head] pairs" if many else "[layer, head] or null"
            raise ApiError(400, f"{name} must be {shape}")
        return [list(p) for p in pairs] if many else (tuple(v) if v is not None else None)

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(
            temperature=self.number("temperature", 1.0, 0, MAX_TEMPERATURE),
            top_k=self.number("top_k", 0, 0, 1_000_000, integer=True),
            top_p=self.number("top_p", 1.0, 1e-6, 1.0),
            seed=self.number("seed", 1337, 0, 2**32 - 1, integer=True),
        )


def _is_pair(p: Any) -> bool:
    return isinstance(p, list) and len(p) == 2 and all(type(x) is int for x in p)


SAMPLING = ("temperature", "top_k", "top_p", "seed")
ANALYZE = ("model", "text", "at", "top", "head", "thumbnails", "lens", "ablate", *SAMPLING)
GENERATE = ("model", "prompt", "max_new_tokens", *SAMPLING)


# --------------------------------------------------------------------------------------------
# the app


def create_app(models: list[ServedModel], allowed_hosts: list[str] | None = None) -> Starlette:
    """The explorer over ``models``. ``allowed_hosts``: the Host headers answered (by default
    the local names only, so another site cannot reach the API by rebinding its DNS to us)."""
    if not models:
        raise ServeError("no models to serve")
    text = default_text(models)
    by_id = {m.id: m for m in models}
    pages = {path: (_static(name), kind) for path, (name, kind) in STATIC.items()}
    running = {"generations": 0, "tokens": 0}  # generations now, tokens generated so far
    lock = threading.Lock()

    def model(fields: Fields) -> ServedModel:
        mid = fields.data.get("model")
        if not isinstance(mid, str) or mid not in by_id:
            raise ApiError(404, f"unknown model {mid!r}; served: {sorted(by_id)}")
        return by_id[mid]

    async def page(request: Request) -> Response:
        body, kind = pages[request.url.path]
        return Response(body, media_type=kind)

    async def api_models(request: Request) -> Response:
        limits = {"max_chars": MAX_CHARS, "max_top": MAX_TOP, "max_body_bytes": MAX_BODY,
                  "max_new_tokens": MAX_NEW_TOKENS, "max_temperature": MAX_TEMPERATURE}  # fmt: skip
        return JSONResponse({"models": [m.info() for m in models], "limits": limits, "text": text})

    async def api_status(request: Request) -> Response:
        return JSONResponse(running)

    async def api_analyze(request: Request) -> Response:
        f = Fields(await _body(request), ANALYZE)
        m = model(f)
        text = f.text("text")
        opts = dict(
            at=f.number("at", None, 1, len(text), integer=True),  # type: ignore[arg-type]
            top=f.number("top", 10, 1, MAX_TOP, integer=True),
            head=f.heads("head", many=False),
            thumbnails=f.flag("thumbnails"),
            logit_lens=f.flag("lens"),
            ablate=f.heads("ablate", many=True),
            sampling=f.sampling(),
        )
        result = await run_in_threadpool(m.analyze, text, **opts)
        return JSONResponse(result.to_dict())

    async def api_generate(request: Request) -> Response:
        f = Fields(await _body(request), GENERATE)
        m = model(f)
        prompt = f.text("prompt")
        n = f.number("max_new_tokens", 200, 1, MAX_NEW_TOKENS, integer=True)
        cfg = f.sampling()
        ids = m.generator.encode(prompt)  # a prompt the model cannot read is refused here
        if not ids:
            raise ApiError(400, "the prompt gives no tokens")
        return StreamingResponse(
            _events(m, ids, n, cfg, running, lock),
            media_type="text/event-stream",
            headers={"X-Accel-Buffering": "no"},
        )

    routes = [Route(path, page) for path in pages]
    routes += [
        Route("/api/models", api_models),
        Route("/api/status", api_status),
        Route("/api/analyze", api_analyze, methods=["POST"]),
        Route("/api/generate", api_generate, methods=["POST"]),
    ]
    handlers: dict[Any, Callable] = {
        ApiError: lambda r, e: _error(e.status, str(e)),
        NanobardError: lambda r, e: _error(400, str(e)),
        HTTPException: lambda r, e: _error(e.status_code, _http_message(r, e)),
        Exception: _internal,
    }
    middleware = [Middleware(Guard, allowed_hosts=allowed_hosts or list(LOCAL_HOSTS))]
    return Starlette(routes=routes, exception_handlers=handlers, middleware=middleware)


async def _events(
    m: ServedModel,
    ids: list[int],
    n: int,
    cfg: SamplingConfig,
    running: dict[str, int],
    lock: threading.Lock,
) -> AsyncIterator[str]:
    """Server-sent events of one generation, produced in a thread of its own; when the client
    goes away this generator is closed and the thread stops after its current token."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    stop = threading.Event()
    count = [0]  # tokens generated (one forward pass each)

    def put(kind: str, data: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (kind, data))
        except RuntimeError:  # the loop has closed (the server is shutting down)
            stop.set()

    def on_token() -> None:
        with lock:
            running["tokens"] += 1
        count[0] += 1

    def work() -> None:
        t0, chars = time.perf_counter(), 0
        try:
            for piece in m.stream(ids, n, cfg, on_token):
                if stop.is_set():
                    return
                chars += len(piece)
                put("text", {"text": piece})
            secs = time.perf_counter() - t0
            put("done", {"tokens": count[0], "chars": chars, "seconds": round(secs, 3),
                         "tokens_per_second": round(count[0] / secs, 1)})  # fmt: skip
        except Exception as e:  # a bug, or a failure of the model: said in the stream
            logger.exception("generation failed")
            put("error", {"error": f"generation failed: {type(e).__name__}: {e}"})
        finally:
            with lock:
                running["generations"] -= 1

    with lock:
        running["generations"] += 1
    threading.Thread(target=work, name=f"generate-{m.id}", daemon=True).start()
    try:
        while True:
            kind, data = await queue.get()
            yield f"event: {kind}\ndata: {json.dumps(data)}\n\n"
            if kind != "text":
                return
    finally:
        stop.set()


class Guard:
    """Answers only requests whose Host header names an allowed host (so a web page elsewhere
    cannot reach the API by pointing its own name at 127.0.0.1), and adds HEADERS (the
    Content-Security-Policy first) to every response, streamed ones too."""

    def __init__(self, app: ASGIApp, allowed_hosts: list[str]):
        self.app, self.hosts = app, set(allowed_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).update(HEADERS)
            await send(message)

        host = Headers(scope=scope).get("host", "")
        name = host[1:].split("]")[0] if host.startswith("[") else host.rsplit(":", 1)[0]
        if "*" not in self.hosts and name not in self.hosts:
            await _error(400, f"host {host!r} is not served here")(
                scope, receive, send_with_headers
            )
            return
        await self.app(scope, receive, send_with_headers)


def _static(name: str) -> bytes:
    return (resources.files("nanobard.serve") / "static" / name).read_bytes()


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message.splitlines()[0] if message else "error"}, status)


def _http_message(request: Request, e: HTTPException) -> str:
    if e.status_code == 404:
        return f"not found: {request.url.path}"
    if e.status_code == 405:
        return f"{request.method} is not allowed on {request.url.path}"
    return str(e.detail)


def _internal(request: Request, e: Exception) -> JSONResponse:
    logger.error("%s %s failed", request.method, request.url.path, exc_info=e)
    return _error(500, f"internal error ({type(e).__name__}); the server's log has the details")
