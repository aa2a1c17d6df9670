"""Inference without torch: the shipped models' exported bundles (nucseg/weights/*.json + .xml/.bin) segment tiles
and slides with numpy and OpenVINO alone, with the outputs of the torch path."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from nucseg.cli import main
from nucseg.engine.exported import usable_bundle
from nucseg.engine.segment import SHIPPED, WEIGHTS
from nucseg.samples import FOLDER

HIDE_TORCH = "import sys; sys.modules['torch'] = None; sys.modules['timm'] = None\n"  # an import of either fails


def run_without_torch(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    script = tmp_path / "no_torch.py"
    script.write_text(HIDE_TORCH + code)
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("name", ["he", "fluo", "weaveseg", "gensegnet", "frgnet"])
def test_shipped_bundles_match_their_checkpoints(name):
    """A bundle is only used when made from its .pt's exact bytes: re-exporting is not forgotten."""
    assert usable_bundle(WEIGHTS / SHIPPED[name]) is not None, f"run: nucseg export nucseg/weights/{SHIPPED[name]} --graph"


def test_segment_without_torch_writes_what_the_torch_path_writes(tmp_path):
    """`nucseg segment` on the sample images (auto: he and fluo) in a process where torch cannot be imported, then
    with torch (runtime torch): label maps and overlays byte-identical, GeoJSON geometries and CSV rows identical but
    for the probability (a mean of float maps the two runtimes compute within 4e-6: its 4th decimal may round
    differently)."""
    code = ("from nucseg.cli import main\n"
            f"rc = main(['segment', {str(FOLDER)!r}, '--out', {str(tmp_path / 'free')!r}, '--threads', '2', '--precision', 'fp32'])\n"
            "assert 'torch' not in sys.modules or sys.modules['torch'] is None\n"
            "sys.exit(rc)\n")
    done = run_without_torch(code, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert main(["segment", str(FOLDER), "--out", str(tmp_path / "torch"), "--runtime", "torch", "--threads", "2",
                 "--precision", "fp32"]) == 0  # fp32 both (auto is fp32 for inference on CPUs too; said, not assumed)
    written = sorted(p.relative_to(tmp_path / "torch") for p in (tmp_path / "torch").rglob("*") if p.is_file())
    assert len(written) == 4 * 4
    for rel in written:
        free, torch_file = tmp_path / "free" / rel, tmp_path / "torch" / rel
        if rel.suffix == ".png":
            assert free.read_bytes() == torch_file.read_bytes(), rel
        elif rel.suffix == ".csv":
            a, b = (list(csv.DictReader(open(f))) for f in (free, torch_file))
            assert len(a) == len(b) > 0, rel
            for ra, rb in zip(a, b):
                assert abs(float(ra.pop("probability")) - float(rb.pop("probability"))) <= 1e-4 and ra == rb, rel
        else:
            fa, fb = (json.loads(f.read_text())["features"] for f in (free, torch_file))
            assert len(fa) == len(fb) > 0, rel
            for x, y in zip(fa, fb):
                px = x["properties"]["measurements"].pop("probability")
                py = y["properties"]["measurements"].pop("probability")
                assert abs(px - py) <= 1e-4 and x == y, rel


def test_slides_and_the_python_api_run_without_torch(tmp_path):
    code = ("import numpy as np, nucseg\n"
            "from nucseg.samples import sample_image, sample_path\n"
            f"report = nucseg.segment_slide(sample_path('he'), {str(tmp_path / 'slides')!r}, model='he', progress=False)\n"
            "assert report.nuclei > 20, report\n"
            "result = nucseg.load_model('fluo', threads=1).segment(sample_image('fluo'))\n"
            "assert len(result) > 5 and result.table().shape[0] == len(result)\n"
            "for name in ('weaveseg', 'gensegnet', 'frgnet'):  # their inference halves and graphs, side input included\n"
            "    assert len(nucseg.segment(sample_image('he'), model=name, threads=1)) > 20, name\n"
            "assert type(nucseg.load_model('he').predictor()[1]).__name__ == 'ExportedPredictor'\n")
    done = run_without_torch(code, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]


def test_a_model_without_a_bundle_says_it_needs_torch(tmp_path):
    code = ("from nucseg.cli import main\n"
            f"sys.exit(main(['segment', {str(FOLDER)!r}, '--out', {str(tmp_path / 'o')!r}, '--model', 'cfr-sam']))\n")
    done = run_without_torch(code, tmp_path)
    assert done.returncode != 0
    assert "has no exported graph beside it, so it needs torch: pip install nucseg[train]" in done.stderr
