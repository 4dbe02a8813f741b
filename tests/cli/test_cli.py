"""The command line: help without torch, and hostile or broken input ending in one line, a non-zero
exit, no traceback and no existing file damaged. Most cases call ``main([...])`` in this process."""

import hashlib
import json
import os
import subprocess
import sys

import pytest

from nanobard.cli import main

TINY = [
    "--n-layer",
    "1",
    "--n-head",
    "2",
    "--n-embd",
    "16",
    "--block-size",
    "16",
    "--batch-size",
    "4",
    "--max-steps",
    "4",
    "--eval-interval",
    "2",
    "--eval-iters",
    "1",
    "--sample-tokens",
    "0",
    "--no-progress",
]


def nb(*args, cwd=None):
    """The CLI in a real process
    (cwd: a scratch folder, so default run folders stay out of the repo)."""
    return subprocess.run(
        [sys.executable, "-m", "nanobard", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


def test_help_explains_every_command_without_importing_torch(tmp_path):
    code = (
        "import sys; from nanobard.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "for c in ('train', 'finetune', 'run'):\n"
        "    try:\n        main([c, '--help'])\n    except SystemExit:\n        pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO TORCH')"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path
    ).stdout
    commands = ("train", "generate", "finetune", "evaluate", "run", "attention", "serve", "export")
    for c in (*commands, "bench"):
        assert c in out
    assert "run out of memory" in " ".join(out.split())  # help text from the dataclass fields
    assert out.strip().endswith("NO TORCH")


def test_each_command_has_its_own_field_help(capsys):
    for cmd in ("train", "finetune"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
    train_help, finetune_help = capsys.readouterr().out.split("usage: nanobard finetune")
    assert "sized to fit it from the speed measured in the first steps" in " ".join(
        train_help.split()
    )
    # not the training help: fine-tuning's budget is the whole command's
    assert "wall-time budget of the whole command (loading, scoring" in " ".join(
        finetune_help.split()
    )


def test_run_help_names_the_lora_rank_the_study_uses(capsys):
    from nanobard.config import STUDY_PRESETS

    with pytest.raises(SystemExit):
        main(["run", "--help"])
    rank = STUDY_PRESETS["quick"].finetune.lora_r
    assert f"(the CPU study presets use {rank})" in " ".join(capsys.readouterr().out.split())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from tests.conftest import SHARED_TINY

    d = tmp_path_factory.mktemp("trained")
    text = (
        SHARED_TINY.read_text()[:8000]
        if SHARED_TINY.exists()
        else "ROMEO:\nO light, O night.\n\n" * 300
    )
    (d / "c.txt").write_text(text)
    assert main(["-q", "train", "--data", str(d / "c.txt"), "--out", str(d / "run"), *TINY]) == 0
    return d


def digest(folder):
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


def test_train_writes_its_result_json(trained):
    import json

    res = json.loads((trained / "run" / "train_result.json").read_text())
    assert res["steps"] == 4 and [r["step"] for r in res["history"]] == [0, 2, 4]


def test_generate_streams_text(trained, capsys):
    assert (
        main(
            [
                "generate",
                str(trained / "run"),
                "--prompt",
                "RO",
                "--max-new-tokens",
                "20",
                "--greedy",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.startswith("RO") and len(out) >= 20
    for dtype in ("bfloat16", "int8"):
        run = ["generate", str(trained / "run"), "--prompt", "RO", "--max-new-tokens", "20"]
        assert main([*run, "--dtype", dtype]) == 0
        out = capsys.readouterr().out
        assert out.startswith("RO") and len(out) >= 20, dtype


CASES = {
    "empty file": (
        lambda d: (d / "e.txt").write_text(""),
        ["train", "--data", "{d}/e.txt"],
        "empty",
    ),
    "binary file": (
        lambda d: (d / "b.bin").write_bytes(os.urandom(2000) + b"\x00"),
        ["train", "--data", "{d}/b.bin"],
        "binary",
    ),
    "non-UTF-8 text": (
        lambda d: (d / "l.txt").write_bytes("café ".encode("latin-1") * 200),
        ["train", "--data", "{d}/l.txt"],
        "not UTF-8",
    ),
    "10-character corpus": (
        lambda d: (d / "s.txt").write_text("0123456789"),
        ["train", "--data", "{d}/s.txt"],
        "too short",
    ),
    "nonexistent path": (None, ["train", "--data", "{d}/nope.txt"], "not found"),
    "folder for a file": (None, ["train", "--data", "{d}"], "folder"),
    "n_embd not divisible": (None, ["train", "--n-embd", "30", "--n-head", "4"], "divisible"),
    "0 layers": (None, ["train", "--n-layer", "0"], "n_layer must be at least 1"),
    "negative learning rate": (None, ["train", "--lr=-1e-3"], "lr must be positive"),
    "batch size 0": (None, ["train", "--batch-size", "0"], "batch_size"),
    "negative temperature": (
        None,
        ["generate", "{run}", "--temperature=-1"],
        "temperature must be >= 0",
    ),
    "context longer than corpus": (
        lambda d: (d / "m.txt").write_text("x" * 3000),
        ["train", "--data", "{d}/m.txt", "--block-size", "4096"],
        "too short",
    ),
    "prompt with unseen characters": (
        None,
        ["generate", "{run}", "--prompt", "ROMEO€✓"],
        "not in the model's vocabulary",
    ),
    "missing checkpoint": (None, ["generate", "{d}/none.pt"], "not found"),
    "truncated checkpoint": (
        lambda d: (d / "t.pt").write_bytes(
            (d / "run" / "model_scratch_best.pt").read_bytes()[:3000]
        ),
        ["generate", "{d}/t.pt"],
        "not a readable checkpoint",
    ),
    "random-bytes checkpoint": (
        lambda d: (d / "r.pt").write_bytes(os.urandom(5000)),
        ["generate", "{d}/r.pt"],
        "not a readable checkpoint",
    ),
    "checkpoint of another configuration": (
        None,
        ["train", "--data", "{d}/c.txt", "--out", "{run}", "--resume", *TINY, "--n-embd", "32"],
        "different model",
    ),
    "HF folder with a missing file": (
        lambda d: (d / "hf").mkdir(exist_ok=True) or (d / "hf" / "config.json").write_text("{}"),
        ["generate", "{d}/hf"],
        "incomplete",
    ),
    "a fresh train over a finished run": (
        None,
        ["train", "--data", "{d}/c.txt", "--out", "{run}", *TINY],
        "holds a run already (model_scratch_best.pt, ckpt_last.pt, train_result.json); pass "
        "--resume to continue it, --force",
    ),
    "a decay of 0 steps": (None, ["train", "--lr-decay-steps", "0"], "lr_decay_steps must be at"),
    "a negative target loss": (None, ["train", "--target-loss=-1"], "target_loss must be positive"),
    "scoring one character": (
        None,
        ["evaluate", "{run}", "--data", "{d}/c.txt", "--score-chars", "1"],
        "bits per character need at least two",
    ),
    "negative --score-chars": (
        None,
        ["evaluate", "{run}", "--data", "{d}/c.txt", "--score-chars=-10"],
        "--score-chars must be >= 0",
    ),
    "attention on one character": (
        None,
        ["attention", "{run}", "--text", "R"],
        "attention needs at least two",
    ),
    "attention figure in no image format": (
        None,
        ["attention", "{run}", "--png", "{d}/heads.txt"],
        "give a file name ending in one of them",
    ),
    "unknown device": (None, ["train", "--device", "gpu0"], "not a device name"),
    "negative threads": (None, ["train", "--threads=-1"], "threads must be at least 1"),
    "int8 for a Hugging Face model": (
        None,
        ["generate", "gpt2", "--dtype", "int8"],
        "quantizes the from-scratch GPT only",
    ),
    "gpt2 without internet": (
        None,
        ["finetune", "--pretrained", "gpt2", "--data", "{d}/c.txt"],
        "smollm2-135m",
    ),
    "output folder under a file": (
        None,
        ["train", "--data", "{d}/c.txt", "--out", "{d}/c.txt/run", *TINY],
        "Not a directory",
    ),
    "export into the run folder itself": (
        None,
        ["export", "{run}", "--out", "{run}"],
        "holds the checkpoint itself",
    ),
    "serve without a model": (None, ["serve", "--no-browser"], "no models to serve"),
    "patch prompts of different lengths": (
        None,
        [
            "patch",
            "{run}",
            "--clean",
            "ROMEO:",
            "--corrupt",
            "ROMEO",
            "--target",
            "O",
            "--out",
            "{d}/p",
        ],
        "same number of characters: 6 and 5",
    ),  # fmt: skip
    "patch a target of two tokens": (
        None,
        [
            "patch",
            "{run}",
            "--clean",
            "ROMEO:",
            "--corrupt",
            "MEROE:",
            "--target",
            "OO",
            "--out",
            "{d}/p",
        ],
        "must be one token",
    ),  # fmt: skip
    "serve a missing checkpoint": (
        None,
        ["serve", "{d}/none.pt", "--no-browser"],
        "no from-scratch checkpoint",
    ),
    "serve on a port out of range": (
        None,
        ["serve", "{run}", "--port", "70000", "--no-browser"],
        "--port must be in 0 .. 65535",
    ),
    "unwritable output folder": (
        lambda d: (d / "ro").mkdir(exist_ok=True) or os.chmod(d / "ro", 0o500),
        ["train", "--data", "{d}/c.txt", "--out", "{d}/ro/run", *TINY],
        "ermission",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_input_ends_in_one_line(name, trained, capsys, monkeypatch):
    setup, args, expect = CASES[name]
    if name == "unwritable output folder" and os.geteuid() == 0:
        pytest.skip("root can write anywhere")
    if setup:
        setup(trained)
    monkeypatch.chdir(trained)
    before = digest(trained / "run")
    code = main([a.format(d=trained, run=trained / "run") for a in args])
    out, err = capsys.readouterr()
    assert code != 0
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("nanobard:")]
    assert len(lines) == 1 and expect in lines[0], err[-1500:]
    assert out == ""  # nothing printed before the error (e.g. the prompt of a failed generation)
    assert digest(trained / "run") == before
    assert not (trained / "runs").exists()  # a failed command leaves no run folder behind


ARGUMENT_ERRORS = {
    # a count below 0
    ("generate", "m.pt", "--max-new-tokens=-5"): "nanobard generate: error: argument "
    "--max-new-tokens: must be >= 0, got -5; see nanobard generate --help",
    # an unknown flag: its command, the closest real flag, that command's own --help
    ("train", "--max-step", "3"): "nanobard train: error: unrecognized arguments: --max-step 3 "
    "(did you mean --max-steps?); see nanobard train --help",
    ("finetune", "--lora-rank", "4"): "nanobard finetune: error: unrecognized arguments: "
    "--lora-rank 4 (did you mean --lora-r?); see nanobard finetune --help",
    ("trian",): "nanobard: error: argument COMMAND: invalid choice: 'trian' (did you mean "
    "'train'? choose from",
    ("train", "--preset", "qick"): "(did you mean 'quick'? choose from",
    ("train", "--zzz"): "nanobard train: error: unrecognized arguments: --zzz; see nanobard "
    "train --help",  # nothing close: no guess
}


@pytest.mark.parametrize("argv", list(ARGUMENT_ERRORS))
def test_argument_errors_name_the_command_and_suggest_the_closest(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    assert ARGUMENT_ERRORS[argv] in err and "nanobard: nanobard" not in err, err


def test_argument_errors_and_a_real_process_end_in_one_line(trained):
    r = nb("train", "--n-layers", "4", cwd=trained)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "unrecognized arguments" in r.stderr
    # the CLI prints each line once: no log line or transformers bar repeats the summary
    r = nb("export", str(trained / "run"), "--out", str(trained / "exported_once"), cwd=trained)
    both = r.stdout + r.stderr
    assert r.returncode == 0 and both.count("exported ") == 1, both
    assert "Writing model shards" not in both, both
    r = nb("generate", str(trained / "none.pt"), cwd=trained)
    assert (
        r.returncode == 2
        and "Traceback" not in r.stderr
        and r.stderr.startswith("nanobard: error:")
    )


def test_patch_writes_the_documented_json_and_a_figure(trained, capsys):
    import json

    out = trained / "patched"
    args = ["patch", str(trained / "run"), "--clean", "ROMEO: O light", "--corrupt",
            "MEROE: O light", "--target", "\n", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    r = json.loads((out / "patching.json").read_text())
    keys = {"tokens_clean", "tokens_corrupt", "logit_clean", "logit_corrupt", "resid_pre",
            "attn_out", "mlp_out", "heads", "dla"}  # fmt: skip
    assert keys <= set(r) and {"heads", "mlp", "embed"} <= set(r["dla"])
    n_layer, n_tokens = 1, len("ROMEO: O light")  # TINY: one layer, two heads
    assert len(r["resid_pre"]) == n_layer and len(r["resid_pre"][0]) == n_tokens
    assert len(r["heads"]) == n_layer and len(r["heads"][0]) == 2
    assert (out / "patching.png").stat().st_size > 10_000
    assert "the head that restores most" in capsys.readouterr().out


def test_serve_runs_until_stopped_and_a_busy_port_is_one_line(trained):
    import json
    import re
    import signal
    import socket
    import urllib.request

    proc = subprocess.Popen(
        [sys.executable, "-m", "nanobard", "serve", str(trained / "run"), "--port", "0",
         "--host", "0.0.0.0", "--no-browser"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=trained,
    )  # fmt: skip
    try:
        line = proc.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+", line)
        assert url and "serving 1 model(s)" in line, line
        with urllib.request.urlopen(url.group() + "/api/models", timeout=30) as r:
            models = json.loads(r.read())["models"]
        assert [m["id"] for m in models] == ["scratch"]
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert "listening on 0.0.0.0: anyone who can reach this machine" in err
    assert "loading model 1/1: from scratch" in err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        r = nb("serve", str(trained / "run"), "--port", str(busy.getsockname()[1]),
               "--no-browser", cwd=trained)  # fmt: skip
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "cannot listen on 127.0.0.1" in r.stderr and "--port 0" in r.stderr


def test_a_bug_keeps_its_traceback(monkeypatch, trained):
    """Only user errors become one line:
    a ValueError from inside nanobard is a bug and propagates."""
    import nanobard.cli.generate as g

    monkeypatch.setattr(
        g, "print_stream", lambda *a, **k: (_ for _ in ()).throw(ValueError("a bug"))
    )
    with pytest.raises(ValueError, match="a bug"):
        main(["generate", str(trained / "run"), "--prompt", "RO"])


def test_no_progress_silences_hugging_face_bars_too(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)  # restored after the test
    assert main(["train", "--data", str(tmp_path / "missing.txt"), *TINY]) != 0
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"


def test_export_card_quotes_how_the_model_was_made(trained, tmp_path):
    out = tmp_path / "hf"
    assert main(["export", str(trained / "run"), "--out", str(out)]) == 0
    card = (out / "README.md").read_text()
    assert "| trained with | `nanobard -q train --data " in card, card
    assert f"| exported with | `nanobard export {trained / 'run'} --out {out}` |" in card
    assert "| training | 4 steps, " in card and "bits per character) at step" in card
    assert (out / "generation_config.json").exists()


class FakeHub:
    """A Hugging Face Hub on 127.0.0.1 that records each request: it creates the repo, then
    refuses the upload (the test goes as far as the request, never to the network)."""

    def __init__(self):
        import http.server
        import threading

        self.requests = []
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                hub.requests.append((self.command, self.path, dict(self.headers), body))
                if self.path == "/api/repos/create":
                    status, reply = 200, {"url": f"{hub.url}/someone/tiny-char-gpt"}
                else:
                    status, reply = 403, {"error": "fake hub: uploads refused"}
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = _answer

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def test_push_to_hub_needs_a_login_then_sends_the_request(trained, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_TELEMETRY="1")
    args = ["-m", "nanobard", "export", str(trained / "run"), "--push-to-hub",
            "someone/tiny-char-gpt"]  # fmt: skip

    def push(out, **extra):
        return subprocess.run([sys.executable, *args, "--out", str(out)], capture_output=True,
                              text=True, timeout=120, env={**env, **extra})  # fmt: skip

    r = push(tmp_path / "no_login")  # nobody logged in: one line, nothing exported
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        "nanobard: error: --push-to-hub someone/tiny-char-gpt needs a Hugging Face login: run "
        "`hf auth login` or set HF_TOKEN"
    ]
    assert not (tmp_path / "no_login").exists()
    hub = FakeHub()
    try:
        r = push(tmp_path / "pushed", HF_ENDPOINT=hub.url, HF_TOKEN="hf_test_token")
    finally:
        hub.close()
    creates = [q for q in hub.requests if q[1] == "/api/repos/create"]
    assert len(creates) == 1 and creates[0][0] == "POST", r.stderr
    method, path, headers, body = creates[0]
    assert {k.lower(): v for k, v in headers.items()}["authorization"] == "Bearer hf_test_token"
    sent = json.loads(body)
    assert sent["name"] == "tiny-char-gpt" and sent["organization"] == "someone", sent
    assert sent.get("visibility", "public") == "public" and sent.get("type") == "model", sent
    # then the upload, which this hub refuses: one line, the folder kept
    assert hub.requests.index(creates[0]) < len(hub.requests) - 1
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert lines[0].startswith("nanobard: error: pushing ") and "failed" in lines[0], lines
    assert (tmp_path / "pushed" / "model.safetensors").exists()
