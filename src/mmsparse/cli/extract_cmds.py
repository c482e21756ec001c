"""``mmsparse extract`` (features and backbone bundles) and ``mmsparse explain``."""

from __future__ import annotations

import argparse

from mmsparse.cli.common import add_deprecated_alias, print_json
from mmsparse.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``extract`` and ``explain`` subcommands to ``sub``."""
    from mmsparse.extract.backends import BACKENDS

    p = sub.add_parser(
        "extract",
        help="extract features from images and captions, or write a backbone bundle",
        description="Encode a folder of images and a caption file (Karpathy JSON, Flickr8k "
        "token.txt, or TSV filename<TAB>caption) with a frozen backbone into the paper's "
        "release format: img_embs_before_proj_*.parquet, text_embs_before_proj_*.parquet, "
        "dataset_meta.json and bundle/. Rerun the same command to resume after a kill. "
        "With --bundle-only, write only the backbone bundle to --out. See docs/extract.md.",
    )
    p.add_argument("--backend", required=True, choices=sorted(BACKENDS), help="the encoders")
    p.add_argument("--out", required=True, help="output directory (the bundle with --bundle-only)")
    p.add_argument("--bundle-only", action="store_true", help="write only the backbone bundle")
    p.add_argument("--images", metavar="DIR", help="folder of images")
    p.add_argument("--captions", metavar="FILE", help="Karpathy JSON, token.txt or TSV")
    p.add_argument(
        "--split-of",
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="a split list (one image file name per line), e.g. val=Flickr_8k.devImages.txt "
        "(repeatable; only listed images are extracted; default: Karpathy splits, else train)",
    )
    p.add_argument("--splits", help="extract only these splits, comma-separated (e.g. val)")
    p.add_argument("--model", metavar="PATH", help="local weights directory (blip, clip)")
    p.add_argument("--max-length", type=int, help="caption length in tokens (backend default)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    p.add_argument("--batch-size-images", type=int, default=64, help="images per batch (64)")
    p.add_argument("--batch-size-text", type=int, default=256, help="captions per batch (256)")
    p.add_argument("--dataset", help="dataset name written into dataset_meta.json")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser(
        "explain",
        help="top vocabulary terms of a sparse vector, and why a query matches an image",
        description="Encode one image, caption or raw text with a run's best model, print its "
        "heaviest vocabulary terms and, for a (query, image) pair, the terms that contribute "
        "most to their sparse score. A caption is paired with its own image by default. "
        "--text encodes raw text through the run's extraction backend (effnet-minilm here).",
    )
    p.add_argument("run_dir", help="run directory written by 'mmsparse train'")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--image", metavar="ID", help="an image id (imgid)")
    caption = what.add_argument(
        "--caption-id", metavar="ID", help="a caption id (sentid), as in 'mmsparse search'"
    )
    add_deprecated_alias(what, "--caption", caption)
    what.add_argument("--text", help="a raw text query")
    p.add_argument("--with-image", metavar="ID", help="pair the caption/text with this image")
    p.add_argument("--k", type=int, default=10, help="terms to list (default 10)")
    p.add_argument("--data", help="another feature directory of the same backbone")
    p.add_argument("--bundle", help="backbone bundle directory (default: the run's)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=cmd_explain)


def cmd_explain(args: argparse.Namespace) -> int:
    """Run ``mmsparse explain``."""
    from mmsparse.explain import explain, format_explain

    result = explain(
        args.run_dir,
        image=args.image,
        caption_id=args.caption_id,
        text=args.text,
        with_image=args.with_image,
        k=args.k,
        data=args.data,
        device=args.device,
        bundle=args.bundle,
    )
    if args.json:
        print_json(result)
    else:
        print(format_explain(result))
    return 0


def _split_files(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ConfigError(f"--split-of expects NAME=FILE, got {item!r}")
        if name.strip() in out:
            raise ConfigError(f"--split-of: split {name.strip()!r} given twice")
        out[name.strip()] = path.strip()
    return out


def cmd_extract(args: argparse.Namespace) -> int:
    """Run ``mmsparse extract``."""
    if args.bundle_only:
        return _bundle_only(args)
    from mmsparse.extract.pipeline import extract_features

    if not args.images or not args.captions:
        raise ConfigError(
            "mmsparse extract needs --images DIR and --captions FILE (or --bundle-only)"
        )
    splits = [s.strip() for s in args.splits.split(",") if s.strip()] if args.splits else None
    report = extract_features(
        args.backend,
        args.images,
        args.captions,
        args.out,
        device=args.device,
        batch_size_images=args.batch_size_images,
        batch_size_text=args.batch_size_text,
        split_files=_split_files(args.split_of) or None,
        splits=splits,
        model=args.model,
        max_length=args.max_length,
        dataset=args.dataset,
        progress=not args.no_progress,
    )
    if args.json:
        print_json(report.to_dict())
        return 0
    sec = report.seconds
    print(
        f"{report.n_images} images and {report.n_captions} captions encoded with "
        f"{report.backend} on {report.device} in {sec.get('total', 0):.1f} s "
        f"(images {sec.get('images', 0):.1f} s, captions {sec.get('texts', 0):.1f} s)"
    )
    print(f"  {report.image_file}\n  {report.text_file}\n  {report.out_dir}/dataset_meta.json")
    print(f"  {report.bundle}/ (backbone bundle)")
    if report.converted:
        conv = ", ".join(f"{n} {m}" for m, n in report.converted.items())
        print(f"converted to RGB: {conv}")
    if report.skipped_images:
        print(
            f"skipped {len(report.skipped_images)} unreadable image(s) and their "
            f"{report.skipped_captions} captions:"
        )
        for name, why in report.skipped_images:
            print(f"  {name}: {why}")
    if report.unlisted_images:
        print(f"{report.unlisted_images} captioned image(s) were in no split list (left out)")
    return 0


def _bundle_only(args: argparse.Namespace) -> int:
    from mmsparse.extract.bundle import build_bundle

    if args.images or args.captions:
        raise ConfigError("--bundle-only writes only the bundle: drop --images/--captions")
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
        print_json(summary)
    else:
        print(
            f"bundle of {args.backend} written to {bundle.path}: {bundle.vocab_size} terms, "
            f"word embeddings {bundle.vocab_size} x {bundle.d_word}, "
            f"projections: {', '.join(sorted(bundle.projections)) or 'none'}"
        )
    return 0
