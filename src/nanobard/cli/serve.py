"""``nanobard serve``: a local web page over your models, live for the text you type."""

from __future__ import annotations

import argparse
import webbrowser


def add(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "serve",
        help="explore models live in the browser: next token, surprise, attention, heads off",
        description="Open models once and serve a local page (and its JSON API) where you type "
        "text and watch every model respond side by side: the next-token distribution and how "
        "temperature, top-k and top-p reshape it, each character's surprise in bits, where each "
        "head looks, the logit lens, what switching heads off changes, and streamed generation. "
        "A study's run folder serves three models: from scratch, and the pretrained model before "
        'and after fine-tuning. The API is described in the README ("nanobard serve").',
    )
    s.add_argument(
        "sources",
        nargs="*",
        metavar="RUN_DIR | MODEL",
        help="a run folder of `nanobard run` (its three models), a checkpoint (.pt) or training "
        "run folder, a Hugging Face model folder or smollm2-135m (default: the newest run "
        "under runs/)",
    )
    s.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; anything else is "
        "reachable by others, and says so)",
    )
    s.add_argument("--port", type=int, default=8765, help="port (default 8765; 0: any free one)")
    s.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    s.add_argument(
        "--device", default="auto", help="auto (default: CUDA, then MPS, else CPU), cpu, cuda, mps"
    )
    s.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from nanobard.hardware import pick_device
    from nanobard.serve.app import create_app
    from nanobard.serve.models import ServeError, open_models
    from nanobard.serve.server import allowed_hosts, bind, serve_forever, url_of, warn_if_public

    if not 0 <= args.port <= 65535:
        raise ServeError(f"--port must be in 0 .. 65535, got {args.port}")
    sock = bind(args.host, args.port)  # a busy port fails before minutes of loading
    warn_if_public(args.host)
    models = open_models(args.sources, pick_device(args.device))
    app = create_app(models, allowed_hosts(args.host))
    url = url_of(sock).replace("//0.0.0.0:", "//127.0.0.1:").replace("//[::]:", "//127.0.0.1:")
    print(f"serving {len(models)} model(s) at {url}  (Ctrl-C stops)", flush=True)
    if not args.no_browser:
        webbrowser.open(url)
    try:
        serve_forever(app, sock)
    finally:  # queued analyses are dropped, not run, on the way out
        for m in models:
            m.worker.shutdown(wait=False, cancel_futures=True)
    return 0
