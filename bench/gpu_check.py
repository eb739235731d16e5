"""The CUDA paths of speech and translation runs on a GPU machine: each run through the CLI as a
user would (AMP, the loop, greedy decoding on the GPU, the export and its check), then a
Whisper-tiny training-step throughput in fp32 and bf16, and ONNX Runtime's providers.

    ASCENT_GPU_CHECK_FILES=DIR python3 bench/gpu_check.py [cuda|cpu] [quick]

DIR holds what a bare GPU machine lacks: enes.csv (the Home page's Apertium pairs), speech.zip
(an audiofolder zip of read clips, as tests/test_speech.py builds from pocketsphinx-testdata)
and whisper/ (the converted Whisper tiny.en's config, generation config, preprocessor config and
tokenizer files, without the weights: random ones of the same shape are made there). Set
ASCENT_HOME to a throwaway folder; ONLY_SPEECH=1 skips the translation run. Figures from an
H200: docs/benchmarks.md, "Speech and translation on a GPU"."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

DEV = sys.argv[1] if len(sys.argv) > 1 else "cuda"
QUICK = len(sys.argv) > 2
HERE = Path(os.environ.get("ASCENT_GPU_CHECK_FILES", ".devcheck"))


def cli(*args: str, timeout: int = 900) -> dict:
    began = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-m", "core", *args, "--json"], capture_output=True, text=True, timeout=timeout
    )
    if p.returncode != 0:
        print("FAILED", args, p.stderr[-3000:], flush=True)
        raise SystemExit(1)
    out = json.loads(p.stdout)
    out["_seconds"] = round(time.perf_counter() - began, 1)
    return out


def show(run_id: int, keys: list[str]) -> None:
    run = cli("runs", "show", str(run_id))
    m = run.get("metrics") or {}
    print(f"run {run_id}: {run['status']} on {run.get('device')} {run.get('error') or ''}")
    print("   " + ", ".join(f"{k}={m.get(k)}" for k in keys))
    log = Path(os.environ["ASCENT_HOME"]) / "runs" / str(run_id) / "run.log"
    for line in log.read_text().splitlines():
        if (
            line.startswith(("epoch", "exported", "training", "LoRA", "data:", "precision", "autocast"))
            or "bf16" in line
            or "AMP" in line
        ):
            print("   | " + line[:220])
    sys.stdout.flush()


import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

print(
    f"torch {torch.__version__}, cuda {torch.version.cuda}, available {torch.cuda.is_available()}, "
    f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-'}; transformers {transformers.__version__}; "
    f"onnxruntime {ort.__version__} providers {ort.get_available_providers()}",
    flush=True,
)

# 1. Translation: marian-small from scratch on the Apertium pairs.
ds = cli("datasets", "add", str(HERE / "enes.csv"))["id"]
epochs = "1" if QUICK else "12"
t = (
    {"_seconds": 0, "id": 0}
    if os.environ.get("ONLY_SPEECH")
    else cli("train", "--dataset", str(ds), "--device", DEV, "--epochs", epochs, "--wait", "--timeout", "900")
)
if t["id"]:
    print(f"translation run: {t['_seconds']} s wall (worker start, training, export)")
    show(t["id"], ["val_bleu", "val_chrf", "export_translation_agreement", "export_max_abs_diff"])

# 2. Speech: a Whisper of tiny.en's shape and tokenizer (random weights: the real ones are too
# large to carry here) fine-tuned whole, then with LoRA, on ten read clips.
from transformers import WhisperConfig, WhisperForConditionalGeneration  # noqa: E402

folder = Path("/tmp/whisper-random")
shutil.copytree(HERE / "whisper", folder, dirs_exist_ok=True)
torch.manual_seed(0)
WhisperForConditionalGeneration(WhisperConfig.from_pretrained(folder)).save_pretrained(folder)
shutil.copy(HERE / "whisper" / "generation_config.json", folder)  # Whisper's own: prompt tokens
sp = cli("datasets", "add", str(HERE / "speech.zip"))["id"]
for extra in [["--finetune", "lora"]] if QUICK else [[], ["--finetune", "lora"]]:
    r = cli(
        "train",
        "--dataset",
        str(sp),
        "--model",
        "hf-whisper",
        "--weights",
        str(folder),
        "--device",
        DEV,
        "--epochs",
        "2",
        "--batch-size",
        "4",
        *extra,
        "--wait",
        "--timeout",
        "900",
    )
    print(f"speech run {' '.join(extra) or 'full'}: {r['_seconds']} s wall")
    show(r["id"], ["val_wer", "val_cer", "export_transcript_agreement", "export_max_abs_diff"])
    last = r["id"]

# 3. Two processes on one GPU are refused in one line (DDP takes one GPU per process).
p = subprocess.run(
    [
        sys.executable,
        "-m",
        "core",
        "train",
        "--dataset",
        str(ds),
        "--device",
        DEV,
        "--processes",
        "2",
        "--epochs",
        "1",
        "--wait",
        "--timeout",
        "300",
        "--json",
    ],
    capture_output=True,
    text=True,
)
print(
    "two processes:",
    p.returncode,
    (p.stderr.strip().splitlines() or ["-"])[-1][:300],
    p.stdout[-300:].replace("\n", " "),
)

# 4. Whisper-tiny training steps per second, batch 16 of 10-s clips, fp32 against bf16 autocast.
if DEV == "cuda":
    from core.models.speech import WhisperFeatures

    model = WhisperForConditionalGeneration.from_pretrained(folder).to(DEV).train()
    feats = WhisperFeatures(80).to(DEV)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    waves = torch.randn(16, 160_000, device=DEV) * 0.1
    ids = torch.randint(0, 50000, (16, 40), device=DEV)
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        for i in range(13):
            if i == 3:
                torch.cuda.synchronize()
                began = time.perf_counter()
            with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = model(input_features=feats(waves), decoder_input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
        torch.cuda.synchronize()
        step = (time.perf_counter() - began) / 10
        print(
            f"whisper-tiny train step {name}: {step * 1000:.1f} ms, {16 / step:.0f} clips/s "
            f"(peak memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB)",
            flush=True,
        )

# 5. The exported transcriber on ONNX Runtime's providers.
from core.runtime import Transcriber  # noqa: E402

clips = sorted(Path("/tmp/clips").glob("*.wav")) if Path("/tmp/clips").exists() else []
if not clips:
    import zipfile

    with zipfile.ZipFile(HERE / "speech.zip") as z:
        z.extractall("/tmp/clips")
    clips = sorted(Path("/tmp/clips").rglob("*.wav"))
path = Path(os.environ["ASCENT_HOME"]) / "runs" / str(last) / "model.onnx"
for providers in (["CUDAExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"]):
    try:
        tr = Transcriber(path, providers)
    except Exception as exc:
        print("transcriber", providers[0], "failed:", exc)
        continue
    tr.transcribe(clips[:2], batch=2)
    began = time.perf_counter()
    out = tr.transcribe(clips, batch=len(clips))
    wall = time.perf_counter() - began
    audio = sum(o.seconds for o in out)
    print(
        f"transcriber asked {providers[0]}: session uses {tr.encoder.get_providers()}; {len(clips)} clips "
        f"in {wall:.2f} s, real-time factor {wall / audio:.4f}",
        flush=True,
    )
