"""Post-processing thresholds chosen on the validation split (as StarDist's `optimize_thresholds`).

The dense maps of every validation image are computed once; a coordinate search then tries each value of each
tunable option (the method's `tunable` dict) while holding the others, keeping the best mean score, until no change
helps. The score is the mean over validation sets of each set's mean AJI (so a set with many small images does not
outweigh one with a few large ones). Never run this on a test set.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from nucseg.data.dataset import validation_samples
from nucseg.engine.checkpoints import build_from_checkpoint, load_checkpoint, save_checkpoint
from nucseg.engine.device import configure_malloc
from nucseg.engine.infer import Predictor
from nucseg.metrics import aji, compute_overlap, pq

METRICS = ("aji", "pq", "aji_pq")


def _image_score(truth, labels, metric: str) -> float:
    """AJI; PQ; or aji_pq, the mean of the two: PQ counts every spurious or split nucleus as a false positive,
    so it pulls the thresholds towards precision where AJI alone tolerates small fragments."""
    ov = compute_overlap(truth, labels)
    if metric == "aji":
        return aji(ov)
    if metric == "pq":
        return pq(ov)["pq"]
    return 0.5 * (aji(ov) + pq(ov)["pq"])


def _score(method, cached, metric: str) -> float:
    per_set = [np.mean([_image_score(truth, method.postprocess(dense).labels, metric) for truth, dense in items])
               for items in cached.values()]
    return float(np.mean(per_set))


def tune_postprocess(run: str | Path, metric: str = "aji", rounds: int = 2, log=print) -> dict:
    """Tune the run's best checkpoint; writes RUN/tuned.ckpt and returns {"before", "after", "params"}."""
    if metric not in METRICS:
        raise ValueError(f"unknown tuning metric '{metric}' (known: {', '.join(METRICS)})")
    configure_malloc()
    run = Path(run)
    source = run / "best.ckpt" if (run / "best.ckpt").is_file() else run
    method, model, cfg = build_from_checkpoint(source)
    predictor = Predictor.for_run(method, model, cfg)
    val = validation_samples(cfg.data)
    if not val:
        raise ValueError(f"{run}: the run's config has no validation images to tune on")
    cached = {name: [(s.instances, predictor.dense(s.image)) for s in samples] for name, samples in val.items()}
    best = before = _score(method, cached, metric)
    log(f"{metric} before tuning: {before:.4f}")
    for _ in range(rounds):
        changed = False
        for key, values in method.tunable.items():
            current = getattr(method.config, key)
            for v in values:
                if v == current:
                    continue
                setattr(method.config, key, v)
                s = _score(method, cached, metric)
                if s > best + 1e-5:
                    best, current, changed = s, v, True
                    log(f"  {key}={v}: {metric} {s:.4f}")
            setattr(method.config, key, current)
        if not changed:
            break
    params = {k: getattr(method.config, k) for k in method.tunable}
    cfg.model = dataclasses.asdict(method.config)
    ckpt = load_checkpoint(source)
    model_state = {k: v for k, v in ckpt["model"].items()}
    model.load_state_dict(model_state)
    save_checkpoint(run / "tuned.ckpt", model, cfg, step=ckpt.get("step", -1),
                    tuning={"metric": metric, "before": before, "after": best})
    log(f"{metric} after tuning: {best:.4f}  ({params})")
    return {"before": before, "after": best, "params": params}


def export_checkpoint(src: str | Path, dst: str | Path, overrides: list[str] | None = None, fp16: bool = False) -> Path:
    """A deployable file: weights and resolved config only (no optimizer state). `overrides` (`infer.mpp=0.25`,
    or a model key the method lists as weight-free: `model.sam_chunk=512`) change inference settings recorded with
    the model; `fp16` halves the file (weights stored at half precision)."""
    method, model, cfg = build_from_checkpoint(src)
    if overrides:
        from omegaconf import OmegaConf

        allowed = {f"model.{k}" for k in (*method.inference_options, *method.tunable)}
        bad = [o for o in overrides if not o.startswith("infer.") and o.split("=", 1)[0].strip() not in allowed]
        if bad:
            extra = f" or {', '.join(sorted(allowed))}" if allowed else ""
            raise ValueError(f"export can only change infer.* settings{extra}, not {', '.join(bad)}")
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cfg), OmegaConf.from_dotlist(overrides)))
    ckpt = load_checkpoint(src)
    extra = {k: ckpt[k] for k in ("step", "scores", "tuning") if k in ckpt}
    return save_checkpoint(dst, model, cfg, fp16=fp16, leave_out=method.training_only, **extra)
