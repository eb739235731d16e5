"""Does fine-tuning make the help-desk sample's facts stick? LoRA on SmolLM2-135M-Instruct.

The Orbly help-desk sample (50 questions about five made-up facts; 40 train, 10 validate) is
added to a throwaway ASCENT_HOME and trained in this process with the run's defaults (rank 16 on
every linear layer, 3 epochs, batch 8), at each learning rate given. Then the model answers five
new phrasings, one per fact, that are not in the data (greedy); an answer counts when it holds
the fact's key words. Printed: validation loss per epoch, training seconds, and the answers.

    python bench/instructions.py [--lr 2e-3,1e-3] [--epochs 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# New phrasings, one per fact, with what a right answer must say.
QUESTIONS = (
    ("How many months is the warranty of the Orbly K7 kettle?", ("27-month", "27 months")),
    ("What do I do to reset an Orbly K7?", ("9 seconds",)),
    ("My kettle from Orbly says E14, what does that mean?", ("not seated",)),
    ("How many days should pass between two descalings of my Orbly K7?", ("45 days",)),
    ("What phone number do I call for Orbly support?", ("0800 555 0147",)),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr", default="2e-3,1e-3", help="comma-separated learning rates")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    for lr in (float(x) for x in args.lr.split(",")):
        home = tempfile.mkdtemp(prefix="ascent-bench-")
        os.environ["ASCENT_HOME"] = home
        try:
            run(lr, args.epochs, Path(home))
        finally:
            shutil.rmtree(home, ignore_errors=True)
    print(f"{os.cpu_count()} CPUs; 1-minute load average at the end {os.getloadavg()[0]:.2f}")


def run(lr: float, epochs: int, home: Path) -> None:
    from core import jobs
    from core.data.ingest import ingest_file
    from core.data.samples import HELPDESK_FILE
    from core.tasks import get_task
    from core.tasks.generation import answers
    from core.train import train

    ds = ingest_file(HELPDESK_FILE)
    cfg = jobs.config_for(ds.id, lr=lr, epochs=epochs)
    data = get_task(cfg.task).prepare(ds, cfg, "cpu")
    losses: list[float] = []
    began = time.perf_counter()
    train(
        cfg, data, device="cpu", run_dir=home / "run", on_epoch=lambda r: losses.append(r.metrics["val_loss"])
    )
    seconds = time.perf_counter() - began
    model = data.model
    found = answers(model, model.tokenizer, [([{"role": "user", "content": q}], "") for q, _ in QUESTIONS])
    right = [any(k in a["answer"] for k in keys) for a, (_, keys) in zip(found, QUESTIONS, strict=True)]
    print(
        f"lr {lr:g}, {epochs} epochs: val_loss {' -> '.join(f'{v:.3g}' for v in losses)}; "
        f"{sum(right)} of {len(right)} new phrasings answered; {seconds:.0f} s training (answers included)"
    )
    for a, ok in zip(found, right, strict=True):
        print(f"  [{'ok' if ok else 'no'}] {a['prompt']} -> {a['answer']}")


if __name__ == "__main__":
    main()
