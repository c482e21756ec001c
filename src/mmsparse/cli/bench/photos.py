"""``mmsparse bench photos``: photos added to a served index under load."""

from __future__ import annotations

import argparse

from mmsparse.cli.common import print_json


def register(bench_sub: argparse._SubParsersAction) -> None:
    """Add ``mmsparse bench photos`` to ``bench_sub``."""
    p = bench_sub.add_parser(
        "photos",
        help="index add of photos while 'mmsparse serve' answers concurrent clients",
        description="Index a folder of photos (default: N of the Flickr8k val JPEGs), serve "
        "it, and while concurrent clients search it, copy new photos into a subfolder and "
        "add them with 'mmsparse index add'. Reports failed requests and latency before, "
        "during and after the add, and whether the added photos are found by their own "
        "captions (docs/photos.md#keep-it-live).",
    )
    p.add_argument("run_dir", help="a trained run whose backbone encodes photos")
    p.add_argument("--images", help="folder of photos (default: $MMSPARSE_FLICKR8K/images)")
    p.add_argument(
        "--captions",
        help="their captions, the queries (default: $MMSPARSE_FLICKR8K/dataset_meta.json)",
    )
    p.add_argument("--n-base", type=int, default=900, help="photos indexed first (900)")
    p.add_argument("--n-add", type=int, default=100, help="photos added under load (100)")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients (8)")
    p.add_argument("--k", type=int, default=10, help="k of every search (10)")
    p.add_argument(
        "--phase-seconds",
        type=float,
        default=20.0,
        help="seconds of load before the add and after the switch (20)",
    )
    p.add_argument("--engine", default="inverted", help="index engine (inverted)")
    p.add_argument("--device", default="cpu", help="device of the encoders")
    p.add_argument("--batch-size", type=int, default=64, help="photos per forward pass (64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and the queries")
    p.add_argument("--work", help="keep the photos, index and server log in this folder")
    p.add_argument("--out", default="benchmarks/photos.json", help="results JSON")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=cmd_bench_photos)


def cmd_bench_photos(args: argparse.Namespace) -> int:
    """Run ``mmsparse bench photos``."""
    from mmsparse.bench.photos import bench_photos, report_table

    report = bench_photos(
        args.run_dir,
        images=args.images,
        captions=args.captions,
        n_base=args.n_base,
        n_add=args.n_add,
        clients=args.clients,
        k=args.k,
        phase_s=args.phase_seconds,
        engine=args.engine,
        device=args.device,
        batch_size=args.batch_size,
        seed=args.seed,
        work=args.work,
        out=args.out,
        progress=not args.json,
    )
    if args.json:
        print_json(report)
    else:
        print(report_table(report))
        print(f"results written to {args.out}")
    return 0
