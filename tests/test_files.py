"""files: every file of a run is written whole or not at all. A disk that fills up mid-write
(injected here as the ENOSPC a full disk gives a plain write, and for real on a small tmpfs when
this machine can mount one) leaves the previous file, no temporary file, and one line saying which
path failed, why and what was kept."""

from __future__ import annotations

import errno
import shutil
import subprocess
import sys

import pytest

from nanobard import files
from nanobard.files import WriteFailed
from nanobard.records import TornRecord, read_json
from nanobard.rundir import RunDir
from tests.fixtures import disk_full


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name or ".old" in p.name)


def test_a_full_disk_keeps_the_previous_file_and_says_so_in_one_line(tmp_path, monkeypatch):
    path = tmp_path / "result.json"
    files.write_text(path, '{"step": 1}')
    disk_full(monkeypatch, after=3)  # the disk takes 3 bytes, then refuses
    with pytest.raises(WriteFailed) as e:
        files.write_text(path, '{"step": 2, "more": "x"}')
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("no space left on the device")
    assert f"writing {path}; the previous result.json is kept" in msg
    assert path.read_text() == '{"step": 1}' and _leftovers(tmp_path) == []
    with pytest.raises(WriteFailed, match="nothing was written there"):
        files.write_text(tmp_path / "new.json", "{}")
    assert not (tmp_path / "new.json").exists()


