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
    from PIL import Image

    with open_image(source) as opened:
        img = _rgb(opened).resize((size[1], size[0]), Image.Resampling.BILINEAR)
        return np.asarray(img, dtype=np.uint8).copy()


def load_original(source: Any) -> np.ndarray:
    """An image file as uint8 [H, W, 3] RGB at its own size (EXIF rotation applied, transparency
    on white): what detection and segmentation files take, resizing in their graph."""
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
        from scipy.signal import resample_poly

        g = math.gcd(rate, target_rate)
        mono = resample_poly(mono, target_rate // g, rate // g)
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
            from tokenizers import Tokenizer

            spec = self.tokenizer_spec
            file = self.path.parent / spec.get("file", "tokenizer.json")
            if not file.is_file():
                raise RuntimeInputError(f"{file.name} is missing beside {self.path.name}; copy both files")
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
