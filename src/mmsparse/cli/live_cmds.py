"""``mmsparse index add``, ``index remove``, ``index optimize``, ``index info``: a live index.

Each is a thin wrapper over one library function (:func:`mmsparse.index.folder.add_images`,
:func:`mmsparse.index.live.remove_images`, :func:`~mmsparse.index.live.optimize_index`,
:func:`~mmsparse.index.live.live_info`); ``index_cmds.register`` adds them to ``index``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mmsparse.cli.common import print_json
from mmsparse.errors import MMSparseError


def register_live(isub: argparse._SubParsersAction) -> None:
    """Add ``add``, ``remove``, ``optimize`` and ``info`` to the ``index`` subcommands."""
    from mmsparse.index.live import EXISTING, MERGE_FACTOR

    a = isub.add_parser(
        "add",
        help="add a folder of photos to an index (a new generation, no rebuild)",
        description="Encode the photos of a folder with the index's run and add them to the "
        "index as a new segment, published as a new generation: a running 'mmsparse serve' "
        "switches to it without a restart. Photos already in the index are left out "
        "(--existing). A folder inside the index's photo folder keeps its paths as ids; "
        "another folder's photos get NAME/ before theirs (--name, default: the folder's "
        "name). See docs/photos.md#keep-it-live.",
    )
    a.add_argument("index", help="index directory ('mmsparse index build')")
    a.add_argument("--images", required=True, metavar="DIR", help="folder of photos to add")
    a.add_argument("--run", help="run to encode with (default: the index's; must be the same)")
    a.add_argument(
        "--name",
        help="id prefix of photos of a folder outside the index's photo folder (default: "
        "the folder's name)",
    )
    a.add_argument(
        "--existing",
        choices=EXISTING,
        default="skip",
        help="photos whose id is in the index already: skip (default), replace (encode "
        "again and update), error",
    )
    a.add_argument(
        "--merge-factor",
        type=int,
        default=MERGE_FACTOR,
        help=f"merge this many adjacent segments of one size tier into one after the add "
        f"(default {MERGE_FACTOR}; 0: never)",
    )
    a.add_argument("--batch-size", type=int, default=64, help="images per forward pass (64)")
    a.add_argument("--device", default="cpu", help="device to encode on")
    a.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    a.set_defaults(func=cmd_index_add)

    r = isub.add_parser(
        "remove",
        help="remove images from an index (a new generation, no rebuild)",
        description="Delete images from an index by id, published as a new generation (a "
        "deletion file; 'index optimize' drops the rows). Ids that are not in the index are "
        "refused, all listed, and nothing is removed.",
    )
    r.add_argument("index", help="index directory")
    which = r.add_mutually_exclusive_group(required=True)
    which.add_argument("--ids", metavar="FILE", help="file of image ids, one per line ('-': stdin)")
    which.add_argument(
        "--files",
        nargs="+",
        metavar="F",
        help="image files (or folders: every indexed image under them), as paths on disk",
    )
    r.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    r.set_defaults(func=cmd_index_remove)

    o = isub.add_parser(
        "optimize",
        help="merge an index's segments into one, dropping removed images",
        description="Merge every segment of an index into one without its deleted rows, "
        "publish it as a new generation and compute the confidence calibration again.",
    )
    o.add_argument("index", help="index directory")
    o.add_argument(
        "--no-calibrate", action="store_true", help="keep the confidence calibration as it is"
    )
    o.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    o.set_defaults(func=cmd_index_optimize)

    i = isub.add_parser(
        "info",
        help="an index's generation, segments and deleted images",
        description="What an index holds now: engine, generation, images, segments with "
        "their deleted rows, and the generations still on disk.",
    )
    i.add_argument("index", help="index directory")
    i.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    i.set_defaults(func=cmd_index_info)


def _summary(report: Any) -> str:
    parts = []
    if report.added:
        parts.append(f"added {report.added}")
    if report.replaced:
        parts.append(f"replaced {report.replaced}")
    if report.skipped:
        parts.append(f"left {report.skipped} already there")
    if report.removed:
        parts.append(f"removed {report.removed}")
    for names, into in report.merged:
        parts.append(f"merged {len(names)} segments into {into}")
    done = ", ".join(parts) or "nothing to do"
    published = (
        f"generation {', '.join(map(str, report.published))} published"
        if report.published
        else f"still generation {report.generation}"
    )
    return (
        f"{report.index}: {done}; {published}: {report.n_images} images in {report.segments} "
        f"segment(s), {report.deleted_rows} deleted row(s) kept until 'index optimize'"
    )


def cmd_index_add(args: argparse.Namespace) -> int:
    """Run ``mmsparse index add``."""
    from mmsparse.index.folder import add_images

    if args.batch_size < 1:
        raise MMSparseError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.merge_factor < 0:
        raise MMSparseError(f"--merge-factor must be 0 or more, got {args.merge_factor}")
    report = add_images(
        args.index,
        args.images,
        run_dir=args.run,
        name=args.name,
        existing=args.existing,
        device=args.device,
        batch_size=args.batch_size,
        merge_factor=args.merge_factor,
        progress=not args.json,
    )
    if args.json:
        print_json(report.to_dict())
        return 0
    print(_summary(report))
    skipped = report.files.get("skipped") or []
    if skipped:
        print(f"skipped {len(skipped)} file(s) of {report.files.get('folder')}:")
        for name, why in skipped[:10]:
            print(f"  {name}: {why}")
        if len(skipped) > 10:
            print(f"  ... and {len(skipped) - 10} more (--json lists them all)")
    return 0


def read_ids(path: str) -> list[str]:
    """Image ids of a file, one per line (blank lines and ``#`` comments ignored).

    Raises:
        MMSparseError: If the file cannot be read.
    """
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MMSparseError(f"--ids {path}: cannot read ({exc})") from None
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def cmd_index_remove(args: argparse.Namespace) -> int:
    """Run ``mmsparse index remove``."""
    from mmsparse.index.live import ids_of_files, remove_images

    ids = read_ids(args.ids) if args.ids is not None else ids_of_files(args.index, args.files)
    report = remove_images(args.index, ids)
    if args.json:
        print_json(report.to_dict())
    else:
        print(_summary(report))
    return 0


def cmd_index_optimize(args: argparse.Namespace) -> int:
    """Run ``mmsparse index optimize``."""
    from mmsparse.index.live import optimize_index

    report = optimize_index(args.index, calibrate=not args.no_calibrate, progress=not args.json)
    if args.json:
        print_json(report.to_dict())
    else:
        print(_summary(report))
        if report.calibration:
            print(f"confidence calibration: {report.calibration}")
    return 0


def cmd_index_info(args: argparse.Namespace) -> int:
    """Run ``mmsparse index info``."""
    from mmsparse.index.live import live_info

    info = live_info(args.index)
    if args.json:
        print_json(info)
        return 0
    kind = "live" if info["live"] else "as built"
    change = (
        "can change by segments (index add/remove/optimize)"
        if info["incremental"]
        else "cannot change by segments: rebuild it to change it"
    )
    print(
        f"{info['index']}: {info['engine']} index ({kind}), generation {info['generation']} "
        f"of {info['created']}: {info['n_images']} images, {len(info['segments'])} "
        f"segment(s), {info['deleted_rows']} deleted row(s); it {change}"
    )
    print(f"{'segment':<10} {'images':>8} {'deleted':>8}  path")
    for s in info["segments"]:
        print(f"{s['name']:<10} {s['images']:>8} {s['deleted']:>8}  {s['path']}")
    for prefix, root in info["image_roots"].items():
        print(f"photos {prefix}* are files of {root}")
    if info["live"]:
        print("generations on disk:")
        for g in info["generations"]:
            mark = " (current)" if g["current"] else ""
            print(f"  {g['generation']:>4} {g['created']} {g['operation']}: {g['note']}{mark}")
    return 0
