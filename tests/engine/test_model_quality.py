"""Each shipped model keeps the quality its model card states, on images it never trained on, on the runtime a user
gets by default (OpenVINO where it applies) and on torch.

One table: model, images, the mean AJI the model card lists for them (nucseg/weights/MODEL_CARD.md, "Quality
tests") and the runtime `nucseg segment` picks. A row passes at the card's value minus MARGIN. Every row also
checks that a threshold + opening + connected-components segmenter (tests/baselines.py) stays well under the bar on
the same images, so the bar is one that only a working model clears. For a model that classifies, the per-class
check asks for its type accuracy over matched nuclei (card value minus MARGIN) above that of naming every nucleus
the most common class, and more than one class predicted.

Images: the H&E rows use 512² crops of two MoNuSeg tiles held out by every shipped H&E model (the validation
tiles of configs/unet/he.yaml's and of the earlier 15 % splits); the fluorescence rows four DSB2018 images from
configs/unet/fluo.yaml's validation split, one per kind (benchmarks/dsb2018_kinds.py), where the threshold
segmenter scores far below the models; CFR-SAM four CoNSeP patches of a source tile it held out.
When a later issue ships a better model, its row's expected value moves up with it (and the card's).
"""

from dataclasses import dataclass

import numpy as np
import pytest
from baselines import majority_class_accuracy, threshold_baseline

MARGIN = 0.03  # OpenVINO and torch agree to 1e-3 AJI here; library updates move AJI by less than this


@dataclass(frozen=True)
class Row:
    model: str
    images: str  # key of IMAGES
    card_aji: float  # MODEL_CARD.md, "Quality tests": mean AJI over the images
    default_runtime: str  # what `nucseg segment --model NAME` runs on a CPU (in fp32; bf16 is opt-in)
    card_type_accuracy: float | None = None  # classifying models


HE = "monuseg-heldout-crops"
DSB = "dsb2018-fluo-val-kinds"
CONSEP = "consep-heldout-tile"
IMAGES = {
    HE: [("monuseg-train", "TCGA-E2-A1B5-01Z-00-DX1", 512), ("monuseg-train", "TCGA-50-5931-01Z-00-DX1", 512)],
    DSB: [("dsb2018-train", s, None) for s in (
        "4e92129f4e8066d6f560d6022cd343a2245939aa49d8b06cddbd9bfc7e7eeb0e",  # brightfield-colour
        "e23e11414ee645b51081fb202d38b793f0c8ef2940f8228ded384899d21b02c2",  # fluorescent-large
        "3b957237bc1e09740b58a414282393d3a91dde996b061e7061f4198fb03dab2e",  # fluorescent-small
        "52a6b8ae4c8e0a8a07a31b8e3f401d8811bf1942969c198e51dfcbd98520aa60")],  # stained-tissue
    CONSEP: [("consep-patches-train", f"train_14_{k:03d}", None) for k in range(4)],
}
QUALITY = [
    Row("he", HE, 0.453, "openvino"),
    Row("weaveseg", HE, 0.419, "openvino"),
    Row("frgnet", HE, 0.496, "openvino"),
    Row("fourier-guide", HE, 0.283, "torch"),
    Row("sam-eunet3p", HE, 0.427, "torch"),
    Row("fluo", DSB, 0.737, "openvino"),
    Row("gensegnet", DSB, 0.492, "openvino"),
    Row("cfr-sam", CONSEP, 0.359, "torch", card_type_accuracy=0.868),
]
BASELINE_GAP = 0.05  # the threshold segmenter must stay this far under the bar


def _load(shared, images):
    from nucseg.io.images import read_image, read_label
    from nucseg.labels import class_map_to_instance_classes

    out = []
    for set_name, stem, crop in images:
        src = shared / set_name
        image = read_image(next((src / "images").glob(f"{stem}.*")))
        image = image if image.ndim == 3 else image[..., None]
        image = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]
        labels = read_label(src / "labels" / f"{stem}.png")
        classes = None
        if (src / "types" / f"{stem}.png").is_file():
            classes = class_map_to_instance_classes(labels, read_label(src / "types" / f"{stem}.png"))
        if crop:
            image, labels = image[:crop, :crop], labels[:crop, :crop]
        out.append((stem, image, labels, classes))
    return out


