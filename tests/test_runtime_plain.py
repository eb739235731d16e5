"""The runtime without Pillow, soundfile, scipy or tokenizers (a bundle's bare Python): its own
PNG/BMP/PPM reader, bilinear resize, palette PNG writer, WAV reader, polyphase resampler and
WordPiece tokenizer give what the libraries give, on files the libraries write."""

from __future__ import annotations

import io
import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image
from scipy import signal
from tokenizers import Tokenizer

from core import runtime as rt


def _saved(img: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (37, 53, 4), dtype=np.uint8)


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        *[("RGB", "PNG"), ("RGBA", "PNG"), ("L", "PNG"), ("LA", "PNG"), ("P", "PNG"), ("PT", "PNG")],
        *[("RGB", "BMP"), ("RGBA", "BMP"), ("RGB", "PPM"), ("L", "PPM")],
    ],
)
def test_images_read_as_pillow_reads_them(pixels: np.ndarray, mode: str, fmt: str) -> None:
    """Grey, grey+alpha, RGB, RGBA and palette PNGs (one with a transparent entry, composited on
    white), 24/32-bit BMPs and PPM/PGMs: the same uint8 RGB pixels as the studio's Pillow path."""
    options: dict[str, object] = {}
    if mode in ("P", "PT"):
        img = Image.fromarray(pixels[..., :3]).convert("P", palette=Image.Palette.ADAPTIVE, colors=50)
        options = {"transparency": 3} if mode == "PT" else {}
    elif mode in ("RGB", "RGBA"):
        img = Image.fromarray(pixels[..., : len(mode)], mode)
    else:
        img = Image.fromarray(pixels[..., :3]).convert(mode)
    data = _saved(img, fmt, **options)
    plain = rt.read_plain_image(data)
    assert plain.dtype == np.uint8 and plain.shape == (37, 53, 3)
    np.testing.assert_array_equal(plain, rt.load_original(data))
    if mode == "PT":  # the transparent palette entry became white, as in the studio
        index = np.asarray(img) == 3
        assert index.any() and (plain[index] == 255).all()


def test_every_png_filter_is_undone() -> None:
    """Rows filtered None, Sub, Up, Average and Paeth (written here, one filter per row) decode
    to the pixels."""
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (5, 9, 3), dtype=np.uint8)
    step, rows, prior = 3, [], np.zeros(27, dtype=np.int64)
    for kind, row in enumerate(image.reshape(5, -1).astype(np.int64)):
        left = np.concatenate([np.zeros(step, np.int64), row[:-step]])
        corner = np.concatenate([np.zeros(step, np.int64), prior[:-step]])
        p = left + prior - corner
        pa, pb, pc = abs(p - left), abs(p - prior), abs(p - corner)
        paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prior, corner))
        predicted = [np.zeros_like(row), left, prior, (left + prior) // 2, paeth][kind]
        rows.append(bytes([kind]) + ((row - predicted) & 255).astype(np.uint8).tobytes())
        prior = row

    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    header = (9).to_bytes(4, "big") + (5).to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"".join(rows)))
    png += chunk(b"IEND", b"")
    np.testing.assert_array_equal(rt.read_plain_image(png), image)
    np.testing.assert_array_equal(rt.load_original(png), image)  # Pillow reads the file alike


@pytest.mark.parametrize(
    ("data", "said"),
    [
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 10, "without its header or pixels"),
        (b"GIF89a....", r"other formats \(JPEG, WebP, GIF\) need Pillow"),
        (b"P6\n4 4\n255\n" + b"\x00" * 5, "a PPM cut short"),
        (b"BM" + b"\x00" * 60, "under 24 bits, or compressed"),
    ],
)
def test_unreadable_images_say_why(data: bytes, said: str) -> None:
    with pytest.raises(rt.RuntimeInputError, match=said):
        rt.read_plain_image(data)


def test_a_damaged_png_and_an_interlaced_one_are_refused(pixels: np.ndarray) -> None:
    good = _saved(Image.fromarray(pixels[..., :3]), "PNG")
    start = good.index(b"IDAT") + 4
    damaged = good[:start] + b"\xff" * 40 + good[start + 40 :]
    with pytest.raises(rt.RuntimeInputError, match="damaged|cut short"):
        rt.read_plain_image(damaged)
    # The same header saying Adam7 (its last byte), with its checksum made again.
    body = good[12:29][:-1] + b"\x01"
    interlaced = good[:12] + body + zlib.crc32(body).to_bytes(4, "big") + good[33:]
    with pytest.raises(rt.RuntimeInputError, match="needs Pillow: pip install pillow"):
        rt.read_plain_image(interlaced)


