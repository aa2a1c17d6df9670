"""Damaged annotation files: `data convert` reports and skips a bad file and converts every other one; geometry is
checked where it is read (a named error or a counted warning, never a silent change); a seeded fuzz of every
reader's format gives a result or a named error, never a traceback or a hang."""

import json
import random
import shutil
import signal
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from format_fixtures import FORMATS, _aperio, _gbm, build, polygons, sample

from nucseg.cli import main
from nucseg.data.convert import convert
from nucseg.data.readers import read_samples
from nucseg.io.images import InputError, read_label


def damage_and_convert(fmt, tmp_path, damage):
    """Build 3 images of `fmt`, damage the middle one's annotation with `damage(path)`, convert with the CLI: the
    other two convert, the exit status is 1 and dataset.json names the damaged file."""
    files = build(fmt, tmp_path / "src", 3)
    bad = files["img1"]
    damage(bad)
    dst = tmp_path / "dst"
    assert main(["data", "convert", "--format", fmt, str(tmp_path / "src"), str(dst)]) == 1
    info = json.loads((dst / "dataset.json").read_text())
    assert info["images"] == 2, info
    assert sorted(p.stem for p in (dst / "labels").iterdir()) == ["img0", "img2"]
    (skipped,) = info["skipped"]
    assert Path(skipped["file"]).name == bad.name, skipped
    return skipped["problem"]


def truncate(path: Path, keep: float = 0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_truncated_monuseg_xml_is_skipped(tmp_path, capsys):
    problem = damage_and_convert("monuseg", tmp_path, truncate)
    assert problem.startswith("malformed XML")
    err = capsys.readouterr().err
    assert "img1.xml: malformed XML" in err and "(skipped)" in err and "1 source file(s) skipped" in err


def test_xml_entity_bomb_is_refused_and_skipped(tmp_path):
    bomb = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
            + "".join(f'<!ENTITY lol{k} "{("&lol" + (str(k - 1) if k > 1 else "") + ";") * 10}">' for k in range(1, 10))
            + ']><Annotations>&lol9;</Annotations>')

    def plant(path):
        path.write_text(bomb)

    assert damage_and_convert("monuseg", tmp_path, plant).startswith("malformed XML")


def test_mat_without_inst_map_is_skipped(tmp_path):
    from scipy.io import savemat

    assert damage_and_convert("consep", tmp_path, lambda p: savemat(p, {"type_map": np.zeros((64, 64))})) \
        == "no 'inst_map' in .mat file"


def test_cpm_mask_with_swapped_header_is_skipped(tmp_path):
    def swap(path):
        lines = path.read_text().split("\n")
        w, h = lines[0].split()
        path.write_text("\n".join([f"{h} {w}", *lines[1:]]))

    def wide(root):  # a non-square image, so swapping the header changes the shape
        for stem in ("img0", "img1", "img2"):
            from nucseg.io.images import write_image

            s = sample(int(stem[-1]))
            image, labels = s.image[:, :48], s.instances[:, :48]
            write_image(root / f"{stem}.png", image)
            (root / f"{stem}_mask.txt").write_text("48 64\n" + "\n".join(map(str, labels.ravel())) + "\n")

    (tmp_path / "src").mkdir()
    wide(tmp_path / "src")
    swap(tmp_path / "src" / "img1_mask.txt")
    dst = tmp_path / "dst"
    assert main(["data", "convert", "--format", "cpm", str(tmp_path / "src"), str(dst)]) == 1
    info = json.loads((dst / "dataset.json").read_text())
    assert info["images"] == 2 and "mask size 64×48 differs from image size 48×64" in info["skipped"][0]["problem"]


def test_roi_set_that_is_not_a_zip_is_skipped(tmp_path):
    problem = damage_and_convert("imagej", tmp_path, lambda p: p.write_bytes(b"not a zip at all" * 10))
    assert problem.startswith("cannot read ImageJ ROI set")


