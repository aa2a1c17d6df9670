"""Small sources in each reader's published layout, built from synthetic samples: `build(fmt, root, n)` writes n
images and returns {stem: the annotation file a reader names for it}. For the damaged-file and fuzz tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from nucseg.data.synthetic import synthetic_sample
from nucseg.io.images import write_image, write_label


def sample(seed: int):
    return synthetic_sample(64, n_nuclei=6, radius=(5, 8), touching=0.0, seed=seed)


def polygons(labels: np.ndarray) -> list[np.ndarray]:
    """One outline per nucleus as (x, y) vertices at pixel centres (nucseg's convention), from the label map."""
    from skimage.measure import find_contours

    out = []
    for i in np.unique(labels)[1:]:
        (contour, *_) = sorted(find_contours(np.pad(labels == i, 1).astype(float), 0.5), key=len, reverse=True)
        out.append(contour[:, ::-1] - 1)  # (row, col) -> (x, y), unpadded
    return out


def _aperio(polys, mpp=0.25) -> str:
    regions = "".join(
        f'<Region Id="{k}"><Vertices>' + "".join(f'<Vertex X="{x:.2f}" Y="{y:.2f}"/>' for x, y in p)
        + "</Vertices></Region>" for k, p in enumerate(polys, start=1))
    return f'<Annotations MicronsPerPixel="{mpp}"><Annotation><Regions>{regions}</Regions></Annotation></Annotations>'


def _gbm(polys) -> str:
    shapes = "".join('<Shape Type="Polygon">' + "".join(f'<Point X="{x:.2f}" Y="{y:.2f}"/>' for x, y in p)
                     + "</Shape>" for p in polys)
    return f"<Data><Shapes>{shapes}</Shapes></Data>"


def build(fmt: str, root: Path, n: int = 3) -> dict[str, Path]:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    samples = {f"img{k}": sample(k) for k in range(n)}
    if fmt == "coco":
        from nucseg.io.writers import write_coco
        from nucseg.structures import Instances

        for stem, s in samples.items():
            write_image(root / "images" / f"{stem}.png", s.image)
        path = write_coco(root / "annotations.json", [(f"{stem}.png", Instances(s.instances, s.classes or {}))
                                                       for stem, s in samples.items()])
        return {stem: path for stem in samples}
    for stem, s in samples.items():
        polys = polygons(s.instances)
        if fmt == "monuseg":
            write_image(root / "Tissue Images" / f"{stem}.tif", s.image)
            files[stem] = root / "Annotations" / f"{stem}.xml"
            files[stem].parent.mkdir(exist_ok=True)
            files[stem].write_text(_aperio(polys))
        elif fmt == "gbm":
            write_image(root / f"{stem}.tif", s.image)
            files[stem] = root / f"{stem}_data.xml"
            files[stem].write_text(_gbm(polys))
        elif fmt == "consep":
            from scipy.io import savemat

            write_image(root / "Images" / f"{stem}.png", s.image)
            files[stem] = root / "Labels" / f"{stem}.mat"
            files[stem].parent.mkdir(exist_ok=True)
            savemat(files[stem], {"inst_map": s.instances.astype(np.int32),
                                  "type_map": np.zeros_like(s.instances, dtype=np.int32)})
        elif fmt == "cpm":
            write_image(root / f"{stem}.png", s.image)
            files[stem] = root / f"{stem}_mask.txt"
            h, w = s.instances.shape
            files[stem].write_text(f"{w} {h}\n" + "\n".join(map(str, s.instances.ravel())) + "\n")
        elif fmt == "imagej":
            import roifile

            folder = root / stem
            write_image(folder / f"{stem}.tif", s.image)
            files[stem] = folder / "RoiSet.zip"
            for k, p in enumerate(polys, start=1):
                roifile.ImagejRoi.frompoints(p + 0.5, name=f"n{k}").tofile(files[stem])
        elif fmt == "geojson":
            from nucseg.io.writers import write_geojson
            from nucseg.structures import Instances

            write_image(root / "images" / f"{stem}.png", s.image)
            files[stem] = write_geojson(root / "geojson" / f"{stem}.geojson", Instances(s.instances, {}))
        elif fmt == "dsb2018":
            folder = root / stem
            write_image(folder / "images" / f"{stem}.png", s.image)
            for i in np.unique(s.instances)[1:]:
                write_image(folder / "masks" / f"m{i}.png", ((s.instances == i) * 255).astype(np.uint8))
            files[stem] = folder / "masks"
        elif fmt == "folder":
            write_image(root / "images" / f"{stem}.png", s.image)
            files[stem] = write_label(root / "masks" / f"{stem}.png", s.instances)
        elif fmt == "deepliif":
            seg = np.zeros_like(s.image)
            seg[s.instances > 0] = (0, 0, 255)
            files[stem] = write_image(root / f"{stem}.png", np.concatenate([s.image] * 5 + [seg], axis=1))
        elif fmt == "nucseg":
            from nucseg.data.convert import write_sample

            s.meta["id"] = stem
            write_sample(root, s)
            (root / "dataset.json").write_text(json.dumps({"name": root.name}))
            files[stem] = root / "labels" / f"{stem}.png"
        else:
            raise ValueError(fmt)
    return files


FORMATS = ("monuseg", "gbm", "consep", "cpm", "imagej", "coco", "geojson", "dsb2018", "folder", "deepliif", "nucseg")