def _runs(row: Row) -> list[tuple[str | None, str | None]]:
    """(runtime, precision) pairs: the default (None, None: OpenVINO in fp32 for exported models) and, for those,
    torch in fp32, whose scores must agree; on a CPU with AMX also the opt-in bf16 (OpenVINO's bf16 kernels)
    against the card."""
    from nucseg.engine.device import cpu_has_amx

    if row.default_runtime == "torch":
        return [(None, None)]
    pair = [(None, None), ("torch", "fp32")]
    return [*pair, ("openvino", "bf16")] if cpu_has_amx() else pair


@pytest.mark.parametrize("row", QUALITY, ids=[r.model for r in QUALITY])
def test_shipped_model_quality(row, shared_data):
    from nucseg.engine.infer import Predictor
    from nucseg.engine.segment import resolve_model
    from nucseg.metrics import aji
    from nucseg.metrics.typed import TypedAccumulator

    images = _load(shared_data, IMAGES[row.images])
    bar = row.card_aji - MARGIN
    baseline = float(np.mean([aji(t, threshold_baseline(im)) for _, im, t, _ in images]))
    assert baseline < bar - BASELINE_GAP, f"the bar {bar:.3f} does not rule out a threshold segmenter ({baseline:.3f})"
    scores = {}
    for runtime, precision in _runs(row):
        predictor = Predictor.from_checkpoint(resolve_model(row.model), runtime=runtime, precision=precision)
        assert predictor.runtime == (runtime or row.default_runtime)
        assert precision is not None or predictor.precision == "fp32"  # the default, on AMX CPUs too
        typed = TypedAccumulator([1, 2, 3, 4]) if row.card_type_accuracy is not None else None
        ajis, true_classes, predicted = [], [], set()
        for stem, image, truth, classes in images:
            inst = predictor.segment(image)
            ajis.append(aji(truth, inst.labels))
            if typed is not None:
                assert classes and inst.classes, f"{row.model} gave no classes on {stem}"
                typed.add(stem, truth, classes, inst.labels, inst.classes)
                true_classes += list(classes.values())
                predicted |= set(inst.classes.values())
        key = f"{predictor.runtime} {predictor.precision}" if precision else "default"
        scores[key] = float(np.mean(ajis))
        assert scores[key] >= bar, f"{row.model} ({key}): AJI {scores[key]:.4f} < {bar:.3f} (card {row.card_aji} - {MARGIN})"
        if typed is not None:
            accuracy = typed.aggregate()["acc_type"]
            majority = majority_class_accuracy(dict(enumerate(true_classes)))
            assert len(predicted) > 1, f"{row.model} names every nucleus {predicted}"
            assert accuracy >= row.card_type_accuracy - MARGIN and accuracy > majority + BASELINE_GAP, (
                f"{row.model}: type accuracy {accuracy:.3f} (card {row.card_type_accuracy}, majority {majority:.3f})")
    if "torch fp32" in scores:  # the default (OpenVINO, fp32) against torch
        assert abs(scores["default"] - scores["torch fp32"]) < 0.005, scores


def test_model_card_lists_the_quality_values():
    """The card and the table say the same numbers, so a better model moves both."""
    from nucseg.engine.segment import WEIGHTS

    card = (WEIGHTS / "MODEL_CARD.md").read_text()
    section = card[card.index("## Quality tests"):]
    for row in QUALITY:
        line = next((line for line in section.splitlines() if line.startswith(f"| `{row.model}` |")), None)
        assert line is not None, f"no Quality tests row for {row.model}"
        assert f"| {row.card_aji:.3f} |" in line, line
        if row.card_type_accuracy is not None:
            assert f"| {row.card_type_accuracy:.3f} |" in line, line
