"""One job per output folder: a second `segment-slide`, `segment` or `data convert` into a folder a running job
holds is refused with the first's pid; the first's outputs stay consistent; a killed job's lock blocks nothing."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nucseg.cli import main
from nucseg.io.lock import LOCK_NAME, FolderLocked, output_lock

HOLD = "import sys, time; from nucseg.io.lock import output_lock\nwith output_lock(sys.argv[1], 'holder'):\n" \
       "    print('locked', flush=True); time.sleep(600)\n"


def wait_for_lock(folder: Path, pid: int, seconds: float = 120) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            if json.loads((folder / LOCK_NAME).read_text()).get("pid") == pid:
                return
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"no lock by pid {pid} in {folder}")


@pytest.fixture
def holder(tmp_path):
    """A process holding tmp_path/out's lock until killed."""
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    yield out, proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_a_held_folder_refuses_every_job_naming_the_holder(holder, tmp_path, capsys):
    from nucseg.samples import sample_path

    out, proc = holder
    with pytest.raises(FolderLocked, match=rf"in use by another nucseg job \(pid {proc.pid}, started .*: holder\)"):
        with output_lock(out):
            pass
    image = str(sample_path("he"))
    assert main(["segment", image, "--out", str(out), "--model", "he"]) == 2
    assert main(["segment-slide", image, "--out", str(out), "--model", "he"]) == 2
    assert main(["data", "convert", "--format", "folder", str(tmp_path), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count(f"pid {proc.pid}") == 3, err
    assert not (out / "labels").exists() and not (out / "dataset.json").exists()  # nothing was written


def test_a_killed_jobs_lock_blocks_nothing(holder):
    out, proc = holder
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (out / LOCK_NAME).exists()  # left behind by the killed job, but no longer locked
    with output_lock(out, "next"):
        assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (out / LOCK_NAME).exists()  # a finished job removes it


def test_two_slide_jobs_at_once_one_refused_the_other_consistent(tmp_path, capsys):
    """Started together into one --out: the second is refused; the first finishes with CSV rows = GeoJSON features
    = SQLite rows = distinct ids in labels.zarr, and leaves no partial file."""
    import zarr

    from nucseg.io.images import write_image
    from nucseg.samples import sample_image

    slide = tmp_path / "slide.tif"
    write_image(slide, np.tile(sample_image("he"), (3, 3, 1)))
    out = tmp_path / "out"
    first = subprocess.Popen([sys.executable, "-m", "nucseg.cli", "segment-slide", str(slide), "--out", str(out),
                              "--model", "he", "--threads", "1", "--tile", "384"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_lock(out, first.pid)
        assert main(["segment-slide", str(slide), "--out", str(out), "--model", "he", "--threads", "1"]) == 2
        assert f"pid {first.pid}" in capsys.readouterr().err
        stdout, stderr = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, stderr
    job = out / "slide"
    with open(job / "nuclei.csv") as f:
        csv_rows = sum(1 for _ in f) - 1
    features = len(json.loads((job / "nuclei.geojson").read_text())["features"])
    with sqlite3.connect(job / "nuclei.sqlite") as db:
        db_rows = db.execute("SELECT COUNT(*) FROM nuclei").fetchone()[0]
    labels = np.asarray(zarr.open_group(str(job / "labels.zarr"), mode="r")["0"][:])
    ids = len(np.unique(labels)) - 1
    assert csv_rows == features == db_rows == ids > 20, (csv_rows, features, db_rows, ids)
    leftovers = [p.name for p in job.iterdir() if "partial" in p.name] + [p.name for p in out.iterdir()
                                                                            if p.name == LOCK_NAME]
    assert not leftovers, leftovers
