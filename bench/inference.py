"""Image models: ONNX Runtime against PyTorch eager on the CPU, batch 1 and 32.

Each figure is the median latency of a batch over `--iters` calls after warm-up, measured in a
fresh process; each configuration runs `--repeats` times (fresh processes) and the median is
reported. Both sides get the same threads. Models are the registered image models at their
default image size, exported exactly as runs export them (uint8 NHWC in, probabilities out).

    python bench/inference.py [--repeats 3] [--threads 2] [--models small-cnn,resnet18]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _build(model: str, size: int):  # type: ignore[no-untyped-def]
    from core.config import RunConfig
    from core.models import get_model
    from core.models.vision import ImageClassifier
    from core.tasks.image import _Probabilities

    cfg = RunConfig(task="image-classification", dataset_id=0, model=model, image_size=size, weights="none")
    return _Probabilities(ImageClassifier(get_model(model, cfg.task).build(10, cfg))).eval()


def _prepare(model: str, size: int, out: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from core.export import export_onnx

    module = _build(model, size)
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(out / f"{model}.safetensors"))
    example = torch.zeros((2, size, size, 3), dtype=torch.uint8)
    export_onnx(
        module,
        (example,),
        out / f"{model}.onnx",
        input_names=["image"],
        output_name="probabilities",
        metadata={},
    )


def _child(mode: str, model: str, size: int, batch: int, iters: int, threads: int, folder: Path) -> float:
    import numpy as np

    images = np.random.default_rng(0).integers(0, 255, (batch, size, size, 3), dtype=np.uint8)
    if mode == "torch":
        import torch
        from safetensors.torch import load_file

        torch.set_num_threads(threads)
        module = _build(model, size)
        module.load_state_dict(load_file(str(folder / f"{model}.safetensors")))
        x = torch.from_numpy(images)

        def call() -> None:
            with torch.inference_mode():
                module(x)
    else:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(
            str(folder / f"{model}.onnx"), opts, providers=["CPUExecutionProvider"]
        )

        def call() -> None:
            session.run(None, {"image": images})

    for _ in range(10):  # warm-up: thread pools, allocator, lazy initialisation
        call()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    from core.models import models_for

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default=",".join(m.name for m in models_for("image-classification")))
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, model, size, batch, iters, folder = args.child
        print(json.dumps(_child(mode, model, int(size), int(batch), int(iters), args.threads, Path(folder))))
        return

    from core.models import get_model

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for model in args.models.split(","):
            size = int(get_model(model, "image-classification").defaults.get("image_size", 224))
            _prepare(model, size, folder)
            for batch, iters in ((1, 100), (32, 8)):
                ms: dict[str, float] = {}
                for mode in ("torch", "onnxruntime"):
                    runs = []
                    for _ in range(args.repeats):
                        out = subprocess.run(
                            [
                                sys.executable,
                                __file__,
                                "--threads",
                                str(args.threads),
                                "--child",
                                mode,
                                model,
                                str(size),
                                str(batch),
                                str(iters),
                                tmp,
                            ],
                            capture_output=True,
                            text=True,
                            check=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)},
                        )
                        runs.append(float(out.stdout.strip().splitlines()[-1]))
                    ms[mode] = statistics.median(runs)
                rows.append(
                    {
                        "model": model,
                        "size": size,
                        "batch": batch,
                        "torch_ms": ms["torch"],
                        "ort_ms": ms["onnxruntime"],
                        "speedup": ms["torch"] / ms["onnxruntime"],
                    }
                )
                r = rows[-1]
                print(
                    f"{model:<20} {size:>4}px batch {batch:>2}: torch {r['torch_ms']:8.2f} ms  onnxruntime {r['ort_ms']:8.2f} ms  x{r['speedup']:.2f}",
                    flush=True,
                )
    print(
        f"threads={args.threads} repeats={args.repeats} (fresh processes, medians); target: onnxruntime >= 2x at batch 1"
    )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
