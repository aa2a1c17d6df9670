"""Open nucseg's label outputs as Labels layers: `segment-slide`'s labels.zarr (OME-Zarr 0.4 label image, with its
µm scale) and `segment`'s labels/<stem>.png (16-bit instance maps) and types/<stem>.png (class maps). Any other
file is left to napari's other readers (`get_reader` returns None)."""

from __future__ import annotations

import json
from pathlib import Path

LABEL_FOLDERS = ("labels", "types")  # where `nucseg segment` writes its maps


def _is_label_zarr(path: Path) -> bool:
    attrs = path / ".zattrs"
    if not (path.is_dir() and attrs.is_file()):
        return False
    try:
        return "multiscales" in json.loads(attrs.read_text())
    except (OSError, ValueError):
        return False


def get_reader(path: str | list[str]):
    """The reader for `path` when it is one of nucseg's label outputs, else None."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if p.suffix == ".zarr" and _is_label_zarr(p):
        return read_label_zarr
    if p.suffix.lower() in (".png", ".tif", ".tiff") and p.parent.name in LABEL_FOLDERS and p.is_file():
        return read_label_image
    return None


def read_label_zarr(path: str | list[str]) -> list[tuple]:
    """labels.zarr -> one Labels layer (every resolution level, lazily: a slide's map is not read whole), scaled
    to µm when the slide's resolution was known."""
    import zarr

    path = Path(path[0] if isinstance(path, list) else path)
    root = zarr.open_group(str(path), mode="r")
    (multiscale,) = root.attrs["multiscales"][:1]
    levels = [root[d["path"]] for d in multiscale["datasets"]]
    scale = next((t["scale"] for t in multiscale["datasets"][0].get("coordinateTransformations", [])
                  if t.get("type") == "scale"), None)
    meta = {"name": f"{path.parent.name} nuclei", "multiscale": len(levels) > 1}
    if scale:
        meta["scale"] = tuple(scale)
        if any(a.get("unit") for a in multiscale.get("axes", [])):
            meta["units"] = "micrometer"
    return [(levels if len(levels) > 1 else levels[0], meta, "labels")]


def read_label_image(path: str | list[str]) -> list[tuple]:
    """labels/<stem>.png (or types/<stem>.png) -> a Labels layer named after the image."""
    from nucseg.io.images import read_label

    path = Path(path[0] if isinstance(path, list) else path)
    kind = "nuclei" if path.parent.name == "labels" else "classes"
    return [(read_label(path), {"name": f"{path.stem} {kind}"}, "labels")]
