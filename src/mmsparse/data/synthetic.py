"""A deterministic synthetic image-caption dataset with readable sparse terms.

Used by ``mmsparse demo`` and the tests. It is *synthetic*: no real images or captions.
Each image is a small scene built from latent concepts that carry real English words (a
subject, an action, a place, sometimes a colour and an object). Its "image feature" is a
fixed random non-linear map of the sum of the concepts' latent vectors, plus noise; each of
its captions mentions most of those concepts in a template sentence, and its "caption
feature" is another non-linear map of the mentioned concepts, plus noise. A backbone bundle
comes with it: a BERT-style vocabulary holding the concept words and word embeddings that
are noisy linear images of the concept latents (so, as with a real text encoder, the word
embedding of "dog" is related to what "dog" means).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmsparse.data.bundle import BackboneBundle
from mmsparse.data.store import FeatureStore
from mmsparse.data.vocab import Vocabulary

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
FUNCTION_WORDS = [
    "a",
    "an",
    "the",
    "in",
    "on",
    "at",
    "with",
    "of",
    "and",
    "is",
    "are",
    "near",
    "through",
    "into",
    "over",
    "by",
    "its",
    "their",
    "while",
    ".",
]
CONCEPTS: dict[str, list[str]] = {
    "subject": [
        "dog",
        "cat",
        "horse",
        "bird",
        "man",
        "woman",
        "child",
        "girl",
        "boy",
        "cow",
        "sheep",
        "duck",
        "team",
        "couple",
        "skier",
        "surfer",
        "cyclist",
        "puppy",
    ],
    "action": [
        "runs",
        "jumps",
        "sits",
        "plays",
        "swims",
        "rides",
        "climbs",
        "walks",
        "stands",
        "sleeps",
        "throws",
        "catches",
        "dances",
        "eats",
    ],
    "place": [
        "beach",
        "park",
        "street",
        "snow",
        "field",
        "water",
        "mountain",
        "city",
        "forest",
        "grass",
        "river",
        "road",
        "lake",
        "stage",
        "desert",
        "garden",
    ],
    "color": ["red", "blue", "green", "black", "white", "yellow", "brown", "pink", "orange"],
    "object": [
        "ball",
        "bicycle",
        "frisbee",
        "car",
        "boat",
        "kite",
        "tree",
        "bench",
        "fence",
        "umbrella",
        "hat",
        "rope",
        "wave",
        "rock",
    ],
}
EXTRA_WORDS = [
    "photo",
    "picture",
    "image",
    "scene",
    "day",
    "night",
    "people",
    "group",
    "young",
    "old",
    "small",
    "large",
    "big",
    "little",
    "two",
    "three",
    "outside",
    "inside",
    "front",
    "behind",
    "top",
    "down",
    "up",
    "out",
    "around",
    "together",
]


@dataclass(frozen=True)
class SyntheticSpec:
    """Sizes of a synthetic dataset.

    Attributes:
        n_train: Training images.
        n_val: Validation images.
        n_test: Test images.
        captions_per_image: Captions per image.
        d_img: Image feature size.
        d_txt: Caption feature size.
        d_latent: Size of the concept latents.
        d_word: Word-embedding size of the bundle.
        noise: Feature noise level (relative to signal).
        seed: Random seed; the same seed gives the same dataset, bit for bit.
    """

    n_train: int = 2000
    n_val: int = 300
    n_test: int = 300
    captions_per_image: int = 5
    d_img: int = 96
    d_txt: int = 64
    d_latent: int = 32
    d_word: int = 48
    noise: float = 0.35
    seed: int = 0


def synthetic_vocabulary() -> Vocabulary:
    """The demo vocabulary: specials, function words, concept words, extra words."""
    words = SPECIALS + FUNCTION_WORDS + [w for ws in CONCEPTS.values() for w in ws] + EXTRA_WORDS
    return Vocabulary(words)


def make_synthetic(spec: SyntheticSpec | None = None) -> FeatureStore:
    """Generate the synthetic dataset and its backbone bundle, deterministically.

    Args:
        spec: Sizes and seed (defaults: 2,000 / 300 / 300 images, 5 captions each).

    Returns:
        An in-memory :class:`FeatureStore` with splits ``train``, ``val``, ``test`` and a
        bundle (vocabulary and word embeddings, no projections).
    """
    spec = spec or SyntheticSpec()
    rng = np.random.default_rng(spec.seed)
    vocab = synthetic_vocabulary()
    concept_words = [w for ws in CONCEPTS.values() for w in ws]
    latent = {w: rng.standard_normal(spec.d_latent) for w in concept_words}

    # Fixed non-linear "encoders" of each modality.
    a_img = rng.standard_normal((spec.d_img, spec.d_latent)) / np.sqrt(spec.d_latent)
    a_img2 = rng.standard_normal((spec.d_img, spec.d_img)) / np.sqrt(spec.d_img)
    a_txt = rng.standard_normal((spec.d_txt, spec.d_latent)) / np.sqrt(spec.d_latent)
    a_txt2 = rng.standard_normal((spec.d_txt, spec.d_txt)) / np.sqrt(spec.d_txt)

    n_images = spec.n_train + spec.n_val + spec.n_test
    splits = ["train"] * spec.n_train + ["val"] * spec.n_val + ["test"] * spec.n_test
    image_feats = np.zeros((n_images, spec.d_img), dtype=np.float32)
    caption_feats = np.zeros((n_images * spec.captions_per_image, spec.d_txt), dtype=np.float32)
    caption_texts: list[str] = []
    caption_tokens: list[list[str]] = []
    caption_image = np.repeat(np.arange(n_images), spec.captions_per_image)

    for i in range(n_images):
        scene = {k: str(rng.choice(CONCEPTS[k])) for k in ("subject", "action", "place")}
        if rng.random() < 0.6:
            scene["color"] = str(rng.choice(CONCEPTS["color"]))
        if rng.random() < 0.5:
            scene["object"] = str(rng.choice(CONCEPTS["object"]))
        strength = {w: rng.uniform(0.6, 1.4) for w in scene.values()}
        x = sum(strength[w] * latent[w] for w in scene.values())
        x = x + spec.noise * rng.standard_normal(spec.d_latent) * np.sqrt(len(scene))
        h = np.tanh(a_img @ x)
        image_feats[i] = a_img2 @ h + spec.noise * 0.3 * rng.standard_normal(spec.d_img)
        for j in range(spec.captions_per_image):
            mentioned = {k: w for k, w in scene.items() if k == "subject" or rng.random() < 0.75}
            words = _caption_words(mentioned, rng)
            y = sum(latent[w] for w in mentioned.values())
            y = y + spec.noise * rng.standard_normal(spec.d_latent) * np.sqrt(len(mentioned))
            g = np.tanh(a_txt @ y)
            row = i * spec.captions_per_image + j
            caption_feats[row] = a_txt2 @ g + spec.noise * 0.3 * rng.standard_normal(spec.d_txt)
            caption_tokens.append(words)
            caption_texts.append(" ".join(words).capitalize() + " .")

    # Word embeddings: concept words are noisy linear images of their latents.
    proj = rng.standard_normal((spec.d_word, spec.d_latent)) / np.sqrt(spec.d_latent)
    word_emb = 0.5 * rng.standard_normal((len(vocab), spec.d_word))
    for w in concept_words:
        word_emb[vocab.id(w)] = proj @ latent[w] + 0.3 * rng.standard_normal(spec.d_word)
    word_emb = (0.05 * word_emb).astype(np.float32)  # BERT-like scale of word embeddings

    bundle = BackboneBundle(
        name="synthetic", vocab=vocab, word_embeddings=word_emb, extraction=None
    )
    return FeatureStore(
        image_ids=[str(i) for i in range(n_images)],
        image_feats=image_feats,
        image_split=np.asarray(splits),
        image_filenames=[f"synthetic_{i:05d}.jpg" for i in range(n_images)],
        caption_ids=[str(i) for i in range(len(caption_texts))],
        caption_feats=caption_feats,
        caption_image=caption_image.astype(np.int64),
        caption_texts=caption_texts,
        caption_tokens=caption_tokens,
        bundle=bundle,
        root=None,
        name="synthetic",
    )


def _caption_words(scene: dict[str, str], rng: np.random.Generator) -> list[str]:
    subject = scene["subject"]
    words = ["a"]
    if "color" in scene:
        words.append(scene["color"])
    words.append(subject)
    if "action" in scene:
        words.append(scene["action"])
    if "object" in scene:
        words += ["with", "a", scene["object"]]
    if "place" in scene:
        words += [str(rng.choice(["on", "in", "near", "at"])), "the", scene["place"]]
    return words
