"""``mmsparse extract`` (features and backbone bundles)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    """Add the extraction subcommands to ``sub``."""
    from mmsparse.extract.backends import BACKENDS

    p = sub.add_parser(
        "extract",
        help="extract features from images and captions, or write a backbone bundle",
        description="Encode a folder of images and a caption file with a frozen backbone into "
        "the paper's release format (parquet features + dataset_meta.json + bundle/). "
        "With --bundle-only, write only the backbone bundle to --out.",
    )
    p.add_argument("--backend", required=True, choices=sorted(BACKENDS), help="the encoders")
    p.add_argument(
        "--out", required=True, help="output directory (the bundle dir with --bundle-only)"
    )
    p.add_argument(
        "--bundle-only", action="store_true", required=True, help="write only the backbone bundle"
    )
    p.add_argument("--model", metavar="PATH", help="local weights directory (blip, clip)")
    p.add_argument("--max-length", type=int, help="caption length in tokens (backend default)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=cmd_extract)


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def cmd_extract(args: argparse.Namespace) -> int:
    """Run ``mmsparse extract``."""
    from mmsparse.extract.bundle import build_bundle

    bundle = build_bundle(
        args.backend, args.out, device=args.device, model=args.model, max_length=args.max_length
    )
    summary = {
        "bundle": str(bundle.path),
        "backend": args.backend,
        "vocab_size": bundle.vocab_size,
        "d_word": bundle.d_word,
        "projections": sorted(bundle.projections),
    }
    if args.json:
        _print_json(summary)
    else:
        print(
            f"bundle of {args.backend} written to {bundle.path}: {bundle.vocab_size} terms, "
            f"word embeddings {bundle.vocab_size} x {bundle.d_word}, "
            f"projections: {', '.join(sorted(bundle.projections)) or 'none'}"
        )
    return 0