def test_an_appended_line_is_whole_or_absent(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    files.append_line(path, '{"step": 0, "tokens": 0, "val_loss": 4.0}')
    before = path.read_bytes()
    disk_full(monkeypatch, after=5)
    with pytest.raises(WriteFailed, match="metrics.jsonl; the previous metrics.jsonl is kept"):
        files.append_line(path, '{"step": 10, "tokens": 80, "val_loss": 3.0}')
    assert path.read_bytes() == before  # cut back: no half line for a reader to meet
    assert [r.step for r in RunDir(tmp_path).read_metrics()] == [0]


def test_a_folder_is_replaced_whole_or_kept(tmp_path, monkeypatch):
    folder = tmp_path / "model_hf_finetuned"
    with files.atomic_folder(folder) as tmp:
        (tmp / "a.bin").write_bytes(b"old")
    with pytest.raises(WriteFailed, match="the previous model_hf_finetuned is kept"):
        with files.atomic_folder(folder) as tmp:
            (tmp / "a.bin").write_bytes(b"new")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert (folder / "a.bin").read_bytes() == b"old" and _leftovers(tmp_path) == []
    with files.atomic_folder(folder) as tmp:
        (tmp / "b.bin").write_bytes(b"new")
    assert sorted(p.name for p in folder.iterdir()) == ["b.bin"] and _leftovers(tmp_path) == []


def test_what_counts_as_the_disk_refusing(tmp_path, monkeypatch):
    assert files.describe(OSError(errno.EROFS, "Read-only file system"), tmp_path) == (
        "Read-only file system"
    )
    assert files.describe(ValueError("a bug"), tmp_path) is None
    # safetensors reports the OSError in its own words
    rust = RuntimeError('IoError(Os { code: 28, kind: StorageFull, message: "No space left" })')
    assert files.describe(rust, tmp_path).startswith("no space left on the device")
    # torch's zip writer says "unexpected pos": a full disk only when the disk is nearly full
    pos = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 5370432")
    assert files.describe(pos, tmp_path) is None
    monkeypatch.setattr(files, "free_bytes", lambda where: 0)
    assert files.describe(pos, tmp_path) == "no space left on the device (0 B free)"
    with pytest.raises(ValueError, match="a bug"):  # not the disk: the exception stays
        with files.atomic_path(tmp_path / "x.png"):
            raise ValueError("a bug")
    assert _leftovers(tmp_path) == []


def test_a_torn_json_record_is_one_line(tmp_path):
    path = tmp_path / "stages.json"
    path.write_text('{"corpus": {"name": "shakespeare", "train_ch')
    with pytest.raises(TornRecord) as e:
        read_json(path)
    assert "\n" not in str(e.value) and "stages.json is not complete JSON" in str(e.value)
    assert "delete it and run the command that wrote it again" in str(e.value)
    # a metrics file whose last line was cut by a kill: the line is left out with a warning
    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "tokens": 0, "val_loss": 4.0}\n{"st')
    assert [r.step for r in RunDir(tmp_path).read_metrics()] == [0]
    (tmp_path / "metrics.jsonl").write_text('{"st\n{"step": 0, "tokens": 0, "val_loss": 4.0}\n')
    with pytest.raises(TornRecord, match="line 1 of 2 is not a metrics row"):
        RunDir(tmp_path).read_metrics()


SMALL_DISK = """
set -e
mount -t tmpfs -o size={size} tmpfs {mnt}
set +e
{python} -m nanobard train --data {corpus} --out {mnt}/run --n-layer 2 --n-head 2 --n-embd 48 \
  --block-size 32 --batch-size 4 --max-steps 20 --eval-interval 10 --eval-iters 1 \
  --sample-tokens 0 --no-progress
echo "rc=$?"
ls -a {mnt}/run
{python} -m nanobard generate {mnt}/run --max-new-tokens 20 --prompt "ROMEO:" --seed 1
echo "generate rc=$?"
"""


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or shutil.which("unshare") is None, reason="Linux only"
)
def test_training_onto_a_disk_that_fills_up(tmp_path, tiny_file):
    """For real: a tmpfs that holds the best checkpoint but not the resumable one (its optimizer
    state triples it). The run ends in one line, exit 1, and the kept checkpoint generates."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = SMALL_DISK.format(size="400k", mnt=mnt, python=sys.executable, corpus=tiny_file)
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs tmpfs {mnt}"],
                           capture_output=True)  # fmt: skip
    if probe.returncode:
        pytest.skip("cannot mount a tmpfs in a user namespace here")
    out = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True,
                         timeout=240)  # fmt: skip
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("nanobard: error")]
    assert "rc=1" in out.stdout, out.stderr[-2000:]
    assert "Traceback" not in out.stderr and len(errors) == 1, out.stderr[-2000:]
    assert errors[0].startswith("nanobard: error: no space left on the device")
    assert errors[0].endswith(
        "ckpt_last.pt; nothing was written there; kept: model_scratch_best.pt (step 0); free "
        "some space, then run it again"
    )
    assert "model_scratch_best.pt" in out.stdout and ".tmp" not in out.stdout
    assert "generate rc=0" in out.stdout and "ROMEO:" in out.stdout


def test_a_line_left_unfinished_by_an_older_writer_is_cut_before_the_next(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0, "tokens": 0, "val_loss": 4.0}\n{"step": 10, "tok')  # killed
    files.append_line(path, '{"step": 10, "tokens": 80, "val_loss": 3.0}')
    assert [r.step for r in RunDir(tmp_path).read_metrics()] == [0, 10]
    path.write_text('{"st')  # nothing but a torn line
    files.append_line(path, '{"step": 0, "tokens": 0, "val_loss": 4.0}')
    assert path.read_text() == '{"step": 0, "tokens": 0, "val_loss": 4.0}\n'


def test_the_next_writer_removes_what_a_killed_one_left(tmp_path):
    run = RunDir(tmp_path)
    (tmp_path / ".ckpt_last.1a2b3c4d.tmp.pt").write_bytes(b"half")
    (tmp_path / ".model_hf_finetuned.0f0f0f0f.tmp").mkdir()
    (tmp_path / ".model_hf_finetuned.0f0f0f0f.tmp" / "model.safetensors").write_bytes(b"x")
    (tmp_path / ".hidden.txt").write_text("a user's")
    (tmp_path / "ckpt_last.pt").write_bytes(b"whole")
    with run.writer_lock("test"):
        left = sorted(p.name for p in tmp_path.iterdir())
    assert left == [".hidden.txt", ".nanobard.lock", "ckpt_last.pt"]
