"""Whole slides: readers, tissue, seamless tiles (slide == flat `segment`), resuming a killed job, Dask, bad input."""

import json
import sqlite3

import numpy as np
import pytest

from nucseg.io.images import InputError
from nucseg.io.slides import ImageSlide, TiffSlide, ZarrSlide, open_slide, tissue_mask, write_pyramid_tiff

TILE, MARGIN = 128, 32  # small tiles so a few hundred pixels make a multi-tile slide


def synthetic_slide_image(size=300, seed=3):
    from nucseg.data.synthetic import synthetic_sample

    return synthetic_sample(size, n_nuclei=size * size // 900, radius=(5, 9), seed=seed).image[..., :3]


def run_slide(path, out, model, **kw):
    from nucseg.engine.slide import segment_slides

    kw = {"tile": TILE, "margin": MARGIN, "use_tissue": False, "progress": False, "post_workers": 0, **kw}
    return segment_slides([str(path)], out, str(model), **kw)[0]


def kill_after(n):
    """An `on_tile` callback that interrupts the job after `n` recorded tiles, as a killed process would."""
    seen = []

    def callback(index):
        seen.append(index)
        if len(seen) == n:
            raise KeyboardInterrupt

    return callback


def slide_outputs(job_dir):
    import zarr

    labels = zarr.open_group(str(job_dir / "labels.zarr"), mode="r")["0"][:]
    return labels, (job_dir / "nuclei.geojson").read_text(), (job_dir / "nuclei.csv").read_text()


# --- readers -------------------------------------------------------------------------------------------------


def test_pyramidal_ome_tiff_levels_mpp_and_regions(tmp_path):
    image = np.random.default_rng(0).integers(0, 255, (1100, 1300, 3), dtype=np.uint8)
    path = write_pyramid_tiff(tmp_path / "s.ome.tif", image, mpp=0.25, min_size=256)
    with open_slide(path) as slide:
        assert isinstance(slide, TiffSlide)
        assert slide.dimensions == (1300, 1100) and slide.level_count == 3
        assert slide.level_downsamples[1] == pytest.approx(2.0, rel=0.01)
        assert slide.mpp == pytest.approx(0.25)
        np.testing.assert_array_equal(slide.read_region(0, 500, 300, 260, 140), image[300:440, 500:760])
        # outside the slide is white background, not an error
        edge = slide.read_region(0, 1250, 1050, 100, 100)
        assert (edge[50:, :] == 255).all() and np.array_equal(edge[:50, :50], image[1050:, 1250:])
        assert slide.best_level(0.5) == 1 and slide.best_level(0.25) == 0
    # plain (non-OME) TIFF: resolution from the TIFF tags; --mpp overrides it
    plain = write_pyramid_tiff(tmp_path / "plain.tif", image, mpp=0.5, ome=False)
    assert open_slide(plain).mpp == pytest.approx(0.5)
    assert open_slide(plain, mpp=0.3).mpp == 0.3


def test_openslide_reads_a_generic_tiled_tiff(tmp_path):
    from nucseg.io.slides import OpenSlideSlide

    image = np.random.default_rng(1).integers(0, 255, (600, 700, 3), dtype=np.uint8)
    path = write_pyramid_tiff(tmp_path / "generic.tif", image, mpp=0.25, ome=False)
    slide = OpenSlideSlide(path)
    assert slide.dimensions == (700, 600)
    np.testing.assert_array_equal(slide.read_region(0, 100, 50, 200, 120), image[50:170, 100:300])


def test_ome_zarr_and_plain_images(tmp_path):
    import zarr

    from nucseg.io.images import write_image

    image = np.random.default_rng(2).integers(0, 255, (3, 200, 240), dtype=np.uint8)  # c, y, x
    root = zarr.open_group(str(tmp_path / "s.ome.zarr"), mode="w", zarr_format=2)
    root.create_array("0", data=image, chunks=(3, 64, 64))
    root.create_array("1", data=image[:, ::2, ::2], chunks=(3, 64, 64))
    axes = [{"name": "c", "type": "channel"}, {"name": "y", "type": "space", "unit": "micrometer"},
            {"name": "x", "type": "space", "unit": "micrometer"}]
    root.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 0.5, 0.5]}]},
        {"path": "1", "coordinateTransformations": [{"type": "scale", "scale": [1, 1.0, 1.0]}]}]}]
    slide = open_slide(tmp_path / "s.ome.zarr")
    assert isinstance(slide, ZarrSlide) and slide.mpp == 0.5 and slide.level_dimensions == [(240, 200), (120, 100)]
    np.testing.assert_array_equal(slide.read_region(0, 10, 20, 30, 40), image[:, 20:60, 10:40].transpose(1, 2, 0))

    write_image(tmp_path / "tile.png", image.transpose(1, 2, 0))
    flat = open_slide(tmp_path / "tile.png")
    assert isinstance(flat, ImageSlide) and flat.level_count == 1 and flat.mpp is None


