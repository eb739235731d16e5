"""Predictions from an exported ONNX file alone.

Needs only numpy and onnxruntime, tokenizers for text, soundfile and scipy for audio (it
imports nothing else of Ascent's): the task, labels, input spec, category code tables and the tokenizer's file name
are read from the file's metadata_props.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
# Inputs past these are refused before they are decoded (the same settings as ingest's).
DEFAULT_MAX_IMAGE_PIXELS = 64_000_000
DEFAULT_MAX_CLIP_SECONDS = 60.0


def _limit(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def max_image_pixels() -> int:
    return int(_limit("ASCENT_MAX_IMAGE_PIXELS", DEFAULT_MAX_IMAGE_PIXELS))


def max_clip_seconds() -> float:
    return _limit("ASCENT_MAX_CLIP_SECONDS", DEFAULT_MAX_CLIP_SECONDS)


class RuntimeInputError(ValueError):
    """Input that does not match what the model takes."""


def as_category(value: Any) -> str | None:
    """The one text form of a category value, used at ingest, training and prediction."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return None
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    text = str(value).strip()
    return text or None


@dataclass(frozen=True)
class Prediction:
    label: str | None = None
    probabilities: dict[str, float] = field(default_factory=dict)
    value: float | None = None

    def top(self, k: int = 5) -> list[tuple[str, float]]:
        """The k most probable labels, best first."""
        return sorted(self.probabilities.items(), key=lambda item: -item[1])[:k]


# The lowest detection score shown unless the user says otherwise: CenterNet's heatmap peaks
# stay under 1 (neighbouring cells share the Gaussian), and a short run's true boxes score 0.25-0.5.
DEFAULT_THRESHOLD = 0.25


@dataclass(frozen=True)
class Box:
    """One detected object: x1, y1, x2, y2 in the input image's pixels."""

    label: str
    score: float
    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class Segmentation:
    """A class per pixel of the input image and each class's share of the pixels."""

    mask: np.ndarray  # uint8 [H, W] class indices into the model's labels
    confidence: np.ndarray  # float32 [H, W]: the chosen class's probability
    shares: dict[str, float]


def palette(n: int) -> list[tuple[int, int, int]]:
    """A distinct colour per class; class 0 (background) is black."""
    import colorsys

    colours = [(0, 0, 0)]
    for i in range(1, n):
        r, g, b = colorsys.hsv_to_rgb(((i - 1) * 0.618034) % 1.0, 0.75, 1.0)
        colours.append((int(r * 255), int(g * 255), int(b * 255)))
    return colours


