"""Does fine-tuning teach Whisper the Orbly sample's made-up names?

Builds the "Orbly spoken" Home sample (24 sentences with made-up names, two espeak-ng voices) in
a throwaway ASCENT_HOME, measures the base Whisper tiny.en on the run's held-back clips, then
trains the sample's quick start (as the Home page does) and prints the word and character error
rates after each epoch, the time, and the base and trained transcripts of the fixed clips.

    python bench/speech.py [--epochs 3] [--finetune lora]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="instead of the quick start's")
    parser.add_argument(
        "--finetune", choices=("full", "lora"), default=None, help="instead of the quick start's"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["ASCENT_HOME"] = tmp
        os.environ.setdefault("ASCENT_DEVICE", "cpu")
        from core import jobs
        from core.config import RunConfig
        from core.data.samples import SAMPLES, add_sample
        from core.execute import execute_run
        from core.tasks import get_task
        from core.train import evaluate

        dataset = add_sample("orbly-speech")
        quick = dict(SAMPLES["orbly-speech"].quick_start)
        if args.epochs:
            quick["epochs"] = args.epochs
        if args.finetune:
            quick["finetune"] = args.finetune
        run = jobs.submit(jobs.config_for(dataset.id, **quick))
        cfg = RunConfig.model_validate(jobs.get_run(run.id).config)
        base = evaluate(get_task(cfg.task).prepare(dataset, cfg, "cpu"))
        claimed = jobs.claim("bench")
        assert claimed is not None and claimed.id == run.id
        began = time.perf_counter()
        assert execute_run(run.id) == 0, jobs.get_run(run.id).error
        seconds = time.perf_counter() - began
        history = [p for p in jobs.metric_history(run.id) if p.key in ("val_wer", "val_cer")]
        samples = [
            json.loads(line) for line in (jobs.run_dir(run.id) / "samples.jsonl").read_text().splitlines()
        ]
        done = jobs.get_run(run.id)
    print(
        f"Orbly spoken: {dataset.n_items} clips, {cfg.epochs} epochs, {cfg.finetune} fine-tuning, "
        f"lr {cfg.lr:g}, batch {cfg.batch_size}"
    )
    print("| after | validation WER | validation CER |")
    print("|---|---|---|")
    print(f"| the base model | {base['val_wer']:.3f} | {base['val_cer']:.3f} |")
    by_epoch: dict[int, dict[str, float]] = {}
    for p in history:
        by_epoch.setdefault(p.epoch, {})[p.key] = p.value
    for epoch, values in sorted(by_epoch.items()):
        print(
            f"| epoch {epoch} | {values.get('val_wer', float('nan')):.3f} | {values.get('val_cer', float('nan')):.3f} |"
        )
    print(
        f"run {seconds:.0f} s (training, transcripts, export and its check); export transcripts alike "
        f"{done.metrics.get('export_transcript_agreement')}; {os.cpu_count()} CPUs"
    )
    for before, after in zip(samples[0]["samples"], samples[-1]["samples"], strict=True):
        print(f"- {before['expected']!r}: base {before['answer']!r} -> {after['answer']!r}")


if __name__ == "__main__":
    main()