def test_coco_entry_without_its_image_is_skipped_and_orphans_are_counted(tmp_path):
    files = build("coco", tmp_path / "src", 3)
    (tmp_path / "src" / "images" / "img1.png").unlink()
    data = json.loads(files["img0"].read_text())
    orphan = dict(data["annotations"][0], image_id=999)
    data["annotations"] += [dict(orphan, id=1000 + k) for k in range(78)]
    files["img0"].write_text(json.dumps(data))
    info = convert("coco", tmp_path / "src", tmp_path / "dst")
    assert info["images"] == 2 and "no image named 'img1.*'" in info["skipped"][0]["problem"]
    assert info["warnings"] == [{"file": str(files["img0"]),
                                 "warning": "78 annotation(s) reference image ids missing from 'images' (ignored)"}]


def test_dsb_folder_with_empty_masks_is_skipped(tmp_path):
    def empty(masks):
        shutil.rmtree(masks)
        masks.mkdir()

    assert damage_and_convert("dsb2018", tmp_path, empty) == "no mask images found"


def test_a_damaged_label_png_is_skipped(tmp_path):
    assert damage_and_convert("folder", tmp_path, truncate).startswith("cannot read label map")


# --- geometry -------------------------------------------------------------------------------------------------


def monuseg_with(tmp_path, polys):
    files = build("monuseg", tmp_path, 1)
    files["img0"].write_text(_aperio(polys))
    return files["img0"]


def test_a_nan_vertex_is_a_named_error_not_300000_pixels(tmp_path):
    polys = polygons(sample(0).instances)
    polys[2] = polys[2].copy()
    polys[2][4, 0] = np.nan
    monuseg_with(tmp_path, polys)
    with pytest.raises(InputError, match=r"img0.xml: Region 3 \(Id=3\): vertex \(nan, .*\) is not a finite number"):
        list(read_samples("monuseg", tmp_path))


@pytest.mark.parametrize("fmt", ["monuseg", "gbm"])
def test_a_vertex_far_outside_the_image_is_a_named_error(tmp_path, fmt):
    polys = polygons(sample(0).instances)
    polys[0] = polys[0].copy()
    polys[0][1, 0] = -7.5e14
    files = build(fmt, tmp_path, 1)
    files["img0"].write_text(_aperio(polys) if fmt == "monuseg" else _gbm(polys))
    name = r"Region 1 \(Id=1\)" if fmt == "monuseg" else "Shape 1"
    with pytest.raises(InputError, match=rf"{name}: vertex \(-7.5e\+14, .*\) lies far outside the 64×64 image"):
        list(read_samples(fmt, tmp_path))


def test_vertices_just_past_the_border_are_fine(tmp_path):
    polys = polygons(sample(0).instances) + [np.array([[-3.0, -3.0], [5.0, -3.0], [5.0, 5.0], [-3.0, 5.0]])]
    monuseg_with(tmp_path, polys)
    (s,) = list(read_samples("monuseg", tmp_path))
    assert (s.instances[:6, :6] == len(polys)).all()


def test_short_polygons_and_looping_outlines_are_counted_warnings(tmp_path):
    polys = polygons(sample(0).instances)
    # an outline that loops twice round a 10×10 square: even-odd leaves its inside out, the union would fill it
    loop = np.array([[40, 40], [50, 40], [50, 50], [40, 50], [40, 41], [49, 41], [49, 49], [41, 49], [41, 40.5]], float)
    polys += [np.array([[1.0, 1.0], [5.0, 5.0]]), np.array([[2.0, 2.0]]), loop]
    monuseg_with(tmp_path, polys)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (s,) = list(read_samples("monuseg", tmp_path))
    messages = [str(w.message) for w in caught]
    assert any("2 polygon(s) with fewer than 3 vertices ignored" in m for m in messages), messages
    assert any("1 self-intersecting polygon(s) rasterised by the even-odd rule" in m for m in messages), messages
    assert s.meta["warnings"] and len(np.unique(s.instances)) - 1 == 6 + 1


def test_convert_records_warnings_in_dataset_json(tmp_path):
    polys = polygons(sample(0).instances) + [np.array([[1.0, 1.0], [5.0, 5.0]])]
    monuseg_with(tmp_path / "src", polys)
    info = convert("monuseg", tmp_path / "src", tmp_path / "dst")
    assert info["images"] == 1 and not info["skipped"]
    assert [w["warning"] for w in info["warnings"]] == ["1 polygon(s) with fewer than 3 vertices ignored"]
    assert json.loads((tmp_path / "dst" / "dataset.json").read_text())["warnings"] == info["warnings"]


