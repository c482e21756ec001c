"""No text of the shared Flickr8k data is copied into the repository (research-only licence).

Every tracked text file is read as words, and any run of 8 consecutive words that is also a
run of 8 words of a Flickr8k caption fails the test (8 words: long enough that the generic
example queries of the docs, "a dog runs on the beach", do not count).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from tests.helpers import flickr8k_or_skip

ROOT = Path(__file__).resolve().parent.parent
N = 8
WORD = re.compile(r"[a-z0-9']+")


def _shingles(text: str) -> set[tuple[str, ...]]:
    words = WORD.findall(text.lower())
    return {tuple(words[i : i + N]) for i in range(len(words) - N + 1)}


def _tracked_files() -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
        return [ROOT / line for line in out.splitlines() if line]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: every file
        skip = {".git", ".venv", "runs", ".cache", "node_modules"}
        return [p for p in ROOT.rglob("*") if p.is_file() and not skip & set(p.parts)]


def test_no_flickr8k_caption_is_copied_into_the_repository():
    data = flickr8k_or_skip()
    meta = json.loads((data / "dataset_meta.json").read_text())
    captions: set[tuple[str, ...]] = set()
    for image in meta["images"]:
        for sentence in image["sentences"]:
            captions |= _shingles(sentence["raw"])
    assert len(captions) > 10_000  # the check has something to find
    found = []
    for path in _tracked_files():
        if path.suffix in {".png", ".jpg", ".safetensors", ".npy", ".parquet", ".gz"}:
            continue
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        hits = _shingles(text) & captions
        if hits:
            found.append(f"{path.relative_to(ROOT)}: {' '.join(sorted(hits)[0])!r}")
    assert not found, "Flickr8k caption text in tracked files:\n" + "\n".join(found)