def test_the_pixel_limit_holds_without_pillow(pixels: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASCENT_MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(rt.RuntimeInputError, match="over the limit of 0 megapixels"):
        rt.read_plain_image(_saved(Image.fromarray(pixels[..., :3]), "PNG"))


def test_resize_is_pillows_bilinear_within_one_level() -> None:
    """One axis changed: Pillow's values exactly. Both changed: at most 1 apart (Pillow 13 runs
    some of those vertical pass first), on at most a small share of values."""
    rng = np.random.default_rng(2)
    for _ in range(30):
        h, w = (int(v) for v in rng.integers(6, 90, 2))
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        data = _saved(Image.fromarray(image), "PNG")
        for size in [(h, int(rng.integers(5, 120))), (int(rng.integers(5, 120)), w)]:
            np.testing.assert_array_equal(rt.resize_bilinear(image, size), rt.load_image(data, size))
        size = (int(rng.integers(5, 120)), int(rng.integers(5, 120)))
        diff = np.abs(rt.resize_bilinear(image, size).astype(int) - rt.load_image(data, size))
        assert diff.max() <= 1 and diff.mean() < 0.5, (h, w, size)


def test_a_plain_mask_png_is_the_one_pillow_writes() -> None:
    mask = np.random.default_rng(3).integers(0, 4, (20, 30)).astype(np.uint8)
    plain = Image.open(io.BytesIO(rt.mask_png_plain(mask, 4)))
    pillow = Image.open(io.BytesIO(rt.mask_png(mask, 4)))
    assert plain.mode == pillow.mode == "P"
    np.testing.assert_array_equal(np.asarray(plain), mask)
    np.testing.assert_array_equal(np.asarray(plain.convert("RGB")), np.asarray(pillow.convert("RGB")))


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"])
def test_wav_clips_read_as_soundfile_reads_them(subtype: str) -> None:
    wave = np.random.default_rng(4).normal(0, 0.3, (800, 2)).clip(-1, 1).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, wave, 22_050, format="WAV", subtype=subtype)
    plain, rate = rt.read_wav(buf.getvalue())
    ref, ref_rate = sf.read(io.BytesIO(buf.getvalue()), dtype="float32", always_2d=True)
    assert rate == ref_rate == 22_050
    np.testing.assert_array_equal(plain, ref)


def test_clips_without_soundfile_say_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(100, np.float32), 16_000, format="FLAC")
    with pytest.raises(rt.RuntimeInputError, match="reading FLAC needs soundfile: pip install soundfile"):
        rt.read_wav(buf.getvalue())
    with pytest.raises(rt.RuntimeInputError, match="empty"):
        rt.read_wav(b"")
    with pytest.raises(rt.RuntimeInputError, match="no RIFF/WAVE header"):
        rt.read_wav(b"not audio at all")
    monkeypatch.setenv("ASCENT_MAX_CLIP_SECONDS", "1")
    buf = io.BytesIO()
    sf.write(buf, np.zeros(48_000, np.float32), 16_000, format="WAV")
    with pytest.raises(rt.RuntimeInputError, match="lasts 3 s, over the limit of 1 s"):
        rt.read_wav(buf.getvalue())


@pytest.mark.parametrize(("up", "down"), [(160, 441), (2, 1), (16_000, 22_050), (16_000, 48_000), (3, 7)])
def test_resampling_is_scipys(up: int, down: int) -> None:
    x = np.random.default_rng(5).standard_normal(14_700)
    got, want = rt.resample_poly(x, up, down), signal.resample_poly(x, up, down)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-12)


TEXTS = [
    "Hello, world! It's a fine day.",
    "Café déjà vu — naïve façade",
    "中文字符测试 mixed with English",
    "tabs\tand\nnewlines\r\nand\x00nulls\x07bells",
    "supercalifragilisticexpialidocious" * 5,
    "$100 + 20% = ~ <tag> | a^b `code` @user #hash",
    "ÀÉÎÕÜ ßtraße İstanbul ǅ",
    "emoji 😀 and ☃ snow",
    "   leading and trailing   ",
    "x" * 120,
    "don't stop-believing... (yes) [CLS] [SEP] [PAD]",
    "\u200bzero\u200dwidth\ufeffbom",
]


def _tokenizer_files(tmp_path: Path) -> list[Path]:
    """MiniLM's tokenizer as a MiniLM run saves it, and one learnt as a text-cnn run learns it."""
    from core.models.text import minilm_path, prepare_tokenizer, train_wordpiece

    corpus = ["the quick brown fox jumps over the lazy dog", "a café sells coffee and tea", "sport news"] * 30
    learnt, mini = tmp_path / "learnt.json", tmp_path / "minilm.json"
    train_wordpiece(corpus, 200).save(str(learnt))
    prepare_tokenizer(Tokenizer.from_file(str(Path(minilm_path()) / "tokenizer.json"))).save(str(mini))
    return [learnt, mini]


def test_wordpiece_encodes_as_the_tokenizers_library(tmp_path: Path) -> None:
    """Accents, CJK, control characters, punctuation, over-long words, special tokens written in
    the text, and the cut at the model's length: ids and tokens alike."""
    files = _tokenizer_files(tmp_path)
    assert json.loads(files[1].read_text())["post_processor"]["type"] == "TemplateProcessing"
    for file in files:
        for length in (16, 128):
            ref = Tokenizer.from_file(str(file))
            ref.no_padding()
            ref.enable_truncation(length)
            plain = rt.PlainWordPiece.from_file(file, length)
            for text in TEXTS:
                want, got = ref.encode(text), plain.encode(text)
                assert (got.ids, got.tokens) == (want.ids, want.tokens), (file.name, length, text)


def test_other_tokenizers_need_the_library(tmp_path: Path) -> None:
    from tokenizers import models, pre_tokenizers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel()
    bpe.save(str(tmp_path / "bpe.json"))
    with pytest.raises(rt.RuntimeInputError, match="needs the tokenizers package: pip install tokenizers"):
        rt.PlainWordPiece.from_file(tmp_path / "bpe.json")
