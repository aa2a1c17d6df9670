"""The `nucseg` command line: data convert, train, tune, export, segment, segment-slide, evaluate, compare, models.

Heavy imports (torch) happen inside the subcommands that need them, so `evaluate` and `data convert` start fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _cmd_train(args: argparse.Namespace) -> int:
    from nucseg.engine.config import load_config
    from nucseg.engine.train import train

    if args.resume:
        run_dir = Path(args.resume)
        cfg_path = run_dir / "config.yaml"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{cfg_path}: no config.yaml to resume from")
        cfg = load_config(cfg_path, args.set)
        result = train(cfg, run_dir, resume=True)
    else:
        if args.config is None:
            raise ValueError("give a CONFIG.yaml (or --resume RUN_DIR)")
        cfg = load_config(args.config, args.set)
        out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
        result = train(cfg, out, resume=False)
    print({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items() if "/" not in k})
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from nucseg.engine.tune import tune_postprocess

    tune_postprocess(args.run, args.metric)
    print(f"wrote {Path(args.run) / 'tuned.ckpt'} (used by --model {args.run} from now on)")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from nucseg.engine.tune import export_checkpoint

    if args.dst is None:  # the graph of an existing deployable file, beside it
        if not args.graph or args.set or args.fp16:
            raise ValueError("give OUT.pt (or only --graph, to export the graph of SRC.pt beside it)")
        dst = Path(args.src)
    else:
        dst = export_checkpoint(args.src, args.dst, args.set, fp16=args.fp16)
        print(f"wrote {dst}")
    if args.graph:
        from nucseg.engine.runtime import export_graph

        bundle = export_graph(dst)
        print(f"wrote {bundle}, {bundle.with_suffix('.xml').name} and {bundle.with_suffix('.bin').name} (torch-free "
              "inference, checked against torch)")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from nucseg.engine.segment import AUTO, SHIPPED, WEIGHTS
    from nucseg.models import describe, list_models

    print("shipped models (nucseg segment --model NAME; nucseg/weights/MODEL_CARD.md):")
    print(f"  {AUTO:16s} he or fluo, chosen per image (the default)")
    for name, file in SHIPPED.items():
        path = WEIGHTS / file
        size = f"{path.stat().st_size / 1e6:.1f} MB" if path.is_file() else "missing from this installation"
        print(f"  {name:16s} {file} ({size})")
    print("architectures (model registry, for configs):")
    for name in list_models():
        print(f"  {name:16s} {describe(name)}")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from nucseg.data.convert import convert

    info = convert(args.format, args.src, args.dst, progress=True)
    print(f"wrote {info['images']} images to {args.dst} (classes: {info['classes'] or 'none'})")
    for note in info["warnings"]:
        print(f"nucseg: warning: {note['file']}: {note['warning']}", file=sys.stderr)
    for skip in info["skipped"]:
        print(f"nucseg: error: {skip['file']}: {skip['problem']} (skipped)", file=sys.stderr)
    if info["skipped"]:
        print(f"nucseg: {len(info['skipped'])} source file(s) skipped; {args.dst}/dataset.json lists them",
              file=sys.stderr)
    return 1 if info["skipped"] else 0


def _cmd_formats(args: argparse.Namespace) -> int:
    from nucseg.data.readers import DESCRIPTIONS

    for name, text in sorted(DESCRIPTIONS.items()):
        print(f"{name:10s} {text}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from nucseg.metrics.evaluate import evaluate_folders, format_table, write_results

    result = evaluate_folders(args.true, args.pred, args.true_types, args.pred_types, args.tissue,
                              allow_missing=args.allow_missing, radius=args.radius,
                              progress=sys.stderr.isatty())  # a bar only where someone watches: tqdm is 0.06 s
    print(format_table(result))
    for key in ("bpq", "mpq", "mpq_plus", "f1_det_typed", "acc_type"):
        if key in result:
            print(f"{key}: {result[key]:.4f}")
    write_results(result, args.out, args.csv)
    if args.out:
        print(f"wrote {args.out}")
    return 0


def _cmd_segment(args: argparse.Namespace) -> int:
    from nucseg.engine.segment import segment_files

    outputs = tuple(o.strip() for o in args.outputs.split(",") if o.strip())
    outputs = tuple("overlay" if o == "overlays" else o for o in outputs)
    report = segment_files(args.inputs, args.out, args.model, outputs, args.mpp, args.batch_size, args.threads,
                           args.tta, precision=args.precision, checkpoint=args.checkpoint, runtime=args.runtime)
    if report.rows:
        width = max(len(r["image"]) for r in report.rows)
        mwidth = max(len(r["model"]) for r in report.rows + [{"model": "model"}])
        print(f"{'image':{width}s}  {'size':>11s}  {'model':>{mwidth}s}  {'nuclei':>7s}  {'seconds':>7s}")
        for r in report.rows:
            print(f"{r['image']:{width}s}  {r['size']:>11s}  {r['model']:>{mwidth}s}  {r['nuclei']:7d}  "
                  f"{r['seconds']:7.2f}")
    print(f"{len(report.rows)} image(s) segmented into {args.out}/ ({', '.join(outputs)})")
    for path, problem in report.failed:
        print(f"nucseg: error: {path}: {problem}", file=sys.stderr)
    return 1 if report.failed else 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from nucseg.engine.compare import ImageSet, compare, protocol_sets, write_report

    out = Path(args.out)
    if args.protocol:
        if args.images or args.labels or args.types:
            raise ValueError("give --protocol or --images/--labels, not both")
        sets, val_ids, config, root = protocol_sets(args.protocol, out)
        try:
            shown = Path(config).resolve().relative_to(Path.cwd())
        except ValueError:
            shown = config
        title = f"nucseg compare on the validation split of {shown}"
    else:
        if not (args.images and args.labels):
            raise ValueError("give --images DIR and --labels DIR (and --types DIR), or --protocol NAME")
        for flag, folder in (("--images", args.images), ("--labels", args.labels), ("--types", args.types)):
            if folder and not Path(folder).is_dir():
                raise FileNotFoundError(f"{folder}: {flag} folder not found")
        sets = [ImageSet(Path(args.images).name or "images", Path(args.images), Path(args.labels),
                         Path(args.types) if args.types else None)]
        val_ids, root, title = None, "", f"nucseg compare on {args.images}"
    results = compare(args.models, sets, out, val_ids, root, args.mpp, args.tta, args.precision, args.runtime,
                      args.threads)
    paths = write_report(results, sets, out, title)
    print(paths[0].read_text())
    print("wrote " + ", ".join(str(p) for p in paths))
    failed = [r for r in results if r.error]
    for r in failed:
        print(f"nucseg: error: model {r.model}: {r.error}", file=sys.stderr)
    return 1 if failed else 0


def _cmd_segment_slide(args: argparse.Namespace) -> int:
    from nucseg.engine.slide import segment_slides

    reports = segment_slides(args.slides, args.out, args.model, args.mpp, args.tile, args.margin, args.batch_size,
                             args.post_workers, args.workers, args.scheduler, not args.no_tissue_mask, args.runtime,
                             args.threads, args.restart)
    failed = 0
    for r in reports:
        if not r.out:
            failed += 1
            print(f"nucseg: error: {r.slide}: {r.message}", file=sys.stderr)
            continue
        resumed = f", {r.resumed_tiles} from an earlier run" if r.resumed_tiles else ""
        print(f"{Path(r.slide).name}: {r.nuclei} nuclei from {r.tissue_tiles} tissue tiles of {r.tiles}{resumed} "
              f"in {r.seconds:.1f} s (writing {r.assemble_seconds:.1f} s) -> {r.out}/")
        if r.message:
            print(f"  {r.message}")
        for problem in r.failed_tiles:
            print(f"nucseg: warning: {r.slide}: {problem}", file=sys.stderr)
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    import nucseg

    parser = argparse.ArgumentParser(prog="nucseg", description="Nuclei instance segmentation and classification.")
    parser.add_argument("--version", action="version", version=f"nucseg {nucseg.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a method from a YAML config")
    p.add_argument("config", nargs="?", help="CONFIG.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.add_argument("--out", help="run directory (default runs/<config name>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last.ckpt")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("tune", help="choose post-processing thresholds on a run's validation split")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--metric", default="aji", choices=["aji", "pq", "aji_pq"],
                   help="objective: mean AJI, PQ, or their mean (aji_pq weighs precision: fragments cost PQ)")
    p.set_defaults(func=_cmd_tune)

    p = sub.add_parser("export", help="write a deployable checkpoint (weights + config) from a run or checkpoint")
    p.add_argument("src", metavar="RUN_DIR|CKPT")
    p.add_argument("dst", metavar="OUT.pt", nargs="?", help="omitted with --graph: the graph of SRC.pt, beside it")
    p.add_argument("--set", action="append", default=[], metavar="infer.KEY=VALUE",
                   help="record an inference setting with the model (e.g. infer.mpp=0.25, or a model key that "
                   "leaves the weights as they are: model.sam_chunk=512 for sam-eunet3p)")
    p.add_argument("--fp16", action="store_true", help="store weights at half precision (half the file size)")
    p.add_argument("--graph", action="store_true", help="also write the network as an OpenVINO graph with its "
                   "config beside OUT.pt (OUT.xml/.bin/.json): segment then runs without torch")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("segment", help="segment images with a trained model (default: the shipped one)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders (png/jpg/tif)")
    p.add_argument("--model", help="auto (default: the shipped H&E or fluorescence model, chosen per image), a "
                   "shipped model (he, fluo, weaveseg, fourier-guide, frgnet), a run directory, a checkpoint (.ckpt/.pt), or a method name "
                   "with --checkpoint")
    p.add_argument("--checkpoint", help="trained weights for --model NAME (e.g. --model weaveseg --checkpoint best.ckpt)")
    p.add_argument("--runtime", choices=["auto", "torch", "openvino"], default=None,
                   help="forward pass: auto (OpenVINO on the CPU in fp32 when installed, else torch; the model's "
                   "infer.runtime), torch, or openvino")
    p.add_argument("--out", default="nucseg-output", help="output folder (default nucseg-output)")
    p.add_argument("--outputs", default="labels,overlay,geojson,csv", help="comma-separated: labels,overlay,geojson,csv")
    p.add_argument("--mpp", type=float, help="microns per pixel of the inputs: CSV/GeoJSON measurements in µm, and images are "
                   "resampled to the model's resolution when the model records one (infer.mpp)")
    p.add_argument("--batch-size", type=int, help="windows per forward pass")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all)")
    p.add_argument("--tta", action="store_true", help="average over flips (slower, slightly more accurate)")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                   help="auto: bf16 on CUDA, fp32 on CPUs (bf16 there is faster on CPUs with AMX but cost H&E PQ 0.006)")
    p.set_defaults(func=_cmd_segment)

    p = sub.add_parser("segment-slide", help="segment whole slides tile by tile (resumable; Dask with --workers)")
    p.add_argument("slides", nargs="+", metavar="SLIDE", help="svs/ndpi/mrxs/scn, (OME-)TIFF, OME-Zarr or image files")
    p.add_argument("--model", help="as for segment: auto (default), a shipped name, a run directory or checkpoint")
    p.add_argument("--out", default="nucseg-slides", help="output folder; each slide writes OUT/<stem>/")
    p.add_argument("--mpp", type=float, help="microns per level-0 pixel, overriding the file's metadata")
    p.add_argument("--tile", type=int, help="pixels per forward pass at the model's resolution, a multiple of 32 "
                   "(default: the model's window, 1024, shrunk to divide the slide evenly); memory grows with tile² × "
                   "batch size")
    p.add_argument("--margin", type=int, help="context pixels on each side of a tile's core (default: the model's "
                   "infer.block_margin, 64); wider than a nucleus")
    p.add_argument("--batch-size", type=int, default=1, help="tiles per forward pass (GPUs like more)")
    p.add_argument("--post-workers", type=int, help="post-processing processes (default: one thread on 2 cores or fewer, else cores - 1 "
                   "processes; 0 = inline)")
    p.add_argument("--workers", type=int, default=0, help="start a local Dask cluster of N worker processes")
    p.add_argument("--scheduler", help="join a running Dask cluster at ADDRESS (tcp://host:8786)")
    p.add_argument("--no-tissue-mask", action="store_true", help="read every tile, background included")
    p.add_argument("--restart", action="store_true", help="discard the tiles an earlier run of this job recorded")
    p.add_argument("--runtime", choices=["auto", "torch", "openvino"], default=None, help="forward pass, as for segment")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for the forward pass (0 = all)")
    p.set_defaults(func=_cmd_segment_slide)

    p = sub.add_parser("compare", help="segment labelled images with several models and score them side by side")
    p.add_argument("models", nargs="+", metavar="MODEL", help="shipped names, run directories or checkpoints")
    p.add_argument("--images", help="folder of images")
    p.add_argument("--labels", help="folder of true instance maps, same stems")
    p.add_argument("--types", help="folder of true per-pixel class maps (typed metrics for models that classify)")
    p.add_argument("--protocol", help="score on a protocol's validation split instead (he-cpu, fluo-cpu, or a "
                   "config file's path)")
    p.add_argument("--out", default="nucseg-compare", help="output folder: compare.md, compare.csv, compare.png, "
                   "and each model's label maps (default nucseg-compare)")
    p.add_argument("--mpp", type=float, help="microns per pixel of the images, as for segment")
    p.add_argument("--tta", action="store_true", help="average over flips")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    p.add_argument("--runtime", choices=["auto", "torch", "openvino"], default=None, help="forward pass, as for segment")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all)")
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("evaluate", help="score predicted label maps against ground truth")
    p.add_argument("--true", required=True, help="folder of true instance maps (png/tif/npy/mat)")
    p.add_argument("--pred", required=True, help="folder of predicted instance maps, same stems")
    p.add_argument("--true-types", help="folder of true per-pixel class maps")
    p.add_argument("--pred-types", help="folder of predicted per-pixel class maps")
    p.add_argument("--tissue", help="CSV or JSON: stem -> tissue (PanNuke mPQ averages over tissues)")
    p.add_argument("--out", help="write the full results as JSON")
    p.add_argument("--csv", help="write per-image rows as CSV")
    p.add_argument("--radius", type=float, default=12.0, help="centroid pairing radius in pixels (default 12)")
    p.add_argument("--allow-missing", action="store_true", help="score a missing prediction as empty")
    p.set_defaults(func=_cmd_evaluate)

    data = sub.add_parser("data", help="data utilities").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("convert", help="convert an annotation format to the canonical layout")
    p.add_argument("--format", required=True, help="source format (see `nucseg data formats`)")
    p.add_argument("src")
    p.add_argument("dst")
    p.set_defaults(func=_cmd_convert)
    p = data.add_parser("formats", help="list the annotation formats")
    p.set_defaults(func=_cmd_formats)

    p = sub.add_parser("models", help="list the shipped models and the registered architectures")
    p.set_defaults(func=_cmd_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.func in (_cmd_segment, _cmd_segment_slide, _cmd_compare):
        from nucseg.engine.device import passive_omp_wait

        passive_omp_wait()
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"nucseg: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