def test_real_files_raise_no_geometry_error(shared_data):
    """The checks are not tripped by the annotators' real polygons (which do run a little past the border)."""
    from nucseg.data.readers.geometry import PolygonRasteriser
    from nucseg.data.readers.xml_polygons import parse_aperio_xml, parse_gbm_xml

    xmls = sorted((shared_data / "monuseg-train/raw").glob("*.xml")) + sorted((shared_data / "gbm40/raw").glob("*.xml"))
    assert len(xmls) >= 4
    for xml in xmls:
        polys, names = parse_aperio_xml(xml)[:2] if xml.parent.parent.name == "monuseg-train" else parse_gbm_xml(xml)
        raster = PolygonRasteriser((1000, 1000), xml)
        labels = raster.instances(polys, names)
        assert labels.max() > 0, xml


# --- fuzz -----------------------------------------------------------------------------------------------------


@contextmanager
def deadline(seconds: int, what: str):
    def hang(*_):
        raise TimeoutError(f"{what}: no result after {seconds} s")

    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def mutate(data: bytes, rng: random.Random) -> bytes:
    if not data or rng.random() < 0.3:
        return data[: rng.randrange(len(data) + 1)]
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        buf[rng.randrange(len(buf))] = rng.randrange(256)
    return bytes(buf)


def annotation_files(fmt: str, files: dict[str, Path]) -> list[Path]:
    path = files["img0"]
    if path.is_dir():  # a DSB masks/ folder: its PNGs
        return sorted(path.iterdir())
    return [path]


@pytest.mark.parametrize("fmt", FORMATS)
def test_fuzzed_files_give_a_result_or_a_named_error(fmt, tmp_path):
    """30 seeded byte flips and truncations of each format's annotation file: reading either succeeds or raises an
    InputError naming a file of the source; any other exception, or a read over 20 s, fails."""
    rng = random.Random(f"nucseg-fuzz-{fmt}")
    pristine = tmp_path / "pristine"
    files = build(fmt, pristine, 1)
    targets = [p.relative_to(pristine) for p in annotation_files(fmt, files)]
    outcomes = {"ok": 0, "named": 0}
    for trial in range(30):
        work = tmp_path / f"t{trial}"
        shutil.copytree(pristine, work)
        target = work / rng.choice(targets)
        target.write_bytes(mutate(target.read_bytes(), rng))
        with deadline(20, f"{fmt} trial {trial}"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                list(read_samples(fmt, work))
                outcomes["ok"] += 1
            except InputError as exc:
                assert str(work) in exc.path, (trial, exc.path)
                assert exc.problem, trial
                outcomes["named"] += 1
        shutil.rmtree(work)
    assert outcomes["named"] > 0, outcomes  # the mutations did reach the parser


def test_fuzzed_roi_zip_members(tmp_path):
    """ImageJ ROI sets damaged inside a still valid zip (the bytes of one .roi member flipped)."""
    rng = random.Random("nucseg-fuzz-roi-members")
    files = build("imagej", tmp_path / "src", 1)
    zpath = files["img0"]
    with zipfile.ZipFile(zpath) as z:
        members = {n: z.read(n) for n in z.namelist()}
    for trial in range(20):
        with zipfile.ZipFile(zpath, "w") as z:
            for name, data in members.items():
                z.writestr(name, mutate(data, rng) if rng.random() < 0.5 else data)
        with deadline(20, f"roi trial {trial}"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                list(read_samples("imagej", tmp_path / "src"))
            except InputError as exc:
                assert exc.path == str(zpath)


def test_label_maps_read_back_unchanged_after_convert(tmp_path):
    """The damage handling changed nothing for good files: a clean conversion reproduces the synthetic maps."""
    build("monuseg", tmp_path / "src", 2)
    info = convert("monuseg", tmp_path / "src", tmp_path / "dst")
    assert info["images"] == 2 and not info["skipped"] and not info["warnings"]
    for k in range(2):
        written = read_label(tmp_path / "dst" / "labels" / f"img{k}.png")
        assert len(np.unique(written)) == len(np.unique(sample(k).instances))
