"""The sparse vocabulary: term names, and WordPiece tokenisation of captions.

Every output dimension of the sparse head is one vocabulary term. With a real backbone the
vocabulary is its word-piece vocabulary (BERT uncased: 30,522 entries), so image vectors
read as weighted English words. Without one, terms are named by index (``#1234``).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from mmsparse.errors import DataError

# Special tokens of the usual vocabularies: BERT's [PAD] [CLS] [SEP] [MASK] [UNK] [unused0],
# RoBERTa/T5's <s> </s> <pad> <unk> <mask>, CLIP/GPT's <|startoftext|> <|endoftext|>.
_SPECIAL = re.compile(r"^(\[[A-Za-z0-9_]+\]|<\|?/?[A-Za-z0-9_]+\|?>)$")


class Vocabulary:
    """Term names of the sparse dimensions, with a greedy WordPiece tokenizer.

    Args:
        tokens: One term per sparse dimension, in order.
        named: ``False`` for the fallback vocabulary whose terms are only indices.

    Example:
        >>> vocab = Vocabulary(["[PAD]", "dog", "run", "##s"])
        >>> vocab.encode("dog runs")
        [1, 2, 3]
    """

    def __init__(self, tokens: Sequence[str], named: bool = True) -> None:
        self.tokens = list(tokens)
        self.named = named
        self._index = {tok: i for i, tok in enumerate(self.tokens)} if named else {}
        self.unk_id = self._index.get("[UNK]")
        self.max_piece = max((len(t) for t in self.tokens), default=1) if named else 0
        # Special tokens ([PAD], [CLS], [unused0] ...) never count as caption terms.
        self.special_ids = np.array(
            [i for i, t in enumerate(self.tokens) if _SPECIAL.match(t)] if named else [],
            dtype=np.int64,
        )

    @classmethod
    def fallback(cls, size: int) -> Vocabulary:
        """Vocabulary of ``size`` terms named ``#0`` … ``#size-1`` (no real words)."""
        return cls([f"#{i}" for i in range(size)], named=False)

    @classmethod
    def from_file(cls, path: str | Path) -> Vocabulary:
        """Read a ``vocab.txt`` file (one term per line, BERT style)."""
        path = Path(path)
        try:
            lines = path.read_text(encoding="utf-8").split("\n")
        except OSError as exc:
            raise DataError(f"{path}: cannot read vocabulary file ({exc.strerror})") from exc
        if lines and lines[-1] == "":
            lines = lines[:-1]
        if not lines:
            raise DataError(f"{path}: empty vocabulary file")
        return cls(lines)

    def save(self, path: str | Path) -> None:
        """Write the vocabulary as ``vocab.txt`` atomically."""
        from mmsparse.io_utils import atomic_write_text

        atomic_write_text(Path(path), "\n".join(self.tokens) + "\n")

    def __len__(self) -> int:
        return len(self.tokens)

    def term(self, index: int) -> str:
        """Name of sparse dimension ``index``."""
        return self.tokens[index]

    def id(self, token: str) -> int | None:
        """Index of ``token``, or ``None`` when unknown."""
        return self._index.get(token)

    @staticmethod
    def basic_tokenize(text: str) -> list[str]:
        """Lower-case, strip accents and split on whitespace and punctuation (BERT basic)."""
        text = unicodedata.normalize("NFD", text.lower())
        text = "".join(c for c in text if unicodedata.category(c) != "Mn")
        words: list[str] = []
        for chunk in text.split():
            current = ""
            for ch in chunk:
                if unicodedata.category(ch).startswith("P") or (ch.isascii() and not ch.isalnum()):
                    if current:
                        words.append(current)
                        current = ""
                    words.append(ch)
                else:
                    current += ch
            if current:
                words.append(current)
        return words

    def wordpiece(self, word: str) -> list[int]:
        """Greedy longest-match-first WordPiece ids of one word (``[UNK]`` if impossible)."""
        if word in self._index:
            return [self._index[word]]
        ids: list[int] = []
        start = 0
        while start < len(word):
            end = min(len(word), start + self.max_piece)
            found = None
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self._index:
                    found = self._index[piece]
                    break
                end -= 1
            if found is None:
                return [self.unk_id] if self.unk_id is not None else []
            ids.append(found)
            start = end
        return ids

    def encode(self, text: str | Iterable[str]) -> list[int]:
        """Vocabulary ids of a text (or of pre-split tokens), special ids dropped.

        Args:
            text: Raw text, or an iterable of already split tokens (Karpathy ``tokens``).

        Returns:
            Ids in order of appearance (with repeats); empty for the fallback vocabulary.
        """
        if not self.named:
            return []
        words = (
            self.basic_tokenize(text)
            if isinstance(text, str)
            else [w for tok in text for w in self.basic_tokenize(tok)]
        )
        special = set(self.special_ids.tolist())
        out: list[int] = []
        for word in words:
            out.extend(i for i in self.wordpiece(word) if i not in special)
        return out

    def token_matrix(self, texts: Sequence[str | Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
        """Unique vocabulary ids of many texts as CSR arrays ``(indptr, indices)``.

        Args:
            texts: One text (or token list) per row.

        Returns:
            ``indptr`` of shape ``(len(texts) + 1,)`` and ``indices`` (int64).
        """
        indptr = np.zeros(len(texts) + 1, dtype=np.int64)
        chunks: list[np.ndarray] = []
        cache: dict[str, list[int]] = {}
        for row, text in enumerate(texts):
            if isinstance(text, str):
                ids = self.encode(text)
            else:
                ids = []
                for tok in text:
                    if tok not in cache:
                        cache[tok] = self.encode(tok)
                    ids.extend(cache[tok])
            uniq = np.unique(np.asarray(ids, dtype=np.int64))
            chunks.append(uniq)
            indptr[row + 1] = indptr[row] + uniq.size
        indices = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)
        return indptr, indices
