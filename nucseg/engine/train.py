"""The training loop every method runs through (single process, or DDP under `torchrun`).

Data sampling is a pure function of (seed, sample index), the learning rate a pure function of the step, so
`--resume` continues exactly where a run stopped. Rank 0 validates (whole images, sliding-window inference, the
method's post-processing, nucseg.metrics), logs and writes checkpoints.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

import nucseg
from nucseg.data.dataset import PatchDataset, resolve_class_names, validation_samples
from nucseg.engine.checkpoints import init_weights, load_checkpoint, save_checkpoint
from nucseg.engine.config import RunConfig, config_to_yaml, optimizer_settings
from nucseg.engine.device import autocast, configure_malloc, resolve_precision, select_device, set_threads
from nucseg.engine.infer import INPUT_SCALES, Predictor, normalize
from nucseg.io.images import atomic_path, write_text
from nucseg.methods import Stage, get_method
from nucseg.metrics import aji, compute_overlap, dice, pq
from nucseg.metrics.typed import TypedAccumulator, nanmean


def lr_at(step: int, cfg, total_steps: int) -> float:
    """Learning rate at `step` (0-based) of `total_steps`, for the schedules the papers use, with linear warm-up."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "linear":
        start = int(cfg.decay_from * total_steps)
        t = min(max(step - start, 0) / max(total_steps - start, 1), 1.0)
        return cfg.lr * (1 - (1 - cfg.min_lr_ratio) * t)
    if cfg.schedule == "step":
        return cfg.lr * cfg.gamma ** (step // max(cfg.step_size, 1))
    if cfg.schedule == "multistep":
        return cfg.lr * cfg.gamma ** sum(step >= m for m in cfg.milestones)
    if cfg.schedule == "cosine":
        total = max(total_steps - cfg.warmup_steps, 1)
        t = min(max(step - cfg.warmup_steps, 0) / total, 1.0)
        return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))
    raise ValueError(f"unknown schedule '{cfg.schedule}'")


class _StepSampler(torch.utils.data.Sampler):
    """Indices for this rank from `start_step` on: step s, rank r takes [s·B·W + r·B, s·B·W + (r+1)·B)."""

    def __init__(self, start_step: int, steps: int, batch: int, rank: int, world: int):
        self.start, self.steps, self.batch, self.rank, self.world = start_step, steps, batch, rank, world

    def __iter__(self):
        for s in range(self.start, self.steps):
            base = s * self.batch * self.world + self.rank * self.batch
            yield from range(base, base + self.batch)

    def __len__(self) -> int:
        return (self.steps - self.start) * self.batch


def stage_plan(method, cfg: RunConfig) -> list[tuple[Stage, int, int]]:
    """(stage, first step, end step) for each of the method's stages, in order; a one-stage method runs
    `train.steps`, a staged one `train.stage_steps` of each stage. A stage the method lacks may be given 0 steps,
    so that an ablation turning a stage off (GeNSeg-Net without its generator) runs from the full config with
    `--set train.stage_steps.enhance=0`: OmegaConf overrides merge into the config's mapping, they cannot drop a key."""
    stages = method.stages()
    if len(stages) == 1 and not cfg.train.stage_steps:
        return [(stages[0], 0, cfg.train.steps)]
    names = [s.name for s in stages]
    given = {name: steps for name, steps in dict(cfg.train.stage_steps).items() if name in names or int(steps) != 0}
    if set(given) != set(names):
        raise ValueError(f"train.stage_steps must give the steps of each stage of method '{cfg.method}': {names} "
                         f"(got {sorted(given) or 'none'})")
    plan, start = [], 0
    for stage in stages:
        plan.append((stage, start, start + int(given[stage.name])))
        start += int(given[stage.name])
    return plan


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model  # DistributedDataParallel


def enter_stage(model: torch.nn.Module, optimizers: dict, stage: Stage) -> None:
    """Train only what the stage's optimisers hold; a top-level part of the model with none of those parameters
    (a frozen encoder, the finished generator) runs in inference mode, so its BatchNorm statistics stay as trained."""
    active = {id(p) for name in stage.optimizers for g in optimizers[name].param_groups for p in g["params"]}
    for opt in optimizers.values():
        for g in opt.param_groups:
            for p in g["params"]:
                p.requires_grad_(id(p) in active)
    model.train()
    for child in model.children():
        params = list(child.parameters())
        if params and not any(id(p) in active for p in params):
            child.eval()