def test_unsupported_and_missing_files_say_what_is_supported(tmp_path):
    (tmp_path / "notes.xyz").write_text("x")
    with pytest.raises(InputError, match="unsupported slide format.*OME-Zarr"):
        open_slide(tmp_path / "notes.xyz")
    with pytest.raises(InputError, match="file not found"):
        open_slide(tmp_path / "absent.svs")
    (tmp_path / "broken.svs").write_bytes(b"not a slide")
    with pytest.raises(InputError, match="broken.svs"):
        open_slide(tmp_path / "broken.svs")


def test_tissue_mask_finds_stained_tissue_on_glass():
    thumb = np.full((200, 300, 3), 242, np.uint8)  # glass
    yy, xx = np.mgrid[:200, :300]
    blob = (yy - 100) ** 2 / 60**2 + (xx - 100) ** 2 / 80**2 < 1
    thumb[blob] = (200, 120, 170)  # eosin-pink tissue
    thumb[blob & ((yy - 100) ** 2 + (xx - 100) ** 2 < 15**2)] = 245  # a lumen: a hole, still tissue
    mask = tissue_mask(thumb, downsample=10.0)
    assert mask.mask[100, 100] and mask.mask[100, 60] and not mask.mask[20, 280]
    assert mask.fraction(600, 600, 1400, 1400) == 1.0 and mask.fraction(2500, 0, 3000, 500) == 0.0
    assert not tissue_mask(np.full((100, 100, 3), 240, np.uint8), 1.0).mask.any()  # blank glass: no tissue


# --- the slide job --------------------------------------------------------------------------------------------


def test_slide_equals_flat_segment_on_synthetic_image(trained_run, tmp_path):
    from nucseg.engine.infer import Predictor

    image = synthetic_slide_image()
    path = write_pyramid_tiff(tmp_path / "syn.tif", image, mpp=None, min_size=10_000)
    report = run_slide(path, tmp_path / "out", trained_run[0])
    labels, geojson, table = slide_outputs(tmp_path / "out" / "syn")
    flat = Predictor.from_checkpoint(trained_run[0] / "best.ckpt", precision="auto")  # the slide run's precision
    flat = flat.segment_tiles(image, TILE, MARGIN).labels
    assert report.tiles == 25 and report.nuclei == int(flat.max()) > 20
    np.testing.assert_array_equal(labels, flat)  # same ids, same pixels: no seams, nothing cut or doubled
    # an OME-Zarr 0.4 label image (zarr format 2), as napari-ome-zarr reads it
    attrs = json.loads((tmp_path / "out/syn/labels.zarr/.zattrs").read_text())
    assert attrs["multiscales"][0]["datasets"][0]["path"] == "0" and "image-label" in attrs
    assert [a["name"] for a in attrs["multiscales"][0]["axes"]] == ["y", "x"]
    assert json.loads((tmp_path / "out/syn/labels.zarr/0/.zarray").read_text())["dtype"] == "<i4"
    features = json.loads(geojson)["features"]
    rows = table.splitlines()[1:]
    assert len(features) == len(rows) == len(np.unique(labels)) - 1
    # each outline rasterises back to its nucleus in the label store
    from nucseg.labels import rasterize_outlines

    outlines = {int(f["properties"]["name"].split()[-1]): __import__("shapely").geometry.shape(f["geometry"])
                for f in features}
    np.testing.assert_array_equal(rasterize_outlines(outlines, labels.shape), labels)


