"""Seconds per 256² chunk of the frozen SAM image encoder (LiteMedSAM's TinyViT) under each inference lever, and per
1000² tile at each `sam_chunk`, in one process on the same inputs, levers alternating round by round.

    python benchmarks/sam_encoder.py [--threads 2] [--rounds 5] [--variant litemedsam]

Levers (each row adds to the one above): the encoder as trained (eager, contiguous), BatchNorm folded, channels_last,
OpenVINO (the export `nucseg.models.sam` caches). A 1000² tile needs 16 chunks of 256² (`sam_chunk: 256`) or 4 of 512²
(`sam_chunk: 512`, each resized to the encoder's 256² input, the fusion paper's 20× scale).
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--variant", default="litemedsam")
    args = ap.parse_args()

    import torch

    from nucseg.engine.device import configure_malloc
    from nucseg.models.fusion import fold_batchnorm
    from nucseg.models.sam import SamBackbone, _encode

    configure_malloc()
    torch.set_num_threads(args.threads)
    sam = SamBackbone(args.variant, runtime="openvino").eval()
    x = torch.rand(1, 3, sam.input_size, sam.input_size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    folded = fold_batchnorm(sam.image_encoder)
    folded_last = fold_batchnorm(sam.image_encoder).to(memory_format=torch.channels_last)
    with torch.no_grad():
        openvino = sam.inference_encoder(x)
    if not hasattr(openvino, "graph"):
        raise SystemExit("the OpenVINO export failed (see the warning above)")
    levers = {
        "eager, as trained": lambda: _encode(sam.image_encoder, sam.variant, (), x),
        "+ BatchNorm folded": lambda: _encode(folded, sam.variant, (), x),
        "+ channels_last": lambda: _encode(folded_last, sam.variant, (),
                                           x.contiguous(memory_format=torch.channels_last)),
        "+ OpenVINO": lambda: openvino(x),
    }
    times: dict[str, list[float]] = {name: [] for name in levers}
    with torch.no_grad():
        for run in levers.values():  # warm-up
            run()
        for _ in range(args.rounds):
            for name, run in levers.items():
                t0 = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["eager, as trained"])
    print(f"SAM encoder ({args.variant}), one {sam.input_size}² chunk, {args.threads} threads, "
          f"median of {args.rounds} alternating rounds")
    print("| lever | s per chunk | vs eager | s per 1000² tile, sam_chunk 256 (16 chunks) | sam_chunk 512 (4) |")
    print("|---|---:|---:|---:|---:|")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"| {name} | {m:.3f} | {base / m:.2f}× | {16 * m:.1f} | {4 * m:.1f} |")


if __name__ == "__main__":
    main()