def validate(method, model, cfg: RunConfig, val_sets, device, precision) -> dict[str, float]:
    """Mean AJI / PQ / Dice per validation set and over all images; for a model that classifies, on the sets that
    carry nucleus types, also PanNuke's mPQ per set and over those sets' images, and `aji_mpq`, their mean with AJI
    (a checkpoint chosen by AJI alone can be one whose type head has barely learnt)."""
    # torch: the weights change between validations, so an exported runtime would be rebuilt each time
    predictor = Predictor.for_run(method, model, cfg, device, precision, runtime="torch")
    class_ids = sorted(int(k) for k in dict(cfg.data.class_names))
    rows, typed_rows = [], []
    out: dict[str, float] = {}
    for name, samples in val_sets.items():
        set_rows = []
        typed = TypedAccumulator(class_ids) if class_ids else None
        for s in samples:
            inst = predictor.segment(s.image)
            ov = compute_overlap(s.instances, inst.labels)
            set_rows.append({"aji": aji(ov), "pq": pq(ov)["pq"], "dice": dice(ov)})
            if typed is not None and s.classes and inst.classes:
                typed_rows.append(typed.add(str(s.id), s.instances, s.classes, inst.labels, inst.classes))
        for k in ("aji", "pq", "dice"):
            out[f"{name}/{k}"] = float(np.mean([r[k] for r in set_rows]))
        if typed is not None and typed.per_image:
            out[f"{name}/mpq"] = typed.aggregate()["mpq"]
        rows += set_rows
    for k in ("aji", "pq", "dice"):
        out[k] = float(np.mean([r[k] for r in rows])) if rows else float("nan")
    if typed_rows:
        out["mpq"] = nanmean([r["mpq"] for r in typed_rows])
        out["aji_mpq"] = (out["aji"] + out["mpq"]) / 2
    return out


SELECT_METRICS = ("aji", "pq", "dice", "mpq", "aji_mpq")


def _check_select_metric(cfg: RunConfig, method) -> None:
    """Fail before training, not at the first validation, on a selection metric the run cannot compute."""
    metric = cfg.train.select_metric
    if metric not in SELECT_METRICS:
        raise ValueError(f"train.select_metric={metric}: choose one of {', '.join(SELECT_METRICS)}")
    if metric in ("mpq", "aji_mpq") and not (method.targets_use_classes and cfg.data.class_names):
        raise ValueError(f"train.select_metric={metric} scores nucleus types: it needs a method that predicts them "
                         f"(method '{cfg.method}' here{'' if method.targets_use_classes else ' does not'}) and class "
                         "names (data.class_names or a set's dataset.json)")


def _drop_rows_after(path: Path, step: int) -> float:
    """On resume: drop the rows a killed run logged after its last checkpoint (the resumed run logs those steps
    again). Returns the last kept row's `seconds` (0 if none), so a resumed run's clock goes on from there."""
    if not path.exists():
        return 0.0
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames or [], [r for r in reader if int(r["step"]) <= step]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return float(rows[-1].get("seconds") or 0.0) if rows else 0.0


def _append_csv(path: Path, row: dict) -> None:
    """Append a row; a row with new columns (the next stage's losses) rewrites the file with the wider header."""
    fields = []
    if path.exists():
        with open(path, newline="") as f:
            fields = next(csv.reader(f), [])
    if path.exists() and not set(row) <= set(fields):
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        fields += [k for k in row if k not in fields]
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields if not new else list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def _training_free(method, model, cfg: RunConfig, out_dir: Path, device, precision, rank: int) -> dict:
    """A method without weights (the Fourier guide): no steps; the run directory gets its config, one validation
    and the checkpoints, so `tune`, `export` and `segment` treat it as any other run."""
    scores = {}
    if rank == 0:
        write_text(out_dir / "config.yaml", f"# nucseg {nucseg.__version__}\n" + config_to_yaml(cfg))
        if cfg.train.val_every > 0:
            scores = validate(method, model, cfg, validation_samples(cfg.data), device, precision)
            _append_csv(out_dir / "val.csv", {"step": 0, **{k: round(v, 5) for k, v in scores.items()}})
        for name in ("best.ckpt", "last.ckpt"):
            save_checkpoint(out_dir / name, model, cfg, step=0, scores=scores, best=scores.get(
                cfg.train.select_metric, float("nan")), best_step=0)
    return {"best": scores.get(cfg.train.select_metric, float("nan")), "best_step": 0, "step": 0, **scores}