def test_slide_equals_flat_segment_on_real_mosaic(shared_data, tmp_path):
    """Four real MoNuSeg crops in a 2×2 mosaic through the shipped H&E model: slide = flat, nucleus for nucleus."""
    from scipy.spatial import cKDTree

    from nucseg.engine.infer import Predictor
    from nucseg.engine.segment import DEFAULT_MODEL
    from nucseg.io.images import read_image
    from nucseg.labels import centroids

    files = sorted((shared_data / "monuseg-train/images").glob("*.png"))[:4]
    crops = [read_image(f)[200:456, 300:556, :3] for f in files]
    mosaic = np.concatenate([np.concatenate(crops[:2], 1), np.concatenate(crops[2:], 1)], 0)
    path = write_pyramid_tiff(tmp_path / "mosaic.ome.tif", mosaic, mpp=0.25)
    tile, margin = 256, 48
    report = run_slide(path, tmp_path / "out", DEFAULT_MODEL, tile=tile, margin=margin, runtime="torch")
    labels, _, table = slide_outputs(tmp_path / "out" / "mosaic")
    flat = Predictor.from_checkpoint(DEFAULT_MODEL, runtime="torch").segment_tiles(mosaic, tile, margin).labels
    ids_s, c_s = centroids(labels)
    ids_f, c_f = centroids(flat)
    assert report.nuclei == ids_f.size == ids_s.size > 100
    dist, _ = cKDTree(c_f).query(c_s)
    assert (dist < 0.5).all()  # every centroid paired with its flat twin
    np.testing.assert_array_equal(labels, flat)
    # CSV centroids are level-0 pixels
    xy = np.array([[float(v) for v in r.split(",")[1:3]] for r in table.splitlines()[1:]])
    np.testing.assert_allclose(np.sort(xy[:, 0]), np.sort(c_s[:, 1]), atol=0.006)


def test_killed_job_resumes_to_the_same_result(trained_run, tmp_path):
    image = synthetic_slide_image(seed=4)
    path = write_pyramid_tiff(tmp_path / "k.tif", image, min_size=10_000)
    whole = run_slide(path, tmp_path / "whole", trained_run[0])
    with pytest.raises(KeyboardInterrupt):
        run_slide(path, tmp_path / "job", trained_run[0], on_tile=kill_after(4))
    job = tmp_path / "job" / "k"
    assert not (job / "nuclei.geojson").exists() and not (job / "labels.zarr").exists()  # no partial final files
    resumed = run_slide(path, tmp_path / "job", trained_run[0])
    assert resumed.resumed_tiles == 4 and resumed.nuclei == whole.nuclei
    for a, b in zip(slide_outputs(job), slide_outputs(tmp_path / "whole" / "k")):
        assert np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b
    # the same folder with other settings is refused, not mixed, and the report says why
    refused = run_slide(path, tmp_path / "job", trained_run[0], margin=16)
    assert not refused.out and "other settings" in refused.message and "margin" in refused.message


def test_corrupt_tile_is_reported_and_the_slide_goes_on(trained_run, tmp_path):
    import tifffile

    image = synthetic_slide_image(seed=5)
    path = write_pyramid_tiff(tmp_path / "c.tif", image, min_size=10_000, tile=64)
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].dataoffsets[7]  # one 64² tile of level 0
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\xff" * 64)
    report = run_slide(path, tmp_path / "out", trained_run[0])
    assert report.failed_tiles and all("c.tif" in e or "tile" in e for e in report.failed_tiles)
    assert any("x " in e and "cannot read" in e for e in report.failed_tiles)
    assert report.nuclei > 0 and (tmp_path / "out/c/nuclei.geojson").is_file()


def test_slide_without_tissue_gives_empty_outputs(trained_run, tmp_path):
    path = write_pyramid_tiff(tmp_path / "blank.tif", np.full((300, 300, 3), 243, np.uint8), min_size=10_000)
    report = run_slide(path, tmp_path / "out", trained_run[0], use_tissue=True)
    assert report.tissue_tiles == 0 and report.nuclei == 0 and "no tissue" in report.message
    job = tmp_path / "out" / "blank"
    assert json.loads((job / "nuclei.geojson").read_text())["features"] == []
    assert (job / "nuclei.csv").read_text().startswith("id,centroid_x,centroid_y")
    assert (job / "overview.png").is_file()


def test_sqlite_table_answers_region_queries(trained_run, tmp_path):
    import shapely

    path = write_pyramid_tiff(tmp_path / "q.tif", synthetic_slide_image(seed=6), min_size=10_000)
    report = run_slide(path, tmp_path / "out", trained_run[0])
    db = sqlite3.connect(tmp_path / "out/q/nuclei.sqlite")
    assert db.execute("SELECT count(*) FROM nuclei").fetchone()[0] == report.nuclei
    ids = [r[0] for r in db.execute("SELECT id FROM nuclei_bbox WHERE max_x >= 0 AND min_x <= 150 AND "
                                    "max_y >= 0 AND min_y <= 150")]
    assert 0 < len(ids) < report.nuclei
    wkb = db.execute("SELECT geometry FROM nuclei WHERE id = ?", (ids[0],)).fetchone()[0]
    assert shapely.from_wkb(wkb).is_valid


