"""The web app of ``nanobard serve``: a Starlette ASGI app serving one page (packaged with
nanobard: no CDN, works offline) and a JSON API, run by uvicorn.

    GET  /               the explorer (index.html, app.js, style.css: the only files served)
    GET  /api/models     the served models: id, name, kind, parameters, tokenizer, context, ...
    GET  /api/status     generations running now, tokens generated since start-up
    POST /api/analyze    {"model", "text", ...} -> interp.probe.Probe as JSON
    POST /api/generate   {"model", "prompt", ...} -> server-sent events: "text" pieces, then
                         "done" (or "error"); closing the connection stops the generation

Inference runs on each model's worker thread, so the event loop keeps answering while a model
works; see models.py for how one model's passes take turns. Every error is a 4xx (or, for a bug,
a 500) with a one-line JSON body ``{"error": "..."}``; the server keeps serving.
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
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
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
    except (ValueError, RecursionError) as e:  # a decoding error, a 5,000-digit number, [[[[...
        first = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise ApiError(400, f"the body is not valid JSON ({first})") from None
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
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:  # JSON can carry a lone surrogate ("\ud800"); no text has one
            raise ApiError(400, f"{name} holds an unpaired UTF-16 surrogate") from None
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
        return SamplingConfig(  # which refuses a temperature too small to sample with
            temperature=self.number("temperature", 1.0, 0, MAX_TEMPERATURE),
            top_k=self.number("top_k", 0, 0, 1_000_000, integer=True),
            top_p=self.number("top_p", 1.0, 1e-6, 1.0),
            seed=self.number("seed", 1337, 0, 2**32 - 1, integer=True),
        )


def _is_pair(p: Any) -> bool:
    return isinstance(p, list) and len(p) == 2 and all(type(x) is int for x in p)


SAMPLING = ("temperature", "top_k", "top_p", "seed")
ANALYZE = ("model", "text", "at", "top", "head", "thumbnails", "lens", "ablate", "dla",
           *SAMPLING)  # fmt: skip
GENERATE = ("model", "prompt", "max_new_tokens", *SAMPLING)


# --------------------------------------------------------------------------------------------
# the app


class Counters:
    """What ``GET /api/status`` reports; updated from the model workers, hence the lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values = {"generations": 0, "tokens": 0, "analyses": 0}

    def add(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.values[name] += n

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return dict(self.values)


def create_app(models: list[ServedModel], allowed_hosts: list[str] | None = None) -> ASGIApp:
    """The explorer over ``models``, inside ``Guard``. ``allowed_hosts``: the Host names
    answered (by default the local names only, so another site cannot reach the API by rebinding
    its DNS to us)."""
    if not models:
        raise ServeError("no models to serve")
    text = default_text(models)
    by_id = {m.id: m for m in models}
    pages = {path: (_static(name), kind) for path, (name, kind) in STATIC.items()}
    counters = Counters()  # generations now; tokens generated and analyses run since start-up

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
        return JSONResponse(counters.snapshot())

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
            dla=f.flag("dla"),
            sampling=f.sampling(),
        )

        def job() -> Any:
            counters.add("analyses")
            return m.analyze(text, **opts)

        loop = asyncio.get_running_loop()
        result = await _unless_gone(request, loop.run_in_executor(m.worker, job))
        return JSONResponse(result.to_dict())

    async def api_generate(request: Request) -> Response:
        f = Fields(await _body(request), GENERATE)
        m = model(f)
        prompt = f.text("prompt")
        n = f.number("max_new_tokens", 200, 1, MAX_NEW_TOKENS, integer=True)
        cfg = f.sampling()
        # on the worker (its tokenizer is the one analyses use); an unreadable prompt is refused
        loop = asyncio.get_running_loop()
        ids = await loop.run_in_executor(m.worker, m.generator.encode, prompt)
        if not ids:
            raise ApiError(400, "the prompt gives no tokens")
        return StreamingResponse(
            _events(m, ids, n, cfg, counters),
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
    app = Starlette(routes=routes, exception_handlers=handlers)
    return Guard(app, allowed_hosts or list(LOCAL_HOSTS))  # outermost: a 500 has the headers too


async def _unless_gone(request: Request, job: asyncio.Future) -> Any:
    """The result of ``job``; if the client hangs up first (the page aborts an analysis that a
    newer keystroke made stale), the job is cancelled while it still waits for the worker."""

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watch = asyncio.ensure_future(gone())
    try:
        await asyncio.wait({job, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if not job.done():
        job.cancel()
        raise ApiError(499, "the client closed the connection")
    return job.result()


async def _events(
    m: ServedModel,
    ids: list[int],
    n: int,
    cfg: SamplingConfig,
    counters: Counters,
) -> AsyncIterator[str]:
    """Server-sent events of one generation, one token per job on the model's worker. When the
    client goes away, Starlette cancels this generator: no further token is asked for, and the
    token being made when it left is the last."""
    loop = asyncio.get_running_loop()
    count = [0]  # tokens generated (one forward pass each)

    def on_token() -> None:  # on the worker thread
        count[0] += 1
        counters.add("tokens")

    pieces = m.stream(ids, n, cfg, on_token)
    counters.add("generations")
    t0, chars = time.perf_counter(), 0
    try:
        while (piece := await loop.run_in_executor(m.worker, next, pieces, None)) is not None:
            chars += len(piece)
            yield _event("text", {"text": piece})
        secs = time.perf_counter() - t0
        yield _event("done", {"tokens": count[0], "chars": chars, "seconds": round(secs, 3),
                              "tokens_per_second": round(count[0] / secs, 1)})  # fmt: skip
    except Exception as e:  # a bug, or a failure of the model: said in the stream
        logger.exception("generation failed")
        yield _event("error", {"error": f"generation failed: {type(e).__name__}: {e}"})
    finally:
        counters.add("generations", -1)
        close = getattr(pieces, "close", None)  # a generator: after the step in flight, on
        if close is not None:  # the thread that runs it
            try:
                m.worker.submit(close)
            except RuntimeError:  # the worker has shut down with the server
                pass


def _event(kind: str, data: dict[str, Any]) -> str:
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n"


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

        refused = self.refusal(scope)
        if refused is not None:
            await refused(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)

    def refusal(self, scope: Scope) -> JSONResponse | None:
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        if _host_name(host) not in self.hosts:
            return _error(400, f"host {host!r} is not served here")
        if scope["method"] == "POST":
            # A page elsewhere may POST to 127.0.0.1 without reading the answer; a JSON body
            # needs a CORS preflight, which this server never grants, and a browser names the
            # page's origin: both are checked.
            kind = headers.get("content-type", "").split(";")[0].strip().lower()
            if kind != "application/json":
                return _error(415, "send the body as Content-Type: application/json")
            origin = headers.get("origin")
            if origin is not None and urlsplit(origin).netloc != host:
                return _error(403, f"requests from {origin} are not served")
            if headers.get("sec-fetch-site") == "cross-site":
                return _error(403, "cross-site requests are not served")
        return None


def _host_name(host: str) -> str:
    """The name in a Host header: "[::1]:8765" -> "::1", "localhost:8765" -> "localhost"."""
    if host.startswith("["):
        return host[1:].split("]")[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


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
