"""``mmsparse index build``, ``index engines``, ``search``, ``export``, ``bench retrieval``.

The engines, their ``--param`` keys and the search modes come from the engine registry
(:mod:`mmsparse.index.engines`): an engine added there appears here.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from mmsparse.errors import MMSparseError


def _print_json(obj: Any) -> None:
    from mmsparse.io_utils import json_text

    sys.stdout.write(json_text(obj, default=str, what="stdout") + "\n")


def _params(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings to a dict (values parsed as JSON when possible)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise MMSparseError(f"--param expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def _settings(text: str) -> list[tuple[int, float]]:
    """``"10:0.9,20:0.8"`` to ``[(10, 0.9), (20, 0.8)]``."""
    out = []
    for item in text.split(","):
        try:
            cut, factor = item.split(":")
            out.append((int(cut), float(factor)))
        except ValueError as exc:
            raise MMSparseError(
                f"--seismic-search expects QUERY_CUT:HEAP_FACTOR[,...], got {item!r}"
            ) from exc
    return out


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


def add_index_args(p: argparse.ArgumentParser, data_help: str) -> None:
    """The arguments of every command that opens an index: ``INDEX``, ``--run``, ``--data``.

    Args:
        p: The command's parser (``search``, ``serve``).
        data_help: What ``--data`` is for in this command.
    """
    p.add_argument("index", help="index directory written by 'mmsparse index build'")
    p.add_argument("--run", help="encode queries with this run (default: the index's)")
    p.add_argument("--data", help=data_help)
    p.add_argument("--bundle", help="backbone bundle directory (default: the run's)")


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
        help="index the images of a split",
        description="Encode a split's images with the run and index them with one engine ("
        f"{', '.join(engine_names())}); 'mmsparse index engines' describes each one, what it "
        "can do and its parameters.",
    )
    b.add_argument("run_dir", help="run directory written by 'mmsparse train'")
    b.add_argument("--split", default="val", help="split whose images are indexed")
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
    p.add_argument("--format", required=True, choices=("anserini", "opensearch", "elasticsearch"))
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


def register_bench(bench_sub: argparse._SubParsersAction) -> None:
    """Add ``mmsparse bench retrieval``."""
    p = bench_sub.add_parser(
        "retrieval",
        help="engines at scale: build time, size, latency, QPS, recall@10",
        description="Build a synthetic-but-realistic corpus from a run's real image "
        "vectors and compare exact sparse (inverted, inverted-blockmax, bmp), approximate "
        "sparse (seismic, kannolo, swept to equal recall), milvus-lite and faiss dense search "
        "(see docs/serving.md).",
    )
    p.add_argument("--run", required=True, help="trained run directory")
    p.add_argument("--data", help="feature directory (default: the run's)")
    p.add_argument("--n-images", type=int, default=1_000_000)
    p.add_argument("--n-queries", type=int, default=10_000)
    p.add_argument(
        "--engines",
        default="inverted,inverted-blockmax,bmp,seismic,kannolo,faiss-flat,faiss-hnsw",
        help="comma-separated subset to run (also: milvus, inverted-uint8, inverted-uint16)",
    )
    p.add_argument(
        "--latency-queries", type=int, default=1000, help="queries timed one by one on one thread"
    )
    p.add_argument(
        "--milvus-images",
        type=int,
        default=20_000,
        help="milvus-lite is measured on at most this many images",
    )
    p.add_argument("--image-topk", type=int, help="terms kept per image (default: the run's)")
    p.add_argument("--text-topk", type=int, help="terms kept per query (default: the run's)")
    p.add_argument(
        "--seismic",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="seismic build parameter, e.g. --seismic n_postings=6000 (repeatable)",
    )
    p.add_argument(
        "--seismic-search",
        default="3:0.7,5:0.8,10:0.9,20:0.9,30:1.0,50:1.0",
        help="seismic query_cut:heap_factor sweep, in increasing recall order",
    )
    p.add_argument("--hnsw-ef", default="16,32,64,128,256,512,1024", help="faiss efSearch sweep")
    p.add_argument(
        "--hnsw", action="append", default=[], metavar="KEY=VALUE", help="faiss M, efConstruction"
    )
    p.add_argument("--kannolo-ef", default="10,20,40,80,160,320,640", help="ef_search sweep")
    p.add_argument(
        "--kannolo", action="append", default=[], metavar="KEY=VALUE", help="m, ef_construction"
    )
    p.add_argument(
        "--kannolo-images", type=int, default=100_000, help="kannolo graph on at most this many"
    )
    p.add_argument("--bmp-bsize", type=int, default=32, help="bmp images per block")
    p.add_argument("--blockmax-bsize", type=int, default=64, help="own block-max block size")
    p.add_argument(
        "--sweep-queries", type=int, default=2000, help="queries of every sweep point's recall"
    )
    p.add_argument(
        "--latency-budget", type=float, default=20.0, help="seconds of timing per engine/setting"
    )
    p.add_argument(
        "--serial-budget",
        type=float,
        default=60.0,
        help="seconds for the one-query-at-a-time exact engines (bmp, inverted-blockmax)",
    )
    p.add_argument("--plot", help="write the latency-against-recall PNG here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", help="directory for the built indexes (default: temporary)")
    p.add_argument("--out", default="benchmarks/retrieval.json", help="results JSON")
    p.add_argument("--table", help="also write the markdown table to this file")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=cmd_bench_retrieval)


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
    manifest = build_index(
        args.run_dir,
        args.out,
        split=args.split,
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
        name = f"  {hit.filename}" if hit.filename else ""
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


def cmd_bench_retrieval(args: argparse.Namespace) -> int:
    """Run ``mmsparse bench retrieval``."""
    from mmsparse.bench.retrieval import DEFAULT_SEISMIC_BUILD, bench_retrieval, format_bench_table

    def ints(text: str) -> list[int]:
        try:
            return [int(x) for x in text.split(",") if x.strip()]
        except ValueError as exc:
            raise MMSparseError(f"expected comma-separated integers, got {text!r}") from exc

    report = bench_retrieval(
        args.run,
        n_images=args.n_images,
        n_queries=args.n_queries,
        engines=[e.strip() for e in args.engines.split(",") if e.strip()],
        latency_queries=args.latency_queries,
        milvus_images=args.milvus_images,
        seed=args.seed,
        data=args.data,
        work=args.work,
        out=args.out,
        table=args.table,
        seismic_build={**DEFAULT_SEISMIC_BUILD, **_params(args.seismic)},
        seismic_search=_settings(args.seismic_search),
        hnsw=_params(args.hnsw),
        hnsw_ef=ints(args.hnsw_ef),
        kannolo=_params(args.kannolo),
        kannolo_ef=ints(args.kannolo_ef),
        kannolo_images=args.kannolo_images,
        bmp_bsize=args.bmp_bsize,
        blockmax_bsize=args.blockmax_bsize,
        sweep_queries=args.sweep_queries,
        latency_budget=args.latency_budget,
        serial_budget=args.serial_budget,
        plot=args.plot,
        image_topk=args.image_topk,
        text_topk=args.text_topk,
        progress=not args.json,
    )
    if args.json:
        _print_json(report)
    else:
        print(format_bench_table(report))
        print(f"results written to {args.out}")
    return 0
