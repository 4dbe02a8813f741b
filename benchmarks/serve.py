"""How quickly does ``nanobard serve`` answer, and how much memory does it hold? A real server
process over a study's run folder (its three models), measured over HTTP from this process.

    .venv/bin/python benchmarks/serve.py runs/quick --repeats 21

Measures (medians over --repeats requests, each a fresh text of 256 characters of the corpus):
- ``analyze``: POST /api/analyze as the page sends it after a keystroke (one head's attention,
  the logit lens, every head's thumbnail, the top prediction's direct logit attribution), and
  the bare request (tokens, surprise, next token);
- ``first text``: from sending POST /api/generate to the first generated characters;
- 20 ``analyze`` requests at once (the three models in turn): all answered, and the wall time;
- the server's resident memory (VmRSS) after all of it, and its peak (VmHWM).
The CPU kind is printed with the figures (nanobard.hardware.cpu_info).
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse

import torch

from nanobard.data.corpus import load_corpus
from nanobard.hardware import cpu_info


def post(url: str, path: str, body: dict, stream: bool = False) -> tuple[float, float, int]:
    """(seconds to the first body bytes of an event, seconds to the end, status)."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
    t0 = time.perf_counter()
    conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    first = None
    if stream:
        while line := r.readline():
            if line.startswith(b"data: ") and first is None:
                first = time.perf_counter() - t0
    else:
        r.read()
    end = time.perf_counter() - t0
    conn.close()
    return first if first is not None else end, end, r.status


def texts(n: int, chars: int) -> list[str]:
    """n slices of the built-in plays (the study's default corpus), 7,919 characters apart."""
    _, plays = load_corpus("shakespeare")
    return [plays[400_000 + i * 7_919 :][:chars] for i in range(n)]


def memory(pid: int) -> dict[str, float]:
    status = open(f"/proc/{pid}/status").read()
    return {
        k: int(re.search(rf"{k}:\s+(\d+) kB", status).group(1)) / 1024 for k in ("VmRSS", "VmHWM")
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("run", help="a study's run folder (nanobard run)")
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--chars", type=int, default=256)
    args = ap.parse_args()

    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "nanobard", "-q", "serve", args.run, "--port", "0", "--no-browser"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = proc.stdout.readline()
        url = re.search(r"http://\S+", line).group()
        load_s = time.perf_counter() - t0
        u = urllib.parse.urlsplit(url)
        conn = http.client.HTTPConnection(u.hostname, u.port)
        conn.request("GET", "/api/models")
        models = json.loads(conn.getresponse().read())["models"]
        cap = torch.backends.cpu.get_cpu_capability()
        print(f"CPU: {cpu_info().kind} ({cpu_info().model}), torch kernels {cap}; server up in "
              f"{load_s:.1f} s "
              f"with {len(models)} models")  # fmt: skip
        rows = []
        for m in models:
            batch = texts(args.repeats, args.chars)
            page = {"head": [m["layers"] - 1, 0], "lens": True, "thumbnails": True, "top": 10,
                    "dla": True}  # fmt: skip
            full = [post(url, "/api/analyze", {"model": m["id"], "text": t, **page}) for t in batch]
            bare = [post(url, "/api/analyze", {"model": m["id"], "text": t}) for t in batch]
            gen = [
                post(url, "/api/generate", {"model": m["id"], "prompt": t, "max_new_tokens": 8,
                                            "seed": i}, stream=True)
                for i, t in enumerate(batch[: max(5, args.repeats // 2)])
            ]  # fmt: skip
            assert all(s == 200 for _, _, s in full + bare + gen), "a request failed"
            rows.append((m["name"], statistics.median(e for _, e, _ in full) * 1000,
                         statistics.median(e for _, e, _ in bare) * 1000,
                         statistics.median(f for f, _, _ in gen) * 1000))  # fmt: skip
        print(f"\n{'model':<34} {'analyze (page)':>15} {'analyze (bare)':>15} {'first text':>11}")
        for name, a, b, g in rows:
            print(f"{name:<34} {a:>12.0f} ms {b:>12.0f} ms {g:>8.0f} ms")

        statuses: list[int] = []
        batch = texts(20, args.chars)

        def one(i: int) -> None:
            m = models[i % len(models)]
            body = {"model": m["id"], "text": batch[i], "head": [0, 0], "lens": True}
            statuses.append(post(url, "/api/analyze", body)[2])

        t1 = time.perf_counter()
        threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t1
        ok = sum(s == 200 for s in statuses)
        print(f"\n20 concurrent analyze requests: {ok}/20 answered (200) in {wall:.2f} s")
        mem = memory(proc.pid)
        print(f"server memory: {mem['VmRSS']:.0f} MB resident now, {mem['VmHWM']:.0f} MB peak")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
