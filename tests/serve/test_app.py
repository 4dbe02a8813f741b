"""The JSON API of ``nanobard serve`` over a real server (uvicorn on a free port) and the tiny
study's three models: what it answers, what it refuses, and that it keeps serving."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.parse
from pathlib import Path

import pytest

from nanobard.interp.probe import probe
from nanobard.model.sampling import SamplingConfig
from nanobard.rundir import RunDir
from nanobard.serve.app import HEADERS, MAX_BODY, STATIC
from nanobard.serve.server import allowed_hosts

PROMPT = "ROMEO:\n"


def request(url: str, method: str, path: str, body: bytes | str | dict | None = None,
            headers: dict | None = None) -> tuple[int, dict, bytes]:  # fmt: skip
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    headers = {**({"Content-Type": "application/json"} if method == "POST" else {}),
               **(headers or {})}  # fmt: skip
    chunked = headers.get("Transfer-Encoding") == "chunked"
    conn.request(method, path, body=data, headers=headers, encode_chunked=chunked)
    r = conn.getresponse()
    out = r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    conn.close()
    return out


def api(url: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    status, _, data = request(url, "POST" if body is not None else "GET", path, body)
    return status, json.loads(data)


def events(raw: bytes) -> list[tuple[str, dict]]:
    out = []
    for chunk in raw.decode().split("\n\n"):
        if chunk.strip():
            kind = next(ln[7:] for ln in chunk.splitlines() if ln.startswith("event: "))
            data = next(ln[6:] for ln in chunk.splitlines() if ln.startswith("data: "))
            out.append((kind, json.loads(data)))
    return out


def test_models_lists_the_studys_three(server, served):
    status, data = api(server, "/api/models")
    assert status == 200
    models = {m["id"]: m for m in data["models"]}
    assert list(models) == ["scratch", "pretrained", "finetuned"]
    assert [m["kind"] for m in models.values()] == ["scratch", "pretrained", "pretrained"]
    for m, s in zip(models.values(), served):
        assert m["parameters"] == sum(p.numel() for p in s.lens.model.parameters()) > 0
        assert m["context"] == s.lens.context and m["layers"] == s.lens.n_layers
        scores = m["head_scores"]  # from the study's interpretability.json
        assert len(scores["induction"]) == m["layers"]
        assert all(len(row) == m["heads"] for row in scores["previous_token"])
    assert models["scratch"]["tokenizer"].startswith("characters")
    assert models["finetuned"]["tokenizer"].startswith("BPE")
    assert data["limits"]["max_chars"] == 4096
    # the page opens on the study's own text (its corpus's characters), not on Shakespeare's
    study = Path(served[0].source).parent / RunDir.ATTENTION_ANALYSIS
    out = json.loads(study.read_text())
    assert data["text"] == out["text"] == served[0].text


@pytest.mark.parametrize("model", ["scratch", "finetuned"])
def test_analyze_answers_what_probe_computes(server, served, model):
    m = next(s for s in served if s.id == model)
    body = {"model": model, "text": PROMPT + "What is", "head": [1, 0], "lens": True,
            "ablate": [[0, 1]], "top": 5, "temperature": 0.7, "top_k": 3}  # fmt: skip
    status, got = api(server, "/api/analyze", body)
    assert status == 200
    want = probe(m.lens, body["text"], head=(1, 0), logit_lens=True, ablate=[[0, 1]], top=5,
                 sampling=SamplingConfig(temperature=0.7, top_k=3)).to_dict()  # fmt: skip
    got.pop("seconds"), want.pop("seconds")
    assert json.loads(json.dumps(want)) == got
    assert got["next"]["kept"] == 3 and got["ablated"]["heads"] == [[0, 1]]


@pytest.mark.parametrize("model", ["scratch", "pretrained"])
def test_generate_streams_the_text_the_generator_writes(server, served, model):
    m = next(s for s in served if s.id == model)
    body = {"model": model, "prompt": PROMPT, "max_new_tokens": 25, "temperature": 0.9,
            "seed": 3}  # fmt: skip
    status, headers, raw = request(server, "POST", "/api/generate", body)
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    evs = events(raw)
    kinds = [k for k, _ in evs]
    assert kinds[-1] == "done" and set(kinds[:-1]) == {"text"}
    text = "".join(d["text"] for k, d in evs if k == "text")
    assert text == m.generator.complete(PROMPT, 25, SamplingConfig(temperature=0.9, seed=3))
    done = evs[-1][1]
    assert done["chars"] == len(text) and 1 <= done["tokens"] <= 25


BAD = [
    ("/api/analyze", {"model": "nope", "text": "a"}, 404, "unknown model 'nope'"),
    ("/api/analyze", {"text": "a"}, 404, "unknown model None"),
    ("/api/analyze", {"model": "scratch", "text": ""}, 400, "text is empty"),
    ("/api/analyze", {"model": "scratch", "text": "a" * 4097}, 400, "the limit is 4,096"),
    ("/api/analyze", {"model": "scratch", "text": 5}, 400, "text must be a string"),
    ("/api/analyze", {"model": "scratch", "text": "snow ☃"}, 400, "'☃'"),
    ("/api/analyze", {"model": "scratch", "text": "ab", "top": 0}, 400, "top must be"),
    ("/api/analyze", {"model": "scratch", "text": "ab", "top": 2.5}, 400, "an integer"),
    ("/api/analyze", {"model": "scratch", "text": "ab", "temperature": -1}, 400, "temperature"),
    ("/api/analyze", {"model": "scratch", "text": "ab", "temperature": 1e9}, 400, "0 .. 5"),
    ("/api/analyze", {"model": "scratch", "text": "ab", "top_p": 0}, 400, "top_p"),
    ("/api/analyze", {"model": "scratch", "text": "ab", "at": 3}, 400, "at must be"),
    ("/api/analyze", {"model": "scratch", "text": "ab", "head": [99, 0]}, 400, "layer in"),
    ("/api/analyze", {"model": "scratch", "text": "ab", "head": "x"}, 400, "[layer, head]"),
    ("/api/analyze", {"model": "scratch", "text": "ab", "ablate": [[0]]}, 400, "pairs"),
    ("/api/analyze", {"model": "scratch", "text": "ab", "lens": "yes"}, 400, "true or false"),
    ("/api/analyze", {"model": "scratch", "text": "ab", "path": "/etc"}, 400, "unknown field"),
    ("/api/generate", {"model": "scratch", "prompt": ""}, 400, "prompt is empty"),
    ("/api/generate", {"model": "scratch", "prompt": "a", "max_new_tokens": 0}, 400, "1 .. 2000"),
    ("/api/generate", {"model": "scratch", "prompt": "a", "seed": -1}, 400, "seed"),
    ("/api/generate", {"model": "scratch", "prompt": "☃"}, 400, "'☃'"),
    ("/api/generate", {"model": "ghost", "prompt": "a"}, 404, "unknown model"),
    ("/api/analyze", {"model": "scratch", "text": "ab", "temperature": 1e-39}, 400, "at least"),
    ("/api/generate", {"model": "pretrained", "prompt": "a\ud800"}, 400, "surrogate"),
    ("/api/analyze", {"model": "finetuned", "text": "\udfff b"}, 400, "surrogate"),
]


@pytest.mark.parametrize(("path", "body", "status", "message"), BAD)
def test_bad_requests_get_a_one_line_json_error(server, path, body, status, message):
    got, data = api(server, path, body)
    assert got == status and message in data["error"], data
    assert "\n" not in data["error"] and "Traceback" not in data["error"]


def test_malformed_oversized_and_wrong_method(server):
    nested = b"[" * 30_000 + b"]" * 30_000  # 60 KB: under the size limit, too deep to parse
    huge = b'{"model": "scratch", "text": "a", "top_k": ' + b"9" * 5000 + b"}"
    for raw in (b"{bad", b"[1, 2]", b"\xff\xfe", b"", nested, huge):
        status, _, data = request(server, "POST", "/api/analyze", raw)
        assert status == 400 and json.loads(data)["error"], raw
    big = b'{"model": "scratch", "text": "' + b"a" * (2 * 1024 * 1024) + b'"}'
    status, _, data = request(server, "POST", "/api/analyze", big)
    assert status == 413 and "over 65,536 bytes" in json.loads(data)["error"]
    # a body that says it is small and then keeps going is cut off at the limit too
    chunks = (b"a" * 8192 for _ in range(2 * MAX_BODY // 8192))
    status, _, data = request(server, "POST", "/api/analyze", chunks,
                              {"Transfer-Encoding": "chunked"})  # fmt: skip
    assert status == 413
    status, _, data = request(server, "GET", "/api/analyze")
    assert status == 405 and "GET is not allowed" in json.loads(data)["error"]
    assert api(server, "/api/models")[0] == 200  # still serving


@pytest.mark.parametrize(
    "path",
    ["/../../etc/passwd", "/static/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd",
     "/app.js/../../../etc/passwd", "//etc/passwd", "/index.html", "/static/app.js",
     "/nanobard/serve/app.py", "/..%2fapp.py", "/style.css%00.py"],
)  # fmt: skip
def test_no_path_from_a_url_reaches_the_disk(server, path):
    u = urllib.parse.urlsplit(server)
    with socket.create_connection((u.hostname, u.port), timeout=10) as s:  # the raw path, as is
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        raw = b""
        while chunk := s.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.split()[1] in (b"404", b"400"), head
    assert b"root:" not in body and b"import" not in body
    assert "error" in json.loads(body)


def test_only_the_packaged_page_is_served_with_its_security_headers(server):
    for path, kind in (("/", "text/html"), ("/app.js", "text/javascript"),
                       ("/style.css", "text/css")):  # fmt: skip
        status, headers, body = request(server, "GET", path)
        assert status == 200 and headers["content-type"].startswith(kind) and body
        for name, value in HEADERS.items():
            assert headers[name.lower()] == value
    csp = HEADERS["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    _, page, _ = request(server, "GET", "/")
    status, headers, _ = request(
        server, "POST", "/api/generate", {"model": "scratch", "prompt": "a", "max_new_tokens": 2}
    )
    assert headers["content-security-policy"] == csp  # streamed responses too
    for path in STATIC:  # nothing from a CDN, no font from elsewhere
        body = request(server, "GET", path)[2]
        assert b"http://" not in body and b"https://" not in body and b"@import" not in body


def test_another_host_name_is_refused(server):
    status, _, data = request(server, "GET", "/api/models", headers={"Host": "evil.example"})
    assert status == 400 and "not served here" in json.loads(data)["error"]
    port = urllib.parse.urlsplit(server).port
    for host in (f"localhost:{port}", f"[::1]:{port}", "127.0.0.1"):
        assert request(server, "GET", "/api/models", headers={"Host": host})[0] == 200, host
    for host in (f"evil.example:{port}", f"127.0.0.1.evil.example:{port}", f"[::2]:{port}"):
        assert request(server, "GET", "/api/models", headers={"Host": host})[0] == 400, host
    u = urllib.parse.urlsplit(server)
    with socket.create_connection((u.hostname, u.port), timeout=10) as s:  # HTTP/1.0, no Host
        s.sendall(b"GET /api/models HTTP/1.0\r\n\r\n")
        assert s.recv(100).split()[1] == b"400"


def test_a_page_elsewhere_cannot_drive_the_api(server):
    """A page on another site can POST to 127.0.0.1 without reading the answer: a body that is
    not JSON, a foreign Origin or a cross-site fetch is refused before any model works."""
    before = _status(server)
    body = {"model": "scratch", "prompt": "a", "max_new_tokens": 5}
    cases = [
        ({"Content-Type": "text/plain"}, 415),
        ({"Content-Type": "application/x-www-form-urlencoded"}, 415),
        ({"Origin": "https://evil.example"}, 403),
        ({"Origin": "http://localhost:1"}, 403),
        ({"Sec-Fetch-Site": "cross-site"}, 403),
    ]
    for headers, status in cases:
        got, _, data = request(server, "POST", "/api/generate", body, headers)
        assert got == status and json.loads(data)["error"], headers
    assert _status(server)["tokens"] == before["tokens"]
    same = {"Origin": server, "Sec-Fetch-Site": "same-origin"}  # the page itself
    assert request(server, "POST", "/api/generate", body, same)[0] == 200


def test_a_bug_is_a_one_line_500_with_the_security_headers(server, served, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("a bug\nwith a second line")

    monkeypatch.setattr(served[0], "analyze", boom)
    status, headers, data = request(server, "POST", "/api/analyze",
                                    {"model": served[0].id, "text": "ab"})  # fmt: skip
    error = json.loads(data)["error"]
    assert status == 500 and "RuntimeError" in error and "Traceback" not in error
    assert headers["content-security-policy"] == HEADERS["Content-Security-Policy"]


def test_an_analysis_nobody_waits_for_is_not_run(server, served):
    m = served[0]
    gate = threading.Event()
    m.worker.submit(gate.wait, 30)  # the model's worker is busy
    before = _status(server)["analyses"]
    u = urllib.parse.urlsplit(server)
    for _ in range(3):  # three keystrokes whose analyses the page aborts
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
        conn.request("POST", "/api/analyze", body=json.dumps({"model": m.id, "text": "ab"}),
                     headers={"Content-Type": "application/json"})  # fmt: skip
        time.sleep(0.2)
        conn.close()
    time.sleep(0.3)
    gate.set()
    status, data = api(server, "/api/analyze", {"model": m.id, "text": "abc"})
    assert status == 200
    assert _status(server)["analyses"] == before + 1  # only the one that was waited for


def test_twenty_concurrent_analyses_are_all_answered(server):
    results: list[int] = []

    def one(i: int) -> None:
        model = ["scratch", "pretrained", "finetuned"][i % 3]
        body = {"model": model, "text": PROMPT + "What is " * (1 + i % 4), "head": [0, 0],
                "ablate": [[1, i % 2]], "lens": True, "thumbnails": True}  # fmt: skip
        results.append(api(server, "/api/analyze", body)[0])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results == [200] * 20


def _open_stream(server: str, body: dict) -> tuple[http.client.HTTPConnection, object]:
    u = urllib.parse.urlsplit(server)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    conn.request("POST", "/api/generate", body=json.dumps(body),
                 headers={"Content-Type": "application/json"})  # fmt: skip
    r = conn.getresponse()
    assert r.status == 200
    return conn, r


def _status(server: str) -> dict:
    return api(server, "/api/status")[1]


def test_analysis_runs_while_a_long_generation_streams_and_a_closed_tab_stops_it(server):
    before = _status(server)["tokens"]
    conn, r = _open_stream(server, {"model": "scratch", "prompt": PROMPT,
                                    "max_new_tokens": 2000, "temperature": 1.0})  # fmt: skip
    assert r.readline().startswith(b"event: text")  # it has started
    t0 = time.perf_counter()
    status, data = api(server, "/api/analyze", {"model": "scratch", "text": PROMPT + "What"})
    assert status == 200 and data["next"]["candidates"]
    assert _status(server)["generations"] == 1  # answered while the generation goes on
    conn.close()  # the tab closes
    deadline = time.perf_counter() + 20
    while _status(server)["generations"] and time.perf_counter() < deadline:
        time.sleep(0.05)
    assert _status(server)["generations"] == 0, "the generation kept running"
    time.sleep(0.3)  # the token being made when the tab closed is the last
    made = _status(server)["tokens"] - before
    time.sleep(0.5)
    assert _status(server)["tokens"] - before == made < 2000, (made, time.perf_counter() - t0)


def test_a_wildcard_address_still_checks_the_host_name():
    hosts = allowed_hosts("0.0.0.0")
    assert "*" not in hosts and {"127.0.0.1", "localhost", "::1"} <= set(hosts)
    assert allowed_hosts("127.0.0.1") == ["127.0.0.1", "::1", "localhost"]