def mask_png(mask: np.ndarray, n_classes: int) -> bytes:
    """A palette PNG: pixel values are the class indices, shown in palette(n) colours."""
    if not has_module("PIL"):
        return mask_png_plain(mask, n_classes)
    import io

    from PIL import Image

    img = Image.fromarray(mask.astype(np.uint8), mode="P")
    flat = [v for colour in palette(max(n_classes, 1)) for v in colour]
    img.putpalette(flat + [255, 255, 255] * (256 - len(flat) // 3))
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def save_mask(mask: np.ndarray, n_classes: int, dest: Path) -> None:
    """The mask as a palette PNG file (`mask_png`)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(mask_png(mask, n_classes))


@contextlib.contextmanager
def open_image(source: Any) -> Iterator[Any]:
    """A PIL image (path, bytes or file object) whose size is within the pixel limit, checked
    from its header before any pixel is decoded; RuntimeInputError otherwise."""
    import io
    import warnings

    from PIL import Image, UnidentifiedImageError

    limit = max_image_pixels()
    Image.MAX_IMAGE_PIXELS = None  # checked here, at the limit itself (PIL's own check starts at 2x)
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opened = Image.open(source)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise RuntimeInputError(f"not a readable image ({type(exc).__name__})") from exc
    with opened:
        pixels = opened.width * opened.height
        if pixels > limit:
            raise RuntimeInputError(
                f"the image is {opened.width}x{opened.height} ({pixels / 1e6:.0f} megapixels), over the "
                f"limit of {limit / 1e6:.0f} megapixels (ASCENT_MAX_IMAGE_PIXELS)"
            )
        yield opened


def load_image(source: Any, size: tuple[int, int]) -> np.ndarray:
    """An image file (path, bytes or file object) as uint8 [H, W, 3] RGB at `size` (h, w).

    The one resize used for validation in training and for prediction: EXIF rotation applied,
    transparency composited on white, then a bilinear resize of the whole image (no crop).
    """
    if not has_module("PIL"):
        return resize_bilinear(read_plain_image(source), size)
    from PIL import Image

    with open_image(source) as opened:
        img = _rgb(opened).resize((size[1], size[0]), Image.Resampling.BILINEAR)
        return np.asarray(img, dtype=np.uint8).copy()


def load_original(source: Any) -> np.ndarray:
    """An image file as uint8 [H, W, 3] RGB at its own size (EXIF rotation applied, transparency
    on white): what detection and segmentation files take, resizing in their graph."""
    if not has_module("PIL"):
        return read_plain_image(source)
    with open_image(source) as opened:
        return np.asarray(_rgb(opened), dtype=np.uint8).copy()


def _rgb(opened: Any) -> Any:
    from PIL import Image, ImageOps

    img = ImageOps.exif_transpose(opened)
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        img = Image.new("RGB", rgba.size, (255, 255, 255))
        img.paste(rgba, mask=rgba.getchannel("A"))
    return img.convert("RGB")


AUDIO_SUFFIXES = {".wav", ".flac"}


def clip_info(source: Any) -> tuple[float, int, int]:
    """(seconds, sample rate, channels) from a clip's header, without decoding it."""
    import io

    import soundfile as sf

    if isinstance(source, bytes):
        if not source:
            raise RuntimeInputError("the clip is empty (0 bytes)")
        source = io.BytesIO(source)
    elif isinstance(source, (str, Path)) and Path(source).is_file() and Path(source).stat().st_size == 0:
        raise RuntimeInputError(f"{Path(source).name} is empty (0 bytes)")
    try:
        info = sf.info(source)
    except Exception as exc:  # soundfile raises LibsndfileError, RuntimeError or TypeError
        raise RuntimeInputError(
            f"not a readable WAV or FLAC clip ({str(exc).strip() or type(exc).__name__})"
        ) from exc
    finally:
        if isinstance(source, io.BytesIO):
            source.seek(0)
    if info.samplerate <= 0:
        raise RuntimeInputError("the clip's header gives no sample rate")
    return info.frames / info.samplerate, int(info.samplerate), int(info.channels)


def load_audio(source: Any) -> tuple[np.ndarray, int]:
    """A WAV or FLAC clip (path, bytes or file object) as float32 [frames, channels] and its
    rate; clips over the duration limit are refused from their header, before decoding."""
    if not has_module("soundfile"):
        return read_wav(source)
    import io

    import soundfile as sf

    seconds, _, _ = clip_info(source)
    limit = max_clip_seconds()
    if seconds > limit:
        raise RuntimeInputError(
            f"the clip lasts {seconds:.0f} s, over the limit of {limit:g} s (ASCENT_MAX_CLIP_SECONDS); "
            "cut it into shorter clips"
        )
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    try:
        data, rate = sf.read(source, dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError, RuntimeError or TypeError
        raise RuntimeInputError(
            f"not a readable WAV or FLAC clip ({str(exc).strip() or type(exc).__name__})"
        ) from exc
    if data.shape[0] == 0:
        raise RuntimeInputError("the clip has 0 samples")
    return np.asarray(data, dtype=np.float32), int(rate)


def to_mono(data: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    """Channels mixed to mono, resampled to `target_rate` (polyphase, anti-aliased)."""
    mono = data.mean(axis=1) if data.ndim == 2 else data
    if rate != target_rate:
        g = math.gcd(rate, target_rate)
        if not has_module("scipy"):
            return resample_poly(mono, target_rate // g, rate // g).astype(np.float32)
        from scipy import signal

        mono = signal.resample_poly(mono, target_rate // g, rate // g)
    return np.asarray(mono, dtype=np.float32)


def fit_length(wave: np.ndarray, samples: int) -> np.ndarray:
    """Centre a clip in `samples`: pad both sides with silence, or keep the middle."""
    n = len(wave)
    if n >= samples:
        start = (n - samples) // 2
        return wave[start : start + samples]
    out = np.zeros(samples, dtype=np.float32)
    start = (samples - n) // 2
    out[start : start + n] = wave
    return out


def prepare_clip(source: Any, rate: int, samples: int) -> np.ndarray:
    """The one way a clip becomes model input: decode, mono, resample, centre to length."""
    data, sr = load_audio(source)
    return fit_length(to_mono(data, sr, rate), samples)


def create_session(path: str | Path, providers: Sequence[str] | None = None) -> Any:
    """An InferenceSession on the best provider this machine has (CUDA, else CPU).

    Check `session.get_providers()` for the one that runs: a provider that is available but
    cannot start (no driver) is dropped by falling back to the CPU.
    """
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    available = set(ort.get_available_providers())
    if not _cuda_driver_present():
        # The GPU build lists CUDA even where no driver is installed; asking for it then
        # only prints errors before the CPU takes over.
        available -= {"CUDAExecutionProvider", "TensorrtExecutionProvider"}
    chosen = [p for p in (providers or PREFERRED_PROVIDERS) if p in available]
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=chosen)
    except Exception:
        if chosen == ["CPUExecutionProvider"]:
            raise
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def all_outputs(
    path: str | Path, inputs: Sequence[np.ndarray], providers: Sequence[str] | None = None, batch: int = 64
) -> list[np.ndarray]:
    """Every output of the file over whole input arrays (in its input order), `batch` rows a call."""
    session = create_session(path, providers)
    names = [i.name for i in session.get_inputs()]
    parts = [
        session.run(None, {k: x[i : i + batch] for k, x in zip(names, inputs, strict=True)})
        for i in range(0, len(inputs[0]), batch)
    ]
    return [np.concatenate([np.asarray(p[j]) for p in parts]) for j in range(len(parts[0]))]


def outputs(
    path: str | Path, inputs: Sequence[np.ndarray], providers: Sequence[str] | None = None, batch: int = 64
) -> np.ndarray:
    """The file's first output over whole input arrays (in its input order), `batch` rows a call."""
    return all_outputs(path, inputs, providers, batch)[0]


def _cuda_driver_present() -> bool:
    import ctypes

    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


class Predictor:
    """An exported Ascent model, ready to predict."""

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None) -> None:
        self.path = Path(path)
        self.session = create_session(self.path, providers)
        meta = self.session.get_modelmeta().custom_metadata_map
        self.task: str = meta.get("ascent.task", "")
        self.labels: list[str] = json.loads(meta.get("ascent.labels", "[]"))
        self.inputs: list[dict[str, Any]] = json.loads(meta.get("ascent.inputs", "[]"))
        self.preprocess: str = meta.get("ascent.preprocess", "")
        self.run: dict[str, Any] = json.loads(meta.get("ascent.run", "{}"))
        self.tokenizer_spec: dict[str, Any] = json.loads(meta.get("ascent.tokenizer", "{}"))
        self._tokenizer: Any = None
        self.last_latency_ms = 0.0

    @property
    def provider(self) -> str:
        return str(self.session.get_providers()[0])

    @property
    def columns(self) -> list[str]:
        return [c for spec in self.inputs for c in spec.get("columns", [])]

    def encode_table(self, table: Mapping[str, Sequence[Any]]) -> dict[str, np.ndarray]:
        """Raw column values -> the model's input arrays (category text -> int64 codes)."""
        missing = [c for c in self.columns if c not in table]
        if missing:
            raise RuntimeInputError(
                f"missing column(s) {', '.join(missing)}; the model takes: {', '.join(self.columns)}"
            )
        feeds: dict[str, np.ndarray] = {}
        for spec in self.inputs:
            cols = spec["columns"]
            if spec["dtype"] == "float32":
                feeds[spec["name"]] = np.stack([_to_float(table[c]) for c in cols], axis=1).astype(np.float32)
            else:
                codes = spec["codes"]
                feeds[spec["name"]] = np.stack([_to_codes(table[c], codes[c]) for c in cols], axis=1).astype(
                    np.int64
                )
        return feeds

    def run_feeds(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        start = time.perf_counter()
        (out,) = self.session.run(None, dict(feeds))
        self.last_latency_ms = (time.perf_counter() - start) * 1000
        return np.asarray(out)

    def predict_table(self, table: Mapping[str, Sequence[Any]]) -> list[Prediction]:
        out = self.run_feeds(self.encode_table(table))
        return self.decode(out)

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) the model takes, from its input spec."""
        shape = self.inputs[0]["shape"]
        return int(shape[1]), int(shape[2])

    def predict_images(self, sources: Sequence[Any]) -> list[Prediction]:
        """Image files (paths, bytes or file objects), resized as in validation."""
        size = self.image_size
        try:
            batch = np.stack([load_image(s, size) for s in sources])
        except RuntimeInputError:
            raise
        except Exception as exc:  # a decoder error PIL raises past open_image's checks
            raise RuntimeInputError(f"cannot read an image: {type(exc).__name__}: {exc}") from exc
        return self.decode(self.run_feeds({self.inputs[0]["name"]: batch}))

    @property
    def tokenizer(self) -> Any:
        """The `tokenizers.Tokenizer` saved beside a text model (loaded once)."""
        if self._tokenizer is None:
            spec = self.tokenizer_spec
            file = self.path.parent / spec.get("file", "tokenizer.json")
            if not file.is_file():
                raise RuntimeInputError(f"{file.name} is missing beside {self.path.name}; copy both files")
            if not has_module("tokenizers"):
                self._tokenizer = PlainWordPiece.from_file(file, int(spec["max_length"]))
                return self._tokenizer
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(str(file))
            tok.no_padding()
            tok.enable_truncation(int(spec["max_length"]))
            self._tokenizer = tok
        return self._tokenizer

    def encode_texts(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Raw texts -> token ids and attention mask, padded to the longest text of the batch."""
        if not texts:
            raise RuntimeInputError("no text given")
        texts = [str(t) for t in texts]
        if any(not t.strip() for t in texts):
            raise RuntimeInputError("a text is empty; give at least one word")
        encoded = self.tokenizer.encode_batch(texts)
        width = max(len(e.ids) for e in encoded)
        ids = np.full((len(texts), width), int(self.tokenizer_spec["pad_id"]), dtype=np.int64)
        mask = np.zeros((len(texts), width), dtype=np.int64)
        for row, e in enumerate(encoded):
            ids[row, : len(e.ids)] = e.ids
            mask[row, : len(e.ids)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def tokens(self, text: str) -> list[str]:
        """The tokens a text becomes (after the cut), as the model sees them."""
        return list(self.tokenizer.encode(str(text)).tokens)

    def predict_texts(self, texts: Sequence[str]) -> list[Prediction]:
        return self.decode(self.run_feeds(self.encode_texts(texts)))

    @property
    def audio(self) -> tuple[int, int]:
        """(sample rate, samples per clip) an audio model takes."""
        spec = self.inputs[0]
        return int(spec["sample_rate"]), int(spec["shape"][1])

    def predict_audio(self, sources: Sequence[Any]) -> list[Prediction]:
        """WAV or FLAC clips (paths, bytes or file objects), prepared as in validation."""
        rate, samples = self.audio
        batch = np.stack([prepare_clip(s, rate, samples) for s in sources])
        return self.decode(self.run_feeds({self.inputs[0]["name"]: batch}))

    def _run_image(self, source: Any) -> list[np.ndarray]:
        """A detection or segmentation file's outputs for one image at its own size."""
        try:
            image = load_original(source)[None]
        except RuntimeInputError:
            raise
        except Exception as exc:  # a decoder error PIL raises past open_image's checks
            raise RuntimeInputError(f"cannot read an image: {type(exc).__name__}: {exc}") from exc
        if min(image.shape[1:3]) < 8:
            raise RuntimeInputError(
                f"the image is {image.shape[2]}x{image.shape[1]}; give one of at least 8x8 pixels"
            )
        start = time.perf_counter()
        out = self.session.run(None, {self.inputs[0]["name"]: image})
        self.last_latency_ms = (time.perf_counter() - start) * 1000
        return [np.asarray(o)[0] for o in out]

    def detect(self, source: Any, threshold: float = DEFAULT_THRESHOLD) -> list[Box]:
        """The objects found in one image (path, bytes or file object) scoring at least
        `threshold`, best first."""
        boxes, scores, labels = self._run_image(source)
        keep = scores >= threshold
        return [
            Box(self.labels[int(c)], float(s), (float(b[0]), float(b[1]), float(b[2]), float(b[3])))
            for b, s, c in zip(boxes[keep], scores[keep], labels[keep], strict=True)
        ]

    def segment(self, source: Any) -> Segmentation:
        """The class of every pixel of one image (path, bytes or file object)."""
        mask, confidence = self._run_image(source)
        counts = np.bincount(mask.reshape(-1), minlength=len(self.labels))[: len(self.labels)]
        shares = {label: float(c) / mask.size for label, c in zip(self.labels, counts, strict=True)}
        return Segmentation(mask, confidence, shares)

    def decode(self, out: np.ndarray) -> list[Prediction]:
        if self.task.endswith("regression"):
            return [Prediction(value=float(v)) for v in out.reshape(-1)]
        result = []
        for row in out:
            best = int(np.argmax(row))
            probs = {label: float(p) for label, p in zip(self.labels, row, strict=True)}
            result.append(Prediction(label=self.labels[best], probabilities=probs))
        return result


def _to_float(values: Sequence[Any]) -> np.ndarray:
    out = np.empty(len(values), dtype=np.float64)
    for i, v in enumerate(values):
        try:
            out[i] = float(v) if v is not None and v != "" else math.nan
        except (TypeError, ValueError):
            out[i] = math.nan
    return out


def _to_codes(values: Sequence[Any], categories: Sequence[str]) -> np.ndarray:
    """Code 0 is missing or unseen; category i has code i + 1."""
    table = {c: i + 1 for i, c in enumerate(categories)}
    return np.array([table.get(as_category(v) or "", 0) for v in values], dtype=np.int64)


# --- text generation -------------------------------------------------------------------------
# A generator file is one graph with a KV cache (core.tasks.generation.Step): called once with
# an empty cache on the prompt, then once for each new token with the cache it returned.


@dataclass(frozen=True)
class Token:
    """One generated token as it streams: its id, the text it adds, when it came."""

    id: int
    text: str
    ms: float  # since the call began


@dataclass
class Generation:
    text: str
    tokens: list[int]
    prompt_tokens: int
    first_token_ms: float  # the prompt read and the first token chosen
    ms_per_token: float  # each token after the first, on average
    stopped: str  # "end" (the model ended its answer), "stop" (a stop string), "length"


def render_chat(settings: Mapping[str, Any], messages: Sequence[Mapping[str, str]]) -> str:
    """The prompt text of a conversation with the assistant's turn opened, by the model's chat
    template (a sandboxed Jinja environment, as transformers renders it)."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise RuntimeInputError(f"the chat template refuses the conversation: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.globals["raise_exception"] = raise_exception
    template = env.from_string(str(settings["chat_template"]))
    return template.render(
        messages=[dict(m) for m in messages],
        add_generation_prompt=True,
        bos_token=settings.get("bos_token", ""),
        eos_token=settings.get("eos_token", ""),
    )


class Decoder:
    """A generator graph stepped with its cache, batch 1: `start(prompt ids)` and then
    `advance(token)` each return the next token's logits (float32 [vocab])."""

    def __init__(self, session: Any, settings: Mapping[str, Any]) -> None:
        shape = settings["cache"]
        self.session = session
        self.heads, self.dim = int(shape["heads"]), int(shape["dim"])
        self.past = [f"past.{i}.{kv}" for i in range(int(shape["layers"])) for kv in ("key", "value")]
        types = {i.name: i.type for i in session.get_inputs()} if hasattr(session, "get_inputs") else {}
        self.dtype = np.float16 if types.get(self.past[0]) == "tensor(float16)" else np.float32
        self.mask = np.zeros((1, 0), dtype=np.int64)
        self.cache: list[np.ndarray] = []

    def _run(self, ids: np.ndarray, cache: list[np.ndarray]) -> np.ndarray:
        self.mask = np.ones((1, self.mask.shape[1] + ids.shape[1]), dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": self.mask, **dict(zip(self.past, cache, strict=True))}
        out = self.session.run(None, feeds)
        self.cache = list(out[1:])
        return np.asarray(out[0][0, -1], dtype=np.float32)

    def start(self, ids: Sequence[int]) -> np.ndarray:
        self.mask = np.zeros((1, 0), dtype=np.int64)
        empty = np.zeros((1, self.heads, 0, self.dim), dtype=self.dtype)
        return self._run(np.asarray([list(ids)], dtype=np.int64), [empty] * len(self.past))

    def advance(self, token: int) -> np.ndarray:
        return self._run(np.asarray([[token]], dtype=np.int64), self.cache)


def choose_token(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> int:
    """Greedy at temperature 0; else sampled from the softmax at that temperature, kept to the
    smallest set of tokens whose probabilities add up to top_p."""
    if temperature <= 0:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / temperature
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if top_p < 1.0:
        order = np.argsort(-probs)
        keep = order[: int(np.searchsorted(np.cumsum(probs[order]), top_p)) + 1]
        kept = np.zeros_like(probs)
        kept[keep] = probs[keep]
        probs = kept / kept.sum()
    return int(rng.choice(len(probs), p=probs))


def greedy_tokens(
    session: Any, settings: Mapping[str, Any], ids: Sequence[int], n: int
) -> tuple[list[int], np.ndarray]:
    """Up to `n` greedy tokens after `ids` (ending at an end-of-answer token), and the logits
    the first one was chosen from."""
    decoder = Decoder(session, settings)
    ends = {int(t) for t in settings.get("eos_token_ids", [])}
    logits = first = decoder.start(ids)
    tokens: list[int] = []
    while len(tokens) < n:
        token = int(np.argmax(logits))
        tokens.append(token)
        if token in ends or len(tokens) == n:
            break
        logits = decoder.advance(token)
    return tokens, first


class Generator:
    """An exported Ascent text generator (task text-generation), ready to answer."""

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None, session: Any = None) -> None:
        from tokenizers import Tokenizer

        self.path = Path(path)
        self.session = session if session is not None else create_session(self.path, providers)
        meta = self.session.get_modelmeta().custom_metadata_map
        self.task: str = meta.get("ascent.task", "")
        if self.task != "text-generation":
            raise RuntimeInputError(
                f"{self.path.name} is a {self.task or 'non-Ascent'} model, not a text generator"
            )
        self.settings: dict[str, Any] = json.loads(meta["ascent.generation"])
        self.run: dict[str, Any] = json.loads(meta.get("ascent.run", "{}"))
        spec = json.loads(meta.get("ascent.tokenizer", "{}"))
        file = self.path.parent / spec.get("file", "tokenizer.json")
        if not file.is_file():
            raise RuntimeInputError(f"{file.name} is missing beside {self.path.name}; copy both files")
        self.tokenizer = Tokenizer.from_file(str(file))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()

    @property
    def provider(self) -> str:
        return str(self.session.get_providers()[0])

    def prompt_ids(self, prompt: str | Sequence[Mapping[str, str]]) -> list[int]:
        """Token ids of a user's message (or a whole conversation) with the chat template."""
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        if not messages or any(not str(m.get("content", "")).strip() for m in messages):
            raise RuntimeInputError("the prompt is empty; write a question or an instruction")
        text = render_chat(self.settings, messages)
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def stream(
        self,
        prompt: str | Sequence[Mapping[str, str]],
        *,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: Sequence[str] = (),
        seed: int = 0,
        result: Generation | None = None,
    ) -> Iterator[Token]:
        """The answer token by token as it is generated; `result` (when given) is filled in
        with the whole generation once it ends."""
        settings = self.settings
        limit = int(max_new_tokens if max_new_tokens is not None else settings["max_new_tokens"])
        temp = float(temperature if temperature is not None else settings["temperature"])
        nucleus = float(top_p if top_p is not None else settings["top_p"])
        if limit < 1:
            raise RuntimeInputError("max new tokens must be 1 or more")
        if temp < 0 or not 0 < nucleus <= 1:
            raise RuntimeInputError("temperature must be 0 or more and top-p in (0, 1]")
        ids = self.prompt_ids(prompt)
        context = int(settings["context"])
        if len(ids) >= context:
            raise RuntimeInputError(
                f"the prompt is {len(ids)} tokens, over the model's context of {context}; shorten it"
            )
        limit = min(limit, context - len(ids))
        ends = {int(t) for t in settings.get("eos_token_ids", [])}
        rng = np.random.default_rng(seed)
        decoder = Decoder(self.session, settings)
        began = time.perf_counter()
        logits = decoder.start(ids)
        tokens: list[int] = []
        shown = answer = ""
        stopped, first_ms = "length", 0.0
        while len(tokens) < limit:
            token = choose_token(logits, temp, nucleus, rng)
            now = (time.perf_counter() - began) * 1000
            if not tokens:
                first_ms = now
            if token in ends:
                stopped = "end"
                break
            tokens.append(token)
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            hit = min((text.find(s) for s in stop if s and s in text), default=-1)
            if hit >= 0:
                text, stopped = text[:hit], "stop"
            answer = text
            if len(text) > len(shown) and text.startswith(shown):
                yield Token(token, text[len(shown) :], now)
                shown = text
            if stopped == "stop" or len(tokens) == limit:
                break
            logits = decoder.advance(token)
        total = (time.perf_counter() - began) * 1000
        if result is not None:
            result.text, result.tokens, result.prompt_tokens = answer, tokens, len(ids)
            result.first_token_ms = first_ms
            result.ms_per_token = (total - first_ms) / max(1, len(tokens) - 1) if len(tokens) > 1 else 0.0
            result.stopped = stopped

    def generate(self, prompt: str | Sequence[Mapping[str, str]], **options: Any) -> Generation:
        """The whole answer at once (see `stream` for the options)."""
        result = Generation("", [], 0, 0.0, 0.0, "length")
        for _ in self.stream(prompt, result=result, **options):
            pass
        return result


@dataclass
class Transcript:
    text: str
    tokens: list[int]
    seconds: float  # of audio
    encode_ms: float  # the batch's encoder call, shared by its clips
    decode_ms: float  # the batch's decoding loop


def cache_names(layers: int) -> list[str]:
    """The decoder step's cache inputs: each layer's self-attention key and value, then its
    cross-attention key and value."""
    return [
        f"{kind}.{i}.{kv}" for kind in ("past", "cross") for i in range(layers) for kv in ("key", "value")
    ]


def decode_tokens(
    decoder: Any,
    cross: Sequence[np.ndarray],
    settings: Mapping[str, Any],
    feeds: Mapping[str, np.ndarray] | None = None,
    max_tokens: int | None = None,
    beams: int = 1,
) -> list[list[int]]:
    """Token ids an encoder-decoder export writes for a batch: the decoder step (decoder.onnx,
    or anything with its `run`) from the settings' prompt over the encoder's cross-attention
    keys and values, until the end token or `max_tokens` (the settings' limit when None).

    beams=1 is greedy; more keeps that many hypotheses per input and returns the one of highest
    log-probability per token. `feeds` are further decoder inputs with one row per input (the
    source's mask); the settings' suppressed tokens are never written."""
    shape = settings["cache"]
    layers, heads, dim = int(shape["layers"]), int(shape["heads"]), int(shape["dim"])
    limit = int(settings["max_new_tokens"] if max_tokens is None else max_tokens)
    end = int(settings["eos_token_id"])
    suppress = np.asarray(settings.get("suppress_tokens", []), dtype=np.int64)
    first = np.asarray(settings.get("begin_suppress_tokens", []), dtype=np.int64)
    batch, beams = cross[0].shape[0], max(1, int(beams))
    names = cache_names(layers)
    rows = batch * beams
    cross = [np.repeat(c, beams, axis=0) for c in cross] if beams > 1 else list(cross)
    extra = {k: np.repeat(v, beams, axis=0) for k, v in (feeds or {}).items()}
    past = [np.zeros((rows, heads, 0, dim), dtype=np.float32)] * (2 * layers)
    ids = np.tile(np.asarray(settings["prompt"], dtype=np.int64), (rows, 1))
    written = np.zeros((rows, 0), dtype=np.int64)
    scores = np.zeros((batch, beams), dtype=np.float64)
    scores[:, 1:] = -np.inf  # every beam starts as the same prompt: expand the first alone
    alive = np.ones(rows, dtype=bool)  # greedy: rows not yet ended
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch)]
    for step in range(limit):
        out = decoder.run(None, {"input_ids": ids, **dict(zip(names, [*past, *cross], strict=True)), **extra})
        logits = np.array(out[0][:, -1], dtype=np.float32)
        past = list(out[1:])
        logits[:, suppress] = -np.inf
        if step == 0:
            logits[:, first] = -np.inf
        if beams == 1:
            chosen = logits.argmax(axis=1)
            chosen = np.where(alive, chosen, -1)
            alive &= chosen != end
            written = np.concatenate([written, np.where(alive, chosen, -1)[:, None]], axis=1)
            if not alive.any():
                break
            ids = np.where(alive, chosen, end)[:, None].astype(np.int64)
            continue
        logp = logits - logits.max(axis=1, keepdims=True)
        logp = logp - np.log(np.exp(logp).sum(axis=1, keepdims=True))
        vocab = logp.shape[1]
        total = (scores[:, :, None] + logp.reshape(batch, beams, vocab)).reshape(batch, -1)
        best = np.argsort(-total, axis=1)[:, : 2 * beams]
        keep = np.zeros(rows, dtype=np.int64)
        chosen = np.full(rows, end, dtype=np.int64)
        for b in range(batch):
            taken = 0
            for flat in best[b]:
                score, beam, token = total[b, flat], int(flat // vocab), int(flat % vocab)
                if not np.isfinite(score):
                    break
                if token == end:
                    finished[b].append((score / (written.shape[1] + 1), written[b * beams + beam].tolist()))
                    continue
                keep[b * beams + taken], chosen[b * beams + taken] = b * beams + beam, token
                scores[b, taken] = score
                taken += 1
                if taken == beams:
                    break
            scores[b, taken:] = -np.inf
        written = np.concatenate([written[keep], chosen[:, None]], axis=1)
        past = [p[keep] for p in past]
        ids = chosen[:, None]
        # Done when each input has `beams` ended hypotheses better than any still growing could
        # become (log-probabilities only fall, so the best alive bound is its present score).
        if all(
            not np.isfinite(scores[b].max())
            or (
                len(finished[b]) >= beams
                and min(sorted(s for s, _ in finished[b])[-beams:])
                >= scores[b].max() / (written.shape[1] + 1)
            )
            for b in range(batch)
        ):
            break
    if beams == 1:
        return [[int(t) for t in row if t >= 0] for row in written]
    found = []
    for b in range(batch):
        options = finished[b] or [
            (scores[b, k] / max(1, written.shape[1]), written[b * beams + k].tolist()) for k in range(beams)
        ]
        found.append([int(t) for t in max(options, key=lambda o: o[0])[1]])
    return found


def greedy_transcripts(
    encoder: Any,
    decoder: Any,
    settings: Mapping[str, Any],
    waves: Sequence[np.ndarray],
    max_tokens: int | None = None,
    beams: int = 1,
) -> tuple[list[list[int]], float, float]:
    """Token ids for a batch of 16 kHz mono waves (each at most 30 s), from an encoder and a
    decoder step (ONNX Runtime sessions, or anything with their `run`), with Whisper's
    suppressed tokens; and the ms the encoder and the decoding loop took. Shorter waves are
    padded with silence to the longest: the encoder pads every wave to its 30-s window anyway."""
    longest = max(len(w) for w in waves)
    batch = np.zeros((len(waves), longest), dtype=np.float32)
    for row, wave in enumerate(waves):
        batch[row, : len(wave)] = wave
    began = time.perf_counter()
    cross = list(encoder.run(None, {"wave": batch}))
    encoded = time.perf_counter()
    tokens = decode_tokens(decoder, cross, settings, max_tokens=max_tokens, beams=beams)
    finished = time.perf_counter()
    return tokens, (encoded - began) * 1000, (finished - encoded) * 1000


class Transcriber:
    """An exported Ascent speech recogniser: model.onnx (wave to cross-attention keys and
    values) with decoder.onnx and tokenizer.json beside it."""

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None) -> None:
        from tokenizers import Tokenizer

        self.path = Path(path)
        self.encoder = create_session(self.path, providers)
        meta = self.encoder.get_modelmeta().custom_metadata_map
        self.task: str = meta.get("ascent.task", "")
        if self.task != "speech-recognition":
            raise RuntimeInputError(
                f"{self.path.name} is a {self.task or 'non-Ascent'} model, not a speech recogniser"
            )
        self.settings: dict[str, Any] = json.loads(meta["ascent.speech"])
        parts = {
            "decoder": self.path.parent / self.settings["decoder"],
            "tokenizer": self.path.parent / "tokenizer.json",
        }
        for file in parts.values():
            if not file.is_file():
                raise RuntimeInputError(
                    f"{file.name} is missing beside {self.path.name}; copy the three files"
                )
        self.decoder = create_session(parts["decoder"], providers)
        self.tokenizer = Tokenizer.from_file(str(parts["tokenizer"]))

    @property
    def provider(self) -> str:
        return str(self.encoder.get_providers()[0])

    def wave(self, source: Any) -> np.ndarray:
        """A clip (path, bytes or file object) as the 16 kHz mono wave the model takes; clips
        over its 30-s window are refused."""
        data, rate = load_audio(source)
        wave = to_mono(data, rate, int(self.settings["sample_rate"]))
        limit = float(self.settings["max_seconds"])
        if len(wave) > limit * int(self.settings["sample_rate"]):
            raise RuntimeInputError(
                f"the clip lasts {len(wave) / int(self.settings['sample_rate']):.1f} s, over the model's "
                f"{limit:g}-s window; cut it into shorter clips"
            )
        return wave

    def transcribe(self, sources: Sequence[Any], batch: int = 8, beams: int = 1) -> list[Transcript]:
        """Transcripts of clips, `batch` at a time; beams > 1 searches that many hypotheses."""
        waves = [self.wave(s) for s in sources]
        found: list[Transcript] = []
        for start in range(0, len(waves), batch):
            part = waves[start : start + batch]
            tokens, encode_ms, decode_ms = greedy_transcripts(
                self.encoder, self.decoder, self.settings, part, beams=beams
            )
            for wave, ids in zip(part, tokens, strict=True):
                text = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
                found.append(
                    Transcript(text, ids, len(wave) / int(self.settings["sample_rate"]), encode_ms, decode_ms)
                )
        return found


@dataclass
class Translation:
    text: str
    tokens: list[int]
    source_tokens: int
    encode_ms: float  # the batch's encoder call, shared by its sentences
    decode_ms: float  # the batch's decoding loop


class Translator:
    """An exported Ascent translation model: model.onnx (source tokens to cross-attention keys
    and values) with decoder.onnx and tokenizer.json beside it."""

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None) -> None:
        from tokenizers import Tokenizer

        self.path = Path(path)
        self.encoder = create_session(self.path, providers)
        meta = self.encoder.get_modelmeta().custom_metadata_map
        self.task: str = meta.get("ascent.task", "")
        if self.task != "translation":
            raise RuntimeInputError(
                f"{self.path.name} is a {self.task or 'non-Ascent'} model, not a translator"
            )
        self.settings: dict[str, Any] = json.loads(meta["ascent.translation"])
        parts = [self.path.parent / self.settings["decoder"], self.path.parent / "tokenizer.json"]
        for file in parts:
            if not file.is_file():
                raise RuntimeInputError(
                    f"{file.name} is missing beside {self.path.name}; copy the three files"
                )
        self.decoder = create_session(parts[0], providers)
        self.tokenizer = Tokenizer.from_file(str(parts[1]))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()

    @property
    def provider(self) -> str:
        return str(self.encoder.get_providers()[0])

    def encode(self, text: str) -> list[int]:
        """A sentence's token ids as the model reads them (the end token last); sentences over
        the model's positions are refused."""
        if not text.strip():
            raise RuntimeInputError("the text is empty; give a sentence to translate")
        ids = list(self.tokenizer.encode(text).ids)
        limit = int(self.settings["max_source_tokens"])
        if len(ids) > limit:
            raise RuntimeInputError(
                f"the text is {len(ids)} tokens, over the model's {limit}; translate it a sentence at a time"
            )
        return ids

    def tokens(
        self, ids: np.ndarray, mask: np.ndarray, max_tokens: int | None = None, beams: int = 1
    ) -> list[list[int]]:
        """Token ids of the translations of a padded batch of sources."""
        cross = list(self.encoder.run(None, {"input_ids": ids, "attention_mask": mask}))
        return decode_tokens(
            self.decoder, cross, self.settings, {"source_mask": mask}, max_tokens=max_tokens, beams=beams
        )

    def translate(
        self, texts: Sequence[str], batch: int = 16, beams: int = 1, max_tokens: int | None = None
    ) -> list[Translation]:
        """Translations of sentences, `batch` at a time; beams > 1 searches that many hypotheses."""
        encoded = [self.encode(t) for t in texts]
        pad = int(self.settings["pad_token_id"])
        found: list[Translation] = []
        for start in range(0, len(encoded), batch):
            part = encoded[start : start + batch]
            width = max(len(x) for x in part)
            ids = np.full((len(part), width), pad, dtype=np.int64)
            mask = np.zeros((len(part), width), dtype=np.int64)
            for row, x in enumerate(part):
                ids[row, : len(x)], mask[row, : len(x)] = x, 1
            began = time.perf_counter()
            cross = list(self.encoder.run(None, {"input_ids": ids, "attention_mask": mask}))
            encoded_at = time.perf_counter()
            out = decode_tokens(
                self.decoder, cross, self.settings, {"source_mask": mask}, max_tokens=max_tokens, beams=beams
            )
            finished = time.perf_counter()
            for x, tokens in zip(part, out, strict=True):
                text = self.tokenizer.decode(tokens, skip_special_tokens=True).strip()
                found.append(
                    Translation(
                        text, tokens, len(x), (encoded_at - began) * 1000, (finished - encoded_at) * 1000
                    )
                )
        return found


# Without Pillow, soundfile, scipy or tokenizers ------------------------------------------------
# A bundle's predict.py runs where only numpy and onnxruntime are installed. These stand in for
# the libraries then, giving the same arrays (tests compare them with the libraries' own): PNG,
# BMP and PPM images with Pillow's bilinear resize, WAV clips with scipy's polyphase resampling,
# and BERT-style WordPiece tokenizers. The studio always has the libraries.


def has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _read_bytes(source: Any) -> bytes:
    if isinstance(source, bytes):
        return source
    if isinstance(source, (str, Path)):
        try:
            return Path(source).read_bytes()
        except OSError as exc:
            raise RuntimeInputError(f"cannot read {Path(source).name}: {exc.strerror}") from exc
    data = source.read()
    return data if isinstance(data, bytes) else bytes(data)


def read_plain_image(source: Any) -> np.ndarray:
    """A PNG, BMP or binary PPM/PGM image as uint8 [H, W, 3] RGB (transparency on white),
    read with numpy alone; other formats need Pillow."""
    data = _read_bytes(source)
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return _read_png(data)
    if data.startswith(b"BM"):
        return _read_bmp(data)
    if data[:2] in (b"P5", b"P6"):
        return _read_pnm(data)
    raise RuntimeInputError(
        "not a PNG, BMP or PPM image; other formats (JPEG, WebP, GIF) need Pillow: pip install pillow"
    )


def _check_pixels(width: int, height: int) -> None:
    limit = max_image_pixels()
    if width <= 0 or height <= 0:
        raise RuntimeInputError("not a readable image (its header gives no size)")
    if width * height > limit:
        raise RuntimeInputError(
            f"the image is {width}x{height} ({width * height / 1e6:.0f} megapixels), over the "
            f"limit of {limit / 1e6:.0f} megapixels (ASCENT_MAX_IMAGE_PIXELS)"
        )


def _on_white(pixels: np.ndarray) -> np.ndarray:
    """[H, W, 1-4] uint8 (grey, grey+alpha, RGB, RGBA) -> RGB, alpha composited on white with
    Pillow's paste arithmetic (its rounded division by 255)."""
    channels = pixels.shape[2]
    colour = pixels[..., :3] if channels >= 3 else np.repeat(pixels[..., :1], 3, axis=2)
    if channels in (2, 4):
        alpha = pixels[..., -1:].astype(np.uint32)
        mixed = colour.astype(np.uint32) * alpha + 255 * (255 - alpha) + 128
        colour = ((mixed + (mixed >> 8)) >> 8).astype(np.uint8)
    return np.ascontiguousarray(colour, dtype=np.uint8)


def _read_png(data: bytes) -> np.ndarray:
    import struct
    import zlib

    pos, idat, palette, trns = 8, [], b"", b""
    header = b""
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = body
        elif kind == b"PLTE":
            palette = body
        elif kind == b"tRNS":
            trns = body
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if len(header) != 13 or not idat:
        raise RuntimeInputError("not a readable image (a PNG without its header or pixels)")
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    _check_pixels(width, height)
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(colour)
    if channels is None or depth != 8 or interlace:
        raise RuntimeInputError(
            "this PNG (interlaced, or not 8 bits per channel) needs Pillow: pip install pillow"
        )
    step = channels  # bytes per pixel
    stride = width * step
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error as exc:
        raise RuntimeInputError(f"not a readable image (its PNG data is damaged: {exc})") from exc
    if len(raw) < height * (stride + 1):
        raise RuntimeInputError("not a readable image (its PNG data is cut short)")
    out = np.zeros((height, stride), dtype=np.uint8)
    prior = np.zeros(stride, dtype=np.int32)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = np.frombuffer(raw, dtype=np.uint8, count=stride, offset=y * (stride + 1) + 1).astype(np.int32)
        if kind == 1:  # Sub: each byte adds the one a pixel before, a running sum per channel
            line = np.cumsum(line.reshape(width, step), axis=0).reshape(-1) & 255
        elif kind == 2:  # Up
            line = (line + prior) & 255
        elif kind in (3, 4):  # Average, Paeth: each pixel needs the one before, decoded
            row = bytearray(line.astype(np.uint8).tobytes())
            up = prior.tolist()
            for i in range(stride):
                left = row[i - step] if i >= step else 0
                if kind == 3:
                    row[i] = (row[i] + ((left + up[i]) >> 1)) & 255
                    continue
                corner = up[i - step] if i >= step else 0
                p = left + up[i] - corner
                pa, pb, pc = abs(p - left), abs(p - up[i]), abs(p - corner)
                best = left if pa <= pb and pa <= pc else up[i] if pb <= pc else corner
                row[i] = (row[i] + best) & 255
            line = np.frombuffer(bytes(row), dtype=np.uint8).astype(np.int32)
        elif kind != 0:
            raise RuntimeInputError(f"not a readable image (PNG filter {kind} is not one of 0-4)")
        out[y] = line
        prior = line
    pixels = out.reshape(height, width, channels)
    if colour == 3:
        table = np.frombuffer(palette, dtype=np.uint8).reshape(-1, 3)
        alpha = np.full(len(table), 255, dtype=np.uint8)
        alpha[: len(trns)] = np.frombuffer(trns[: len(table)], dtype=np.uint8)
        if pixels.max(initial=0) >= len(table):
            raise RuntimeInputError("not a readable image (a PNG pixel outside its palette)")
        index = pixels[..., 0]
        pixels = np.concatenate([table[index], alpha[index][..., None]], axis=2) if trns else table[index]
    return _on_white(pixels)


def _read_bmp(data: bytes) -> np.ndarray:
    import struct

    if len(data) < 54:
        raise RuntimeInputError("not a readable image (a BMP cut short)")
    (offset,) = struct.unpack("<I", data[10:14])
    width, height, _, bits, compression = struct.unpack("<iiHHI", data[18:34])
    if bits not in (24, 32) or compression != 0:
        raise RuntimeInputError("this BMP (under 24 bits, or compressed) needs Pillow: pip install pillow")
    rows = abs(height)
    _check_pixels(width, rows)
    step = bits // 8
    stride = (width * step + 3) & ~3
    if len(data) < offset + stride * rows:
        raise RuntimeInputError("not a readable image (a BMP cut short)")
    grid = np.frombuffer(data, dtype=np.uint8, count=stride * rows, offset=offset).reshape(rows, stride)
    pixels = grid[:, : width * step].reshape(rows, width, step)[..., 2::-1]  # BGR(A) -> RGB
    if height > 0:  # stored bottom row first
        pixels = pixels[::-1]
    return np.ascontiguousarray(pixels)


def _read_pnm(data: bytes) -> np.ndarray:
    import re

    found = re.match(
        rb"(P[56])\s+(?:#[^\n]*\n\s*)*(\d+)\s+(?:#[^\n]*\n\s*)*(\d+)\s+(?:#[^\n]*\n\s*)*(\d+)\s", data
    )
    if found is None:
        raise RuntimeInputError("not a readable image (a PPM/PGM without its header)")
    kind, width, height, top = found.group(1), *map(int, found.groups()[1:])
    _check_pixels(width, height)
    channels = 3 if kind == b"P6" else 1
    if top != 255:
        raise RuntimeInputError("this PPM (its samples not 8-bit, 0-255) needs Pillow: pip install pillow")
    count = width * height * channels
    if len(data) < found.end() + count:
        raise RuntimeInputError("not a readable image (a PPM cut short)")
    pixels = np.frombuffer(data, dtype=np.uint8, count=count, offset=found.end()).reshape(
        height, width, channels
    )
    return _on_white(pixels)


_PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed-point coefficients for 8-bit images


def _bilinear_weights(size_in: int, size_out: int) -> np.ndarray:
    """Pillow's bilinear resampling along one axis as an integer matrix [out, in] (its
    triangle filter widened by the scale when shrinking, in fixed point)."""
    scale = size_in / size_out
    filterscale = max(scale, 1.0)
    support = filterscale
    weights = np.zeros((size_out, size_in), dtype=np.float64)
    for xx in range(size_out):
        center = (xx + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), size_in)
        x = np.arange(lo, hi)
        w = np.clip(1.0 - np.abs((x - center + 0.5) / filterscale), 0.0, None)
        total = w.sum()
        weights[xx, lo:hi] = w / total if total else w
    return np.floor(weights * (1 << _PRECISION_BITS) + 0.5).astype(np.int64)


def resize_bilinear(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W, C] to `size` (h, w) with Pillow's bilinear filter and fixed-point rounding,
    the horizontal pass first (Pillow sometimes runs the vertical first when both change,
    which can move a value by 1)."""
    half = 1 << (_PRECISION_BITS - 1)
    out = pixels.astype(np.int64)
    if out.shape[1] != size[1]:
        w = _bilinear_weights(out.shape[1], size[1])
        out = np.clip((np.einsum("oi,hic->hoc", w, out) + half) >> _PRECISION_BITS, 0, 255)
    if out.shape[0] != size[0]:
        w = _bilinear_weights(out.shape[0], size[0])
        out = np.clip((np.einsum("oi,iwc->owc", w, out) + half) >> _PRECISION_BITS, 0, 255)
    return out.astype(np.uint8)


def mask_png_plain(mask: np.ndarray, n_classes: int) -> bytes:
    """`mask_png` written with zlib alone: a palette PNG of the class indices."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    height, width = mask.shape
    flat = [v for colour in palette(max(n_classes, 1)) for v in colour]
    rows = np.concatenate([np.zeros((height, 1), np.uint8), mask.astype(np.uint8)], axis=1)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0))
        + chunk(b"PLTE", bytes(flat + [255, 255, 255] * (256 - len(flat) // 3)))
        + chunk(b"IDAT", zlib.compress(rows.tobytes(), 9))
        + chunk(b"IEND", b"")
    )


def read_wav(source: Any) -> tuple[np.ndarray, int]:
    """A WAV clip (PCM 8-32 bits or float) as float32 [frames, channels] and its rate, scaled as
    soundfile does, read with numpy alone; FLAC needs soundfile."""
    import struct

    data = _read_bytes(source)
    if not data:
        raise RuntimeInputError("the clip is empty (0 bytes)")
    if data[:4] == b"fLaC":
        raise RuntimeInputError("reading FLAC needs soundfile: pip install soundfile (or give WAV clips)")
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise RuntimeInputError("not a readable WAV or FLAC clip (no RIFF/WAVE header)")
    pos, fmt, body = 12, b"", None
    while pos + 8 <= len(data):
        kind, (size,) = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])
        if kind == b"fmt ":
            fmt = data[pos + 8 : pos + 8 + size]
        elif kind == b"data":
            body = data[pos + 8 : pos + 8 + size]
            break
        pos += 8 + size + (size & 1)
    if len(fmt) < 16 or body is None:
        raise RuntimeInputError("not a readable WAV or FLAC clip (no fmt or data chunk)")
    code, channels, rate, _, _, bits = struct.unpack("<HHIIHH", fmt[:16])
    if code == 0xFFFE and len(fmt) >= 26:  # WAVE_FORMAT_EXTENSIBLE: the real code opens its GUID
        (code,) = struct.unpack("<H", fmt[24:26])
    if rate <= 0 or channels <= 0:
        raise RuntimeInputError("the clip's header gives no sample rate")
    width = bits // 8
    frames = len(body) // (width * channels) if width else 0
    seconds, limit = frames / rate, max_clip_seconds()
    if seconds > limit:
        raise RuntimeInputError(
            f"the clip lasts {seconds:.0f} s, over the limit of {limit:g} s (ASCENT_MAX_CLIP_SECONDS); "
            "cut it into shorter clips"
        )
    if frames == 0:
        raise RuntimeInputError("the clip has 0 samples")
    raw = np.frombuffer(body, dtype=np.uint8, count=frames * channels * width)
    if code == 3 and bits in (32, 64):
        samples = raw.view("<f4" if bits == 32 else "<f8").astype(np.float32)
    elif code == 1 and bits == 8:
        samples = (raw.astype(np.float32) - 128.0) / 128.0
    elif code == 1 and bits in (16, 24, 32):
        wide = np.zeros((raw.size // width, 4), dtype=np.uint8)
        wide[:, 4 - width :] = raw.reshape(-1, width)  # little-endian bytes at the top of an int32
        samples = (wide.view("<i4").reshape(-1) / 2.0**31).astype(np.float32)
    else:
        raise RuntimeInputError(
            f"this WAV (format {code}, {bits} bits) needs soundfile: pip install soundfile"
        )
    return samples.reshape(frames, channels), int(rate)


def resample_poly(x: np.ndarray, up: int, down: int) -> np.ndarray:
    """scipy.signal.resample_poly(x, up, down) for a 1-D signal with numpy alone: the same
    Kaiser (beta 5) low-pass filter, applied at the output samples only."""
    g = math.gcd(up, down)
    up, down = up // g, down // g
    if up == down == 1:
        return x.astype(np.float64)
    n_in = len(x)
    n_out = n_in * up // down + bool(n_in * up % down)
    rate = max(up, down)
    half = 10 * rate
    taps = 2 * half + 1
    m = np.arange(taps) - (taps - 1) / 2
    h = np.sinc(m / rate) / rate * np.kaiser(taps, 5.0)
    h = h / h.sum() * up
    pre = down - half % down
    skip = (half + pre) // down
    post = 0
    while ((n_in - 1) * up + taps + pre + post - 1) // down + 1 < n_out + skip:
        post += 1
    h = np.concatenate([np.zeros(pre), h, np.zeros(post)])
    # y[k] = sum over inputs n of h[t - n*up] * x[n], t = k*down: every input within the filter
    t = (np.arange(n_out) + skip) * down
    last = t // up
    y = np.zeros(n_out, dtype=np.float64)
    signal = x.astype(np.float64)
    for back in range(len(h) // up + 1):
        n = last - back
        tap = t - n * up
        ok = (n >= 0) & (n < n_in) & (tap < len(h))
        y[ok] += h[tap[ok]] * signal[n[ok]]
    return y


@dataclass(frozen=True)
class PlainEncoding:
    ids: list[int]
    tokens: list[str]


_CJK = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)


class PlainWordPiece:
    """A BERT-style tokenizer.json (BertNormalizer, BertPreTokenizer, WordPiece, and a
    [CLS] ... [SEP] template or none) encoded as the tokenizers library does, in Python alone.
    Other tokenizers need that library."""

    def __init__(self, spec: Mapping[str, Any], max_length: int | None = None) -> None:
        normalizer, pre, model = (
            spec.get("normalizer") or {},
            spec.get("pre_tokenizer") or {},
            spec.get("model") or {},
        )
        post = spec.get("post_processor") or {}
        if (
            normalizer.get("type") != "BertNormalizer"
            or pre.get("type") != "BertPreTokenizer"
            or model.get("type") != "WordPiece"
            or post.get("type") not in (None, "TemplateProcessing", "BertProcessing")
        ):
            raise RuntimeInputError(
                "this model's tokenizer needs the tokenizers package: pip install tokenizers"
            )
        self.clean = bool(normalizer.get("clean_text", True))
        self.chinese = bool(normalizer.get("handle_chinese_chars", True))
        self.lowercase = bool(normalizer.get("lowercase", True))
        accents = normalizer.get("strip_accents")
        self.strip_accents = self.lowercase if accents is None else bool(accents)
        self.vocab: dict[str, int] = dict(model["vocab"])
        self.unk = str(model.get("unk_token", "[UNK]"))
        self.prefix = str(model.get("continuing_subword_prefix", "##"))
        self.longest = int(model.get("max_input_chars_per_word", 100))
        self.before: list[tuple[str, int]] = []
        self.after: list[tuple[str, int]] = []
        if post.get("type") == "BertProcessing":
            cls, sep = post["cls"], post["sep"]
            self.before, self.after = [(str(cls[0]), int(cls[1]))], [(str(sep[0]), int(sep[1]))]
        elif post.get("type") == "TemplateProcessing":
            specials = post.get("special_tokens", {})
            seen_sequence = False
            for piece in post.get("single", []):
                if "Sequence" in piece:
                    seen_sequence = True
                    continue
                name = piece["SpecialToken"]["id"]
                token = (specials[name]["tokens"][0], int(specials[name]["ids"][0]))
                (self.after if seen_sequence else self.before).append(token)
        # Added tokens ([CLS], [PAD], ...) written in a text are themselves, before normalizing.
        self.added = {
            str(t["content"]): int(t["id"])
            for t in spec.get("added_tokens") or []
            if not t.get("normalized", False) and not t.get("single_word") and not t.get("lstrip")
        }
        self.max_length = max_length

    @classmethod
    def from_file(cls, path: str | Path, max_length: int | None = None) -> PlainWordPiece:
        try:
            spec = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RuntimeInputError(f"cannot read {Path(path).name}: {exc}") from exc
        return cls(spec, max_length)

    def _normalize(self, text: str) -> str:
        import unicodedata

        out = []
        for ch in text:
            if self.clean:
                if ch in ("\0", "\ufffd") or (
                    ch not in "\t\n\r" and unicodedata.category(ch).startswith("C")
                ):
                    continue
                if ch.isspace():
                    ch = " "
            if self.chinese and any(lo <= ord(ch) <= hi for lo, hi in _CJK):
                out.append(f" {ch} ")
                continue
            out.append(ch)
        normal = "".join(out)
        if self.strip_accents:
            normal = "".join(
                c for c in unicodedata.normalize("NFD", normal) if not unicodedata.category(c).startswith("M")
            )
        return normal.lower() if self.lowercase else normal

    @staticmethod
    def _words(text: str) -> list[str]:
        import unicodedata

        words: list[str] = []
        current: list[str] = []
        for ch in text:
            if ch.isspace():
                if current:
                    words.append("".join(current))
                    current = []
            elif (
                ch.isascii() and not ch.isalnum() and ch.isprintable() and ch != " "
            ) or unicodedata.category(ch).startswith("P"):
                if current:
                    words.append("".join(current))
                    current = []
                words.append(ch)
            else:
                current.append(ch)
        if current:
            words.append("".join(current))
        return words

    def _pieces(self, word: str) -> list[str]:
        if len(word) > self.longest:
            return [self.unk]
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else self.prefix + word[start:end]
                if piece in self.vocab:
                    break
                end -= 1
            else:
                return [self.unk]
            pieces.append(piece)
            start = end
        return pieces

    def encode(self, text: str) -> PlainEncoding:
        import re

        parts = [str(text)]
        if self.added:
            pattern = "|".join(re.escape(t) for t in sorted(self.added, key=len, reverse=True))
            parts = re.split(f"({pattern})", str(text))
        tokens = []
        for i, part in enumerate(parts):
            if i % 2:  # an added token, as written
                tokens.append(part)
            else:
                tokens.extend(p for word in self._words(self._normalize(part)) for p in self._pieces(word))
        if self.max_length is not None:
            tokens = tokens[: max(self.max_length - len(self.before) - len(self.after), 0)]
        unknown = self.vocab.get(self.unk, 0)
        ids = [self.added[t] if t in self.added else self.vocab.get(t, unknown) for t in tokens]
        return PlainEncoding(
            [i for _, i in self.before] + ids + [i for _, i in self.after],
            [t for t, _ in self.before] + tokens + [t for t, _ in self.after],
        )

    def encode_batch(self, texts: Sequence[str]) -> list[PlainEncoding]:
        return [self.encode(t) for t in texts]