@pytest.mark.slow
def test_two_dask_workers_give_the_same_outputs(trained_run, tmp_path):
    path = write_pyramid_tiff(tmp_path / "d.tif", synthetic_slide_image(seed=7), min_size=10_000)
    run_slide(path, tmp_path / "one", trained_run[0])
    report = run_slide(path, tmp_path / "dask", trained_run[0], workers=2)
    assert report.nuclei > 0
    for a, b in zip(slide_outputs(tmp_path / "one" / "d"), slide_outputs(tmp_path / "dask" / "d")):
        assert np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b


def test_post_processing_workers_give_the_same_outputs(trained_run, tmp_path):
    path = write_pyramid_tiff(tmp_path / "w.tif", synthetic_slide_image(seed=8), min_size=10_000)
    run_slide(path, tmp_path / "inline", trained_run[0])
    run_slide(path, tmp_path / "pool", trained_run[0], post_workers=1)
    for a, b in zip(slide_outputs(tmp_path / "inline" / "w"), slide_outputs(tmp_path / "pool" / "w")):
        assert np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b


def test_a_20x_slide_is_read_at_the_models_resolution(shared_data, tmp_path):
    """A 0.5 µm/px slide meets the 0.25 µm/px H&E model at its scale: the label store is at the model's resolution
    (twice the slide's size) and the CSV's centroids are in the slide's level-0 pixels."""
    import cv2

    from nucseg.engine.segment import DEFAULT_MODEL
    from nucseg.io.images import read_image

    crop = read_image(sorted((shared_data / "monuseg-train/images").glob("*.png"))[0])[:400, :400, :3]
    half = cv2.resize(crop, (200, 200), interpolation=cv2.INTER_AREA)
    path = write_pyramid_tiff(tmp_path / "x20.tif", half, mpp=0.5, min_size=10_000)
    report = run_slide(path, tmp_path / "out", DEFAULT_MODEL, tile=256, margin=48, runtime="torch")
    labels, _, table = slide_outputs(tmp_path / "out" / "x20")
    assert labels.shape == (400, 400) and report.nuclei > 20
    xy = np.array([[float(v) for v in r.split(",")[1:3]] for r in table.splitlines()[1:]])
    assert xy.min() >= -0.5 and xy.max() <= 199.5 and xy.max() > 150


def test_segment_slide_command(trained_run, tmp_path, capsys):
    from nucseg.cli import main

    path = write_pyramid_tiff(tmp_path / "cli.tif", synthetic_slide_image(seed=9), min_size=10_000)
    (tmp_path / "bad.xyz").write_text("?")
    rc = main(["segment-slide", str(path), str(tmp_path / "bad.xyz"), "--model", str(trained_run[0]), "--out",
               str(tmp_path / "out"), "--tile", "128", "--margin", "32", "--post-workers", "0", "--no-tissue-mask"])
    captured = capsys.readouterr()
    assert rc == 1 and "bad.xyz" in captured.err and "supported" in captured.err
    assert "cli.tif:" in captured.out and "nuclei from 25 tissue tiles of 25" in captured.out
    assert {"nuclei.geojson", "nuclei.csv", "nuclei.sqlite", "labels.zarr", "overview.png"} <= {
        p.name for p in (tmp_path / "out" / "cli").iterdir()}


def test_qupath_reads_the_slide_geojson(trained_run, tmp_path):
    """QuPath's Python library reads the streamed GeoJSON: one valid detection per nucleus, with measurements."""
    import shapely

    qubalab_objects = pytest.importorskip("qubalab.objects")
    path = write_pyramid_tiff(tmp_path / "qp.tif", synthetic_slide_image(seed=10), min_size=10_000)
    report = run_slide(path, tmp_path / "out", trained_run[0])
    text = (tmp_path / "out/qp/nuclei.geojson").read_text()
    objects = [qubalab_objects.ImageFeature.create_from_feature(f)
               for f in qubalab_objects.geojson_features_from_string(text)]
    assert len(objects) == report.nuclei > 0 and all(o.is_detection for o in objects)
    assert all({"area", "perimeter", "centroid_x"} <= set(o.measurements) for o in objects)
    assert all(shapely.geometry.shape(o.geometry).is_valid for o in objects)


def _tissue_on_glass(seed=12):
    """A 300² synthetic tissue patch in the middle of a 640² glass slide: most tiles are background."""
    canvas = np.full((640, 640, 3), 243, np.uint8)
    canvas[170:470, 170:470] = synthetic_slide_image(seed=seed)
    return canvas