def train(cfg: RunConfig, out_dir: str | Path, resume: bool = False, progress: bool = True) -> dict:
    """Train `cfg` into `out_dir` (config.yaml, last.ckpt, best.ckpt, train.csv, val.csv). Returns the best scores."""
    configure_malloc()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = select_device(cfg.train.device, int(os.environ.get("LOCAL_RANK", "0")), world)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    set_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed + rank)
    precision = resolve_precision(cfg.train.precision, device, training=True)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    cfg.data.class_names = resolve_class_names(cfg.data)  # the run keeps them: outputs name the classes
    method = get_method(cfg.method)(cfg.model)
    cfg.model = dataclasses.asdict(method.config)  # the run directory keeps the resolved method config
    _check_select_metric(cfg, method)
    model = method.build_model().to(device).to(memory_format=torch.channels_last)
    if not any(p.requires_grad for p in model.parameters()):
        # nothing trains: its one validation is inference, in inference's precision
        return _training_free(method, model, cfg, out_dir, device, resolve_precision(cfg.train.precision, device),
                              rank)
    opt_cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[cfg.optim.name]
    plan = stage_plan(method, cfg)
    cfg.train.steps = plan[-1][2]
    groups = {name: list(params) for name, params in method.optimizer_groups(model).items()}
    known = set(groups) | set(method.optimizer_names)
    for key in ("lr_per_optimizer", "per_optimizer"):
        if unknown := set(getattr(cfg.optim, key)) - known:
            raise ValueError(f"optim.{key} names {sorted(unknown)}: method '{cfg.method}' has the optimisers "
                             f"{sorted(known)}")
    settings = {name: optimizer_settings(cfg.optim, name) for name in groups}
    for name, o in settings.items():
        if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
            raise ValueError(f"optim betas of '{name}': two values in [0, 1), not {list(o.betas)}")
        lr_at(0, o, 1)  # an unknown schedule fails here, before any data is read
    optimizers = {name: opt_cls(params, lr=settings[name].lr, betas=tuple(settings[name].betas),
                                weight_decay=settings[name].weight_decay)
                  for name, params in groups.items()}
    start_step, best, best_step = 0, -math.inf, -1
    if resume and (out_dir / "last.ckpt").is_file():
        ckpt = load_checkpoint(out_dir / "last.ckpt")
        model.load_state_dict(ckpt["model"])
        # checkpoints before several optimisers held one, as "optimizer"
        states = ckpt.get("optimizers") or {"model": ckpt["optimizer"]}
        for name, opt in optimizers.items():
            opt.load_state_dict(states[name])
        start_step, best, best_step = int(ckpt["step"]), float(ckpt["best"]), int(ckpt["best_step"])
    elif cfg.train.init_from:
        loaded, total = init_weights(model, cfg.train.init_from, cfg.train.init_only)
        if rank == 0:
            print(f"init_from {cfg.train.init_from}: {loaded} of {total} tensors loaded")
    if rank == 0:
        write_text(out_dir / "config.yaml", f"# nucseg {nucseg.__version__}\n" + config_to_yaml(cfg))
    ddp_model = model
    if world > 1:  # built while every trained parameter still requires grad, so each one is synchronised
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None,
            find_unused_parameters=len(optimizers) > 1 or len(plan) > 1)

    if cfg.data.input_scale not in INPUT_SCALES:
        raise ValueError(f"data.input_scale '{cfg.data.input_scale}': one of {', '.join(INPUT_SCALES)}")
    if cfg.data.keep_fraction < 1.0 and not method.partial_labels:
        raise ValueError(f"data.keep_fraction {cfg.data.keep_fraction}: method '{cfg.method}' cannot leave "
                         "unannotated nuclei out of its loss (it would learn them as background)")
    total_samples = cfg.train.steps * cfg.train.batch_size * world
    dataset = PatchDataset(cfg.data, method.targets, total_samples, seed=cfg.train.seed,
                           foreground_targets_fn=method.foreground_targets if method.trains_on_masks else None,
                           targets_use_image=method.targets_use_image,
                           targets_use_classes=method.targets_use_classes,
                           image_planes_fn=method.image_planes if method.image_plane_count else None)
    loader = DataLoader(dataset, batch_size=cfg.train.batch_size,
                        sampler=_StepSampler(start_step, cfg.train.steps, cfg.train.batch_size, rank, world),
                        num_workers=cfg.train.workers, persistent_workers=cfg.train.workers > 0)
    val_sets = validation_samples(cfg.data) if rank == 0 and cfg.train.val_every > 0 else {}

    tensorboard = None
    if rank == 0:
        try:  # TensorBoard logs when the package is installed; CSV logs always
            from torch.utils.tensorboard import SummaryWriter

            tensorboard = SummaryWriter(str(out_dir / "tensorboard"))
        except ImportError:
            pass
    bar = None
    if progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=cfg.train.steps, initial=start_step, desc=f"train {cfg.method}", dynamic_ncols=True)
    elapsed = 0.0
    if start_step and rank == 0:
        elapsed = _drop_rows_after(out_dir / "train.csv", start_step)
        _drop_rows_after(out_dir / "val.csv", start_step)
    step, t0 = start_step, time.time() - elapsed
    last_scores: dict = {}
    stage = None
    for batch in loader:
        current, stage_start, stage_end = next(p for p in plan if p[1] <= step < p[2])
        if current != stage:
            stage = current
            enter_stage(model, optimizers, stage)
        lrs = {name: lr_at(step - stage_start, settings[name], stage_end - stage_start) for name in stage.optimizers}
        for name, lr in lrs.items():
            for group in optimizers[name].param_groups:
                group["lr"] = lr
        images = normalize(batch.pop("image").to(device), cfg.data.input_scale)
        if "image_planes" in batch:  # the whole image's side input, as the Predictor appends it at inference
            planes = batch.pop("image_planes").to(device)
            images = torch.cat([images, planes[:, :, None, None].expand(-1, -1, *images.shape[2:])], 1)
        images = images.contiguous(memory_format=torch.channels_last)
        batch = {k: v.to(device) for k, v in batch.items()}
        logged: dict[str, torch.Tensor] = {}
        updates = method.training_step(ddp_model, images, batch, stage.name)
        while True:
            with autocast(device, precision):
                try:
                    name, losses = next(updates)
                except StopIteration:
                    break
            if name not in stage.optimizers:
                raise ValueError(f"method '{cfg.method}' stepped optimiser '{name}' in stage '{stage.name}', which "
                                 f"trains {list(stage.optimizers)}")
            optimizer = optimizers[name]
            optimizer.zero_grad(set_to_none=True)
            losses["total"].backward()
            if cfg.train.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(groups[name], cfg.train.grad_clip)
            optimizer.step()
            # one optimiser: its terms as they are; several: prefixed by the optimiser's name
            logged.update(losses if len(optimizers) == 1 else {f"{name}/{k}": v for k, v in losses.items()})
        step += 1
        if rank == 0:
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k: f"{v.item():.4f}" for k, v in logged.items() if k.endswith("total")})
            if step % cfg.train.log_every == 0 or step == stage_end:
                # the resolved precision: `auto` trains in bf16 on AMX CPUs and GPUs, fp32 elsewhere, and a resumed
                # run may have moved machine, so each row says what it ran in
                row = {"step": step, "stage": stage.name, "seconds": round(time.time() - t0, 2),
                       "precision": precision}
                row.update({f"lr/{k}" if len(lrs) > 1 else "lr": v for k, v in lrs.items()})
                row.update({k: round(float(v.item()), 6) for k, v in logged.items()})
                _append_csv(out_dir / "train.csv", row)
                if tensorboard is not None:
                    for k, v in row.items():
                        if k not in ("step", "seconds", "stage", "precision"):
                            tensorboard.add_scalar(f"train/{k}", v, step)
            at_val_step = cfg.train.val_every > 0 and (step % cfg.train.val_every == 0 or step == cfg.train.steps)
            if at_val_step and not stage.validate and val_sets:  # a stage's own metrics (CFR-SAM's prompt recall)
                model.eval()
                with torch.no_grad():
                    stage_scores = method.stage_validation(_unwrap(model), stage.name, val_sets, device,
                                                           cfg.data.input_scale)
                enter_stage(model, optimizers, stage)
                if stage_scores:
                    _append_csv(out_dir / "val.csv", {"step": step, "stage": stage.name,
                                                      **{k: round(v, 5) for k, v in stage_scores.items()}})
                    if bar is not None:
                        bar.write(f"step {step} ({stage.name}): " + ", ".join(
                            f"{k} {v:.4f}" for k, v in stage_scores.items() if "/" not in k))
            is_val = stage.validate and at_val_step
            if is_val and val_sets:
                scores = validate(method, model, cfg, val_sets, device, precision)
                enter_stage(model, optimizers, stage)
                last_scores = scores
                _append_csv(out_dir / "val.csv", {"step": step, **{k: round(v, 5) for k, v in scores.items()}})
                if tensorboard is not None:
                    for k, v in scores.items():
                        tensorboard.add_scalar(f"val/{k}", v, step)
                if cfg.train.select_metric not in scores:
                    raise ValueError(f"train.select_metric={cfg.train.select_metric}: no validation image carries "
                                     "nucleus types (types/ in a validation set) to score it on")
                if scores[cfg.train.select_metric] > best:
                    best, best_step = scores[cfg.train.select_metric], step
                    save_checkpoint(out_dir / "best.ckpt", model, cfg, step=step, scores=scores)
                if bar is not None:
                    bar.write(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items() if "/" not in k))
            if is_val or step == stage_end or step % max(cfg.train.checkpoint_every, 1) == 0:
                save_checkpoint(out_dir / "last.ckpt", model, cfg,
                                optimizers={k: o.state_dict() for k, o in optimizers.items()}, step=step,
                                best=best, best_step=best_step)
    if bar is not None:
        bar.close()
    if tensorboard is not None:
        tensorboard.close()
    if world > 1:
        dist.barrier()
    if rank == 0 and not (out_dir / "best.ckpt").exists():
        save_checkpoint(out_dir / "best.ckpt", model, cfg, step=step, scores=last_scores)
    return {"best": best, "best_step": best_step, "step": step, **last_scores}
