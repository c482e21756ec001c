"""``mmsparse index build``, ``index engines``, ``search`` and ``export``.

The engines, their ``--param`` keys and the search modes come from the engine registry
(:mod:`mmsparse.index.engines`): an engine added there appears here.
"""

from __future__ import annotations

import argparse
from typing import Any

from mmsparse.cli.common import add_index_args

# The names this module's commands call (kept for code written against them).
from mmsparse.cli.common import parse_params as _params
from mmsparse.cli.common import print_json as _print_json
from mmsparse.errors import MMSparseError


def _engine_help(stage: str) -> str:
    """Every engine's parameters of one stage, for ``--param``'s help."""
    from mmsparse.index.engines import all_engines

    parts, without = [], []
    for cls in all_engines():
        params = cls.build_params + cls.search_params if stage == "build" else cls.search_params
        if params:
            parts.append(f"{cls.name}: " + ", ".join(p.describe() for p in params))
        else:
            without.append(cls.name)
    if without:
        parts.append(f"{' and '.join(without)}: none")
    return "; ".join(parts)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``index``, ``search`` and ``export`` to ``sub``."""
    p = sub.add_parser(
        "index",
        help="build a searchable index of a run's images",
        description="Index images with a trained run's vectors (see docs/serving.md).",
    )
    isub = p.add_subparsers(dest="index_command", metavar="ACTION", required=True)
    from mmsparse.index.engines import DEFAULT_ENGINE, SEARCH_MODES, all_engines, engine_names

    b = isub.add_parser(
        "build",
        help="index the images of a split, or a folder of photos (--images)",
        description="Encode a split's images (or, with --images DIR, every photo of a "
        "folder, through the run's backbone) with the run and index them with one engine ("
        f"{', '.join(engine_names())}); 'mmsparse index engines' describes each one, what it "
        "can do and its parameters.",
    )
    b.add_argument("run_dir", help="run directory written by 'mmsparse train'")
    b.add_argument("--split", help="split whose images are indexed (default val)")
    b.add_argument(
        "--images",
        metavar="DIR",
        help="index every image of this folder (recursively, no captions needed), encoded "
        "with the run's backbone; ids are paths relative to DIR. A killed build resumes "
        "when run again (see docs/photos.md)",
    )
    b.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="--images: images per backbone forward pass (default 64)",
    )
    b.add_argument(
        "--engine",
        choices=engine_names(),
        default=DEFAULT_ENGINE,
        help=f"index engine (default {DEFAULT_ENGINE})",
    )
    b.add_argument("--out", required=True, help="index directory to write")
    b.add_argument("--data", help="another feature directory of the same backbone")
    b.add_argument("--bundle", help="backbone bundle directory (default: the run's)")
    b.add_argument("--image-topk", type=int, help="keep the top-k terms of each image")
    b.add_argument("--threshold", type=float, help="drop weights at or below this")
    b.add_argument(
        "--quantize",
        choices=("none", "uint8", "uint16"),
        default="none",
        help="integer impacts (recorded in the index)",
    )
    b.add_argument("--uri", help="milvus: a Milvus server, e.g. http://host:19530")
    b.add_argument("--collection", help="milvus: collection name (default mmsparse_images)")
    b.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="engine parameter (repeatable; search parameters given here are stored as the "
        f"index's defaults): {_engine_help('build')}",
    )
    b.add_argument(
        "--dense",
        action="store_true",
        help="also store the dense vectors, for --mode dense/hybrid search (engines that "
        "can hold them: "
        + ", ".join(c.name for c in all_engines() if "dense" in c.capabilities)
        + ")",
    )
    b.add_argument(
        "--no-calibrate",
        action="store_true",
        help="skip the confidence calibration (confidence.json: the no-match / "
        "low-confidence verdicts of docs/honest_answers.md; ~10 s with a text encoder)",
    )
    b.add_argument("--device", default="cpu", help="device to encode on")
    b.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    b.set_defaults(func=cmd_index_build)

    e = isub.add_parser(
        "engines",
        help="list the index engines, their capabilities and parameters",
        description="The engines 'index build --engine' takes: what each can do, its build "
        "and search parameters (--param KEY=VALUE) with types and defaults, and whether its "
        "optional package is installed.",
    )
    e.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    e.set_defaults(func=cmd_index_engines)

    from mmsparse.cli.live_cmds import register_live

    register_live(isub)  # index add, remove, optimize, info (a live index)

    p = sub.add_parser(
        "search",
        help="search an index with text or a caption id",
        description="Rank the indexed images for a text query (encoded through the run's "
        "extraction backend) or a caption of the data (--caption-id). Raw text loads the "
        "run's text encoder first (10-25 s on a CPU): for many queries use --queries FILE "
        "(one process, the encoder loaded once) or 'mmsparse serve'.",
    )
    add_index_args(p, "feature directory for --caption-id")
    p.add_argument("query", nargs="?", help="query text")
    p.add_argument("--caption-id", help="use this caption of the data as the query")
    p.add_argument(
        "--queries",
        metavar="FILE",
        help="search every line of FILE (UTF-8, one query text per line, blank lines skipped)"
        ' with the encoder loaded once; --json prints {"results": [...]}',
    )
    p.add_argument("--k", type=int, default=10, help="number of images (default 10)")
    p.add_argument(
        "--mode",
        choices=SEARCH_MODES,
        default="sparse",
        help="score (dense/hybrid need an index that holds dense vectors: 'index build "
        "--dense', or --engine milvus)",
    )
    p.add_argument("--explain", action="store_true", help="show matching terms")
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="engine search parameter (repeatable), e.g. --param query_cut=10 on a seismic "
        f"index: {_engine_help('search')}",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser(
        "export",
        help="export a run's image vectors for Anserini, OpenSearch or Elasticsearch",
        description="Write a split's image vectors in an engine's ingest format "
        "(see docs/serving.md).",
    )
    p.add_argument("run_dir", help="run directory written by 'mmsparse train'")
    p.add_argument("--split", default="val", help="split whose images are exported")
    p.add_argument(
        "--format",
        required=True,
        choices=("anserini", "opensearch", "elasticsearch"),
        help="the engine whose ingest format is written (docs/serving.md, Exports)",
    )
    p.add_argument(
        "--out", required=True, help="output directory (new or empty, unless --overwrite)"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty --out: the export's files there are replaced, "
        "other files are kept",
    )
    p.add_argument("--data", help="another feature directory of the same backbone")
    p.add_argument("--bundle", help="backbone bundle directory (default: the run's)")
    p.add_argument("--image-topk", type=int, help="keep the top-k terms of each image")
    p.add_argument("--threshold", type=float, help="drop weights at or below this")
    p.add_argument("--text-topk", type=int, help="keep the top-k terms of each caption query")
    p.add_argument(
        "--quantize",
        choices=("uint8", "uint16"),
        default="uint8",
        help="anserini: integer impacts (default uint8)",
    )
    p.add_argument("--index-name", default="mmsparse-images", help="opensearch/es index")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=cmd_export)


def cmd_index_build(args: argparse.Namespace) -> int:
    """Run ``mmsparse index build``."""
    from mmsparse.index.build import build_index
    from mmsparse.index.engines import all_engines

    params = _params(args.param)
    for option in ("uri", "collection"):  # shorthands of --param uri=... / collection=...
        value = getattr(args, option)
        if value:
            takers = [c.name for c in all_engines() if option in {p.name for p in c.build_params}]
            if args.engine not in takers:
                raise MMSparseError(
                    f"--{option} applies to --engine {' or '.join(takers)} only, not {args.engine}"
                )
            params[option] = value
    if args.images is not None:
        return _index_build_folder(args, params)
    manifest = build_index(
        args.run_dir,
        args.out,
        split=args.split or "val",
        engine=args.engine,
        data=args.data,
        image_topk=args.image_topk,
        threshold=args.threshold,
        quantize=args.quantize,
        bundle=args.bundle,
        engine_params=params or None,
        store_dense=args.dense,
        device=args.device,
        progress=not args.json,
        calibrate=not args.no_calibrate,
    )
    if args.json:
        _print_json(manifest.to_dict())
    else:
        s = manifest.stats
        print(
            f"{manifest.engine} index of {manifest.n_images} images ({manifest.split}) "
            f"written to {args.out}: {s['mean_terms_per_image']:.1f} terms per image, "
            f"{s['bytes_per_image']:.0f} bytes per image, built in {s['build_seconds']:.3g} s"
        )
    return 0


def _index_build_folder(args: argparse.Namespace, params: dict[str, Any]) -> int:
    """``mmsparse index build RUN --images DIR``: a folder of photos."""
    from mmsparse.index.folder import build_folder_index

    for flag, value in (("--split", args.split), ("--data", args.data), ("--bundle", args.bundle)):
        if value is not None:
            raise MMSparseError(
                f"{flag} applies to an index of a split; --images indexes a folder with the "
                "run's own backbone"
            )
    report = build_folder_index(
        args.run_dir,
        args.images,
        args.out,
        engine=args.engine,
        image_topk=args.image_topk,
        threshold=args.threshold,
        quantize=args.quantize,
        engine_params=params or None,
        store_dense=args.dense,
        device=args.device,
        batch_size=args.batch_size,
        progress=not args.json,
        calibrate=not args.no_calibrate,
    )
    if args.json:
        _print_json(report.to_dict())
        return 0
    m, f = report.manifest, report.manifest.folder
    s, t = m.stats, f["seconds"]
    print(
        f"{m.engine} index of {m.n_images} images of {m.images_dir} written to {args.out}: "
        f"{s['mean_terms_per_image']:.1f} terms per image, {s['bytes_per_image']:.0f} bytes "
        "per image"
    )
    print(
        f"time: decode {t['decode']:.1f} s (beside the backbone), backbone "
        f"{t['backbone']:.1f} s, heads {t['heads']:.1f} s, index {t['index']:.1f} s"
        + (f", calibration {t['calibrate']:.1f} s" if "calibrate" in t else "")
        + f"; {t['total']:.1f} s in all ({f['resumed_batches']} of "
        f"{f['resumed_batches'] + f['encoded_batches']} batches from earlier runs)"
    )
    if report.skipped:
        kinds = ", ".join(f"{n} {why}" for why, n in f["skipped_by_reason"].items())
        print(f"skipped {len(report.skipped)} file(s) ({kinds}); all listed in folder.json:")
        for name, why in report.skipped[:10]:
            print(f"  {name}: {why}")
        if len(report.skipped) > 10:
            print(f"  ... and {len(report.skipped) - 10} more")
    return 0


def cmd_index_engines(args: argparse.Namespace) -> int:
    """Run ``mmsparse index engines``."""
    from mmsparse.index.engines import describe_engines

    engines = describe_engines()
    if args.json:
        _print_json({"engines": engines})
        return 0
    for i, info in enumerate(engines):
        if i:
            print()
        state = "installed" if info["available"] else f"not installed: {info['install']}"
        print(f"{info['name']}: {info['summary']}")
        print(f"  capabilities: {', '.join(info['capabilities']) or 'none'} ({state})")
        for stage in ("build", "search"):
            for param in info[f"{stage}_params"]:
                default = "none" if param["default"] is None else repr(param["default"])
                print(
                    f"  {stage} --param {param['name']}=  {param['rule']}, default {default}: "
                    f"{param['help']}"
                )
    return 0


def read_queries(path: str) -> list[str]:
    """The query texts of a ``--queries`` file: one per line, blank lines skipped.

    Raises:
        MMSparseError: If the file cannot be read or holds no query.
    """
    from pathlib import Path

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MMSparseError(f"{path}: cannot read --queries file ({exc})") from exc
    queries = [line.strip() for line in text.splitlines() if line.strip()]
    if not queries:
        raise MMSparseError(f"{path}: --queries file holds no query (one text per line)")
    return queries


def cmd_search(args: argparse.Namespace) -> int:
    """Run ``mmsparse search``."""
    from mmsparse.index.search import Searcher

    if args.queries and (args.query is not None or args.caption_id is not None):
        raise MMSparseError("give a query text, --caption-id or --queries FILE, not several")
    queries = read_queries(args.queries) if args.queries else None
    searcher = Searcher(args.index, run_dir=args.run, data=args.data, bundle=args.bundle)
    try:
        knobs = _params(args.param)
        if queries is None:
            results = [
                searcher.search(
                    args.query,
                    caption_id=args.caption_id,
                    k=args.k,
                    mode=args.mode,
                    explain=args.explain,
                    **knobs,
                )
            ]
        else:
            results = [
                searcher.search(q, k=args.k, mode=args.mode, explain=args.explain, **knobs)
                for q in queries
            ]
    finally:
        searcher.close()
    if args.json:
        if queries is None:
            _print_json(results[0].to_dict())
        else:
            _print_json({"results": [r.to_dict() for r in results]})
        return 0
    for i, result in enumerate(results):
        if i:
            print()
        _print_result(result)
    return 0


def _print_result(result: Any) -> None:
    """One search result as text for people."""
    label = repr(result.query) if result.query is not None else f"caption {result.caption_id}"
    print(f"{result.engine} {result.mode} search for {label} (top {result.k})")
    for note in result.notes:
        print(f"note: {note}")
    if result.query_terms:
        print("query terms: " + ", ".join(f"{t} {w:.2f}" for t, w in result.query_terms[:12]))
    for hit in result.hits:
        name = f"  {hit.filename}" if hit.filename and hit.filename != hit.image_id else ""
        print(f"{hit.rank:>4}  {hit.score:9.4f}  {hit.image_id}{name}")
        if hit.terms is not None and result.mode == "sparse":
            listed = sum(t[3] for t in hit.terms)
            print(
                f"        top {len(hit.terms)} of {hit.shared_terms} shared terms "
                f"(they sum to {listed:.4f} of the score {hit.score:.4f})"
            )
        for term, qw, dw, prod in hit.terms or []:
            print(f"        {term:<16} {qw:.3f} x {dw:.3f} = {prod:.4f}")
    if not result.hits:
        print("no result")


def cmd_export(args: argparse.Namespace) -> int:
    """Run ``mmsparse export``."""
    from mmsparse.index.export import export_run

    info = export_run(
        args.run_dir,
        args.out,
        split=args.split,
        fmt=args.format,
        data=args.data,
        image_topk=args.image_topk,
        threshold=args.threshold,
        text_topk=args.text_topk,
        quantize=args.quantize,
        index_name=args.index_name,
        bundle=args.bundle,
        overwrite=args.overwrite,
    )
    if args.json:
        _print_json(info)
    else:
        print(
            f"{args.format} export of {info['n_images']} images written to {args.out}: "
            + ", ".join(info["files"])
        )
    return 0
