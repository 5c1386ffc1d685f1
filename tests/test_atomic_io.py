"""posegen_ns.atomic_io: every file is written through a temporary sibling and an atomic rename, a process killed
mid-write leaves the old file (and a temporary that is swept), and damaged caches are named and rebuilt."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from posegen_ns import atomic_io
from posegen_ns.atomic_io import (
    TEMP_MARK, atomic_open, check_npz, check_torch_file, check_writable, read_cache, remove_stale_temporaries,
    save_npz, torch_save, write_bytes, write_json, write_text,
)
from posegen_ns.errors import PoseGenInputError


def _temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if TEMP_MARK in p.name]


def test_writers_round_trip_and_leave_no_temporary(tmp_path):
    write_bytes(tmp_path / "a.bin", b"abc")
    write_text(tmp_path / "sub" / "b.txt", "héllo")  # the folder is created
    write_json(tmp_path / "c.json", {"x": [1, 2]}, indent=None)
    torch_save({"w": torch.arange(3)}, tmp_path / "d.pt")
    save_npz(tmp_path / "e.cache", {"v": np.arange(4)}, compressed=True)  # no ".npz" appended
    assert (tmp_path / "a.bin").read_bytes() == b"abc"
    assert (tmp_path / "sub" / "b.txt").read_text(encoding="utf-8") == "héllo"
    assert json.loads((tmp_path / "c.json").read_text()) == {"x": [1, 2]}
    assert torch.load(tmp_path / "d.pt", weights_only=True)["w"].tolist() == [0, 1, 2]
    with np.load(tmp_path / "e.cache") as z:
        assert z["v"].tolist() == [0, 1, 2, 3]
    assert check_torch_file(tmp_path / "d.pt") and check_npz(tmp_path / "e.cache", full=True)
    assert not _temporaries(tmp_path) and not _temporaries(tmp_path / "sub")


def test_error_while_writing_keeps_the_old_file(tmp_path):
    target = tmp_path / "report.json"
    write_json(target, {"old": True})
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_open(target) as f:
            f.write(b'{"new": tr')
            raise RuntimeError("boom")
    with pytest.raises(TypeError):  # not serialisable: the file is never opened
        write_json(target, {"bad": object()})
    with pytest.raises(ValueError, match="rejected"):  # a check of the complete temporary file refuses it
        save_npz(target, {"v": np.zeros(2)}, check=lambda p: (_ for _ in ()).throw(ValueError("rejected")))
    assert json.loads(target.read_text()) == {"old": True}
    assert not _temporaries(tmp_path)


def test_process_killed_mid_write_leaves_the_old_file(tmp_path):
    """A real kill -9 while a cache is being written (as when the first ns-train is killed while it saves the
    default critic): the target keeps its old content (never a 0-byte or truncated file); the temporary the
    process left behind is swept by remove_stale_temporaries."""
    target = tmp_path / "critic.pt"
    torch_save({"model": {"w": torch.ones(2)}}, target)
    script = (
        "import sys, time\n"
        "from posegen_ns.atomic_io import atomic_open\n"
        f"with atomic_open({str(target)!r}) as f:\n"
        "    f.write(b'x' * 100000); f.flush()\n"
        "    print('writing', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert torch.load(target, weights_only=True)["model"]["w"].tolist() == [1.0, 1.0]
    assert len(_temporaries(tmp_path)) == 1
    assert remove_stale_temporaries(tmp_path) == 1 and not _temporaries(tmp_path)


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_damaged_cache_is_named_removed_and_rebuilt(tmp_path, damage):
    path = tmp_path / "cache.npz"
    save_npz(path, {"v": np.arange(1000)})
    data = path.read_bytes()
    path.write_bytes(b"" if damage == "empty" else data[: len(data) // 2])
    said: list[str] = []
    assert read_cache(path, lambda p: check_npz(p, full=True), "test cache", say=said.append) is None
    assert len(said) == 1 and str(path) in said[0] and "damaged" in said[0] and "\n" not in said[0]
    assert not path.exists()  # the caller rebuilds it
    assert read_cache(tmp_path / "missing.npz", check_npz) is None
    save_npz(path, {"v": np.arange(3)})
    assert read_cache(path, check_npz, say=said.append) is True and len(said) == 1


def test_check_torch_file_rejects_empty_and_truncated_checkpoints(tmp_path):
    path = tmp_path / "c.pt"
    torch_save({"model": {"w": torch.randn(300, 300)}}, path)
    data = path.read_bytes()
    for cut, match in ((0, "empty file"), (len(data) // 2, "incomplete torch file")):
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=match):
            check_torch_file(path)


def test_check_writable(tmp_path, monkeypatch):
    assert check_writable(tmp_path / "new" / "r.json", "--json") == tmp_path / "new" / "r.json"
    assert (tmp_path / "new").is_dir() and not list((tmp_path / "new").iterdir())  # the probe is removed
    with pytest.raises(PoseGenInputError, match="--json .* is a folder"):
        check_writable(tmp_path, "--json")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(PoseGenInputError, match="--json .*afile/r.json cannot be written"):
        check_writable(tmp_path / "afile" / "r.json", "--json")

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path))

    monkeypatch.setattr(atomic_io, "write_bytes", read_only)
    with pytest.raises(PoseGenInputError, match="Read-only file system.*make .* writable"):
        check_writable(tmp_path / "r.json", "--output")


def test_remove_stale_temporaries_spares_other_files(tmp_path):
    (tmp_path / "images").mkdir()
    keep = [tmp_path / "images" / "a.png", tmp_path / ".lock", tmp_path / ".hidden.txt"]
    for p in keep:
        p.write_bytes(b"x")
    (tmp_path / "images" / f".a.png{TEMP_MARK}123-abcd").write_bytes(b"half")
    assert remove_stale_temporaries(tmp_path) == 1
    assert all(p.exists() for p in keep) and len(list((tmp_path / "images").iterdir())) == 1


def test_atomic_dir_publishes_a_whole_folder_or_nothing(tmp_path):
    out = tmp_path / "capture"
    with atomic_io.atomic_dir(out) as tmp:
        assert tmp.parent == tmp_path and TEMP_MARK in tmp.name and not out.exists()
        write_text(tmp / "a.txt", "one")
    assert (out / "a.txt").read_text() == "one" and _temporaries(tmp_path) == []
    with pytest.raises(PoseGenInputError, match="--output-dir .* already exists"):
        with atomic_io.atomic_dir(out, flag="--output-dir"):
            pass
    # an error inside the block: the old folder is intact, the temporary gone
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_io.atomic_dir(out, overwrite=True) as tmp:
            write_text(tmp / "b.txt", "two")
            raise RuntimeError("disk full")
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"] and list(tmp_path.iterdir()) == [out]
    # overwrite replaces the old folder as a whole
    with atomic_io.atomic_dir(out, overwrite=True) as tmp:
        write_text(tmp / "b.txt", "two")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"] and list(tmp_path.iterdir()) == [out]