def test_tissue_mask_skips_glass_and_keeps_every_nucleus(trained_run, tmp_path):
    """With tissue found on the thumbnail (the default) background tiles are skipped, yet the labels equal a run
    that reads every tile: a mask mis-scaled or misplaced by a tile would lose nuclei here."""
    image = _tissue_on_glass()
    path = write_pyramid_tiff(tmp_path / "t.tif", image, min_size=10_000)
    every = run_slide(path, tmp_path / "every", trained_run[0], use_tissue=False)
    masked = run_slide(path, tmp_path / "masked", trained_run[0], use_tissue=True)
    assert every.tissue_tiles == every.tiles == masked.tiles
    # the tissue covers 22 % of the slide: the glass border's tiles are skipped, the tissue's kept
    assert 0.15 * masked.tiles <= masked.tissue_tiles <= 0.6 * masked.tiles
    assert masked.nuclei == every.nuclei > 20
    np.testing.assert_array_equal(slide_outputs(tmp_path / "masked" / "t")[0], slide_outputs(tmp_path / "every" / "t")[0])


def test_slide_with_defaults_equals_segment_with_defaults(trained_run, tmp_path):
    """The README's promise with no tile or margin given: `segment-slide` and `segment` of the same pixels (larger
    than one window, so both tile) write the same label map."""
    from nucseg.engine.segment import segment_files
    from nucseg.engine.slide import segment_slides
    from nucseg.io.images import read_label, write_image

    image = _tissue_on_glass(seed=13)
    write_image(tmp_path / "flat" / "g.png", image)
    report = segment_files([str(tmp_path / "flat")], tmp_path / "seg", str(trained_run[0]), ("labels",),
                           progress=False)
    assert not report.failed
    path = write_pyramid_tiff(tmp_path / "g.tif", image, min_size=10_000)
    slide = segment_slides([str(path)], tmp_path / "slide", str(trained_run[0]), progress=False)[0]
    flat = read_label(tmp_path / "seg" / "labels" / "g.png")
    assert slide.tiles > 1 and flat.max() > 20
    np.testing.assert_array_equal(slide_outputs(tmp_path / "slide" / "g")[0], flat)


def test_restart_discards_the_recorded_tiles(trained_run, tmp_path):
    path = write_pyramid_tiff(tmp_path / "r.tif", synthetic_slide_image(seed=14), min_size=10_000)
    whole = run_slide(path, tmp_path / "whole", trained_run[0])
    with pytest.raises(KeyboardInterrupt):
        run_slide(path, tmp_path / "job", trained_run[0], on_tile=kill_after(3))
    restarted = run_slide(path, tmp_path / "job", trained_run[0], restart=True)
    assert restarted.resumed_tiles == 0 and restarted.nuclei == whole.nuclei
    for a, b in zip(slide_outputs(tmp_path / "job" / "r"), slide_outputs(tmp_path / "whole" / "r")):
        assert np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b


def test_slide_csv_is_in_micrometres_when_the_resolution_is_known(trained_run, tmp_path):
    """A 0.25 µm/px slide: nuclei.csv's areas are µm² (label-store pixels × 0.0625) and its centroids stay in
    level-0 pixels, as the README says; the same slide without a resolution gives pixel areas."""
    import csv
    import io

    image = synthetic_slide_image(seed=15)
    for mpp, name in ((0.25, "um"), (None, "px")):
        path = write_pyramid_tiff(tmp_path / f"{name}.tif", image, mpp=mpp, min_size=10_000)
        run_slide(path, tmp_path / "out", trained_run[0])
    labels, _, table = slide_outputs(tmp_path / "out" / "um")
    rows = list(csv.DictReader(io.StringIO(table)))
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    pixels = dict(zip(ids.tolist(), counts.tolist()))
    assert len(rows) == len(pixels) > 20
    for r in rows:
        assert float(r["area"]) == pytest.approx(pixels[int(r["id"])] * 0.25**2, abs=1e-3)
        ys, xs = np.nonzero(labels == int(r["id"]))
        assert float(r["centroid_x"]) == pytest.approx(xs.mean(), abs=0.01)  # level-0 pixels, not µm
    px_rows = list(csv.DictReader(io.StringIO(slide_outputs(tmp_path / "out" / "px")[2])))
    assert [float(r["area"]) for r in px_rows] == pytest.approx([pixels[int(r["id"])] for r in rows], abs=1e-3)
