"""Text generation: instruction uploads in their three layouts, LoRA fine-tuning of
SmolLM2-135M-Instruct on a made-up help desk (adapters alone change), and the exported
generator: one ONNX graph with a KV cache whose greedy tokens are PyTorch's, run by the numpy
loop in core.runtime from the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from core import jobs, summary
from core.config import RunConfig
from core.data.ingest import ingest_file
from core.data.samples import HELPDESK_FILE
from core.errors import ConfigError, DatasetError
from core.models import models_for
from core.models.llm import smollm2_folder
from core.runtime import Generator, render_chat
from core.tasks import get_task
from core.tasks.generation import CausalLoss, prompt_of
from core.train import BEST, train
from tests.conftest import tiny_llama, train_here

TASK = "text-generation"
# A question the base model cannot answer: the warranty is made up for the sample.
QUESTION = "How many months is the warranty of the Orbly K7 kettle?"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def _jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_the_three_layouts_are_read_and_bad_rows_counted(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from core.__main__ import main

    assert [m.name for m in models_for(TASK)] == ["smollm2-135m", "hf-causal-lm"]
    assert main(["datasets", "add", str(HELPDESK_FILE)]) == 0
    assert capsys.readouterr().out.startswith(
        "dataset 1 'orbly-helpdesk': text-generation (pairs), 50 examples; length in SmolLM2 tokens: median"
    )
    pairs = ingest_file(HELPDESK_FILE)
    assert pairs.task == TASK and pairs.n_items == 50  # found by its prompt and response columns
    assert pairs.report["layout"] == "pairs" and pairs.report["length_unit"] == "SmolLM2 tokens"
    assert 50 < pairs.report["length_tokens"]["median"] < 90 and pairs.report["over_context"] == 0

    chats = [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]},
        {"conversations": None},
        {"messages": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]},
        {"messages": [{"role": "user", "content": "no answer"}]},
        {"messages": [{"role": "wizard", "content": "?"}, {"role": "assistant", "content": "!"}]},
    ]
    # The Datasets page previews and guesses the upload before it is added.
    from core import summary
    from core.data.ingest import guess_upload

    raw = _jsonl(tmp_path / "chat.jsonl", chats).read_bytes()
    assert guess_upload("chat.jsonl", raw).task == TASK
    assert summary.upload_preview("chat.jsonl", raw)["messages"][0].startswith('[{"role": "user"')
    ds = ingest_file(tmp_path / "chat.jsonl")
    assert ds.task == TASK and ds.n_items == 2 and ds.report["layout"] == "chat"
    assert ds.report["left_out"] == {
        "messages that are not a list of turns": 1,
        "no assistant turn to learn": 1,
        "a turn whose role is not system, user or assistant": 1,
    }
    # A CSV cell may hold the turns as a JSON string.
    csv = tmp_path / "chat.csv"
    csv.write_text(
        'messages\n"[{""role"": ""user"", ""content"": ""a""}, {""role"": ""assistant"", ""content"": ""b""}]"\n'
        * 3
    )
    assert ingest_file(csv).n_items == 3

    plain = ingest_file(_jsonl(tmp_path / "plain.jsonl", [{"text": "one line"}, {"text": "two"}]), task=TASK)
    assert plain.report["layout"] == "text" and plain.n_items == 2

    with pytest.raises(DatasetError, match="no instruction columns"):
        ingest_file(_jsonl(tmp_path / "other.jsonl", [{"a": 1, "b": 2}] * 3), task=TASK)
    with pytest.raises(DatasetError, match="no usable example.*3 with an empty prompt or response"):
        ingest_file(_jsonl(tmp_path / "empty.jsonl", [{"prompt": "q", "response": " "}] * 3))
    assert [d.name for d in jobs.list_runs()] == []


def test_lora_on_smollm2_trains_adapters_alone(home: Path, tmp_path: Path) -> None:
    """The sample's defaults are LoRA of rank 16 on every linear layer for 3 epochs; on a part of
    the help desk the validation loss falls each epoch and SmolLM2's own weights stay as they
    were. (Whether the facts stick, the defaults' reason, is measured by bench/instructions.py:
    it trains the whole sample, too slow for a test.)"""
    ds = ingest_file(HELPDESK_FILE)
    cfg = jobs.config_for(ds.id)
    assert (cfg.model, cfg.finetune, cfg.lora_rank, cfg.lora_targets, cfg.epochs) == (
        "smollm2-135m", "lora", 16, "all-linear", 3
    )  # fmt: skip
    part = tmp_path / "helpdesk-part.jsonl"
    part.write_text("".join(HELPDESK_FILE.read_text().splitlines(keepends=True)[:20]))
    ds = ingest_file(part)
    cfg = jobs.config_for(ds.id, epochs=2)
    data = get_task(TASK).prepare(ds, cfg, "cpu")
    model = data.model
    assert isinstance(model, CausalLoss)
    base = load_file(str(smollm2_folder() / "model.safetensors"))

    losses: list[float] = []
    runs = tmp_path / "run"
    train(cfg, data, device="cpu", run_dir=runs, on_epoch=lambda r: losses.append(r.metrics["val_loss"]))
    assert len(losses) == 2 and losses[0] > losses[1], losses

    saved = load_file(str(runs / BEST))
    assert saved and all("lora_" in k for k in saved)  # the checkpoint holds the adapters alone
    changed = 0
    for name, tensor in model.lm.named_parameters():
        if "lora_" not in name:
            plain = name.removeprefix("base_model.model.").replace(".base_layer", "")
            assert torch.equal(tensor, base[plain]), name
        elif "lora_B" in name:
            changed += bool(tensor.abs().sum() > 0)  # B starts at zero: trained adapters moved it
    assert changed > 0
    # Every epoch's answers to the fixed validation prompts are kept, before training first.
    lines = [json.loads(x) for x in (runs / "samples.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [0, 1, 2] and lines[2]["samples"]


def test_exported_generator_is_one_cached_graph_that_answers_as_pytorch_does(
    home: Path, tmp_path: Path, tiny: Path
) -> None:
    import onnxruntime as ort
    from transformers import AutoTokenizer

    ds = ingest_file(HELPDESK_FILE)
    run = jobs.submit(jobs.config_for(ds.id, model="hf-causal-lm", weights=str(tiny), epochs=1))
    train_here(run.id)
    done = jobs.get_run(run.id)
    assert done.metrics["export_token_agreement"] == 1.0 and done.metrics["export_max_abs_diff"] < 1e-4
    folder = jobs.run_dir(run.id)
    assert sorted(p.name for p in folder.glob("model.onnx*")) == ["model.onnx"]  # weights once, in one file

    # Plain ONNX Runtime takes the file: a dynamic batch, new tokens and cache length.
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_providers() == ["CPUExecutionProvider"]
    shapes = {i.name: i.shape for i in session.get_inputs()}
    assert isinstance(shapes["input_ids"][0], str) and isinstance(shapes["past.0.key"][2], str)

    generator = Generator(folder / "model.onnx")
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    messages = [{"role": "user", "content": QUESTION}]
    assert render_chat(generator.settings, messages) == tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    # Greedy tokens equal transformers' generate on the merged PyTorch model.
    from core.tasks.generation import merged

    cfg = jobs.config_for(ds.id, model="hf-causal-lm", weights=str(tiny), epochs=1)
    data = get_task(TASK).prepare(ds, cfg, "cpu")
    data.model.load_state_dict(load_file(str(folder / BEST)))
    lm = merged(data)
    ids = generator.prompt_ids(QUESTION)
    expected = lm.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, min_new_tokens=12)
    got = generator.generate(QUESTION, max_new_tokens=12)
    assert got.tokens == expected[0, len(ids) :].tolist() and got.stopped == "length"
    assert got.first_token_ms > 0 and got.ms_per_token > 0 and got.prompt_tokens == len(ids)
    streamed = "".join(t.text for t in generator.stream(QUESTION, max_new_tokens=12))
    assert streamed == got.text
    # Sampling: seeded, and a tiny top-p keeps the likeliest token alone (greedy again).
    hot = generator.generate(QUESTION, max_new_tokens=8, temperature=1.5, seed=3)
    assert hot.tokens == generator.generate(QUESTION, max_new_tokens=8, temperature=1.5, seed=3).tokens
    assert (
        generator.generate(QUESTION, max_new_tokens=8, temperature=1.0, top_p=1e-6).tokens == got.tokens[:8]
    )
    # A stop string ends the answer before it.
    cut = got.text[len(got.text) // 2 :][:3]
    if cut.strip():
        stopped = generator.generate(QUESTION, max_new_tokens=12, stop=[cut])
        assert stopped.stopped == "stop" and cut not in stopped.text

    cli = [sys.executable, "-m", "core", "predict", "--run", str(run.id)]
    out = subprocess.run(
        [*cli, "--text", QUESTION, "--max-new-tokens", "5", "--json"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    (answer,) = json.loads(out.stdout)["generations"]
    assert (
        answer["tokens"] == got.tokens[:5] and answer["first_token_ms"] > 0 and answer["prompt"] == QUESTION
    )
    del lm, data


def test_generator_certificate_measures_tokens_perplexity_and_time_of_each_variant(
    home: Path, tiny: Path
) -> None:
    """fp32, int8 (MatMul weights) and fp16 continue the validation prompts against PyTorch,
    score the validation answers and are timed per token in fresh processes; the Runs page and
    the command line show the certificate."""
    import math
    from collections import Counter

    import onnx
    from streamlit.testing.v1 import AppTest

    from core.certificate import NEW_TOKENS, certify

    ds = ingest_file(HELPDESK_FILE)
    run = jobs.submit(jobs.config_for(ds.id, model="hf-causal-lm", weights=str(tiny), epochs=1))
    train_here(run.id)
    said: list[str] = []
    records = {r.variant: r for r in certify(run.id, ("fp32", "int8", "fp16"), say=said.append)}
    assert list(records) == ["pytorch", "fp32", "int8", "fp16"]
    assert (
        said[0] == "[1/11] loading the run's model and data"
        and said[-1] == "[11/11] fp16: timing it at batch 1"
    )
    base, fp32, int8, fp16 = records.values()
    # The baseline's perplexity, computed by the certificate's numpy code from the merged model's
    # logits, is the run's own validation loss (the peft model's, during training).
    assert math.log(base.metric_value) == pytest.approx(
        jobs.get_run(run.id).best_metrics["val_loss"], abs=1e-4
    )
    assert fp32.status == "ok" and fp32.top1_agreement == 1.0 and fp32.max_abs_diff < 1e-4
    assert abs(fp32.metric_change) < 1e-4 * base.metric_value
    cfg = RunConfig.model_validate(jobs.get_run(run.id).config)
    prompts = get_task(TASK).prepare(ds, cfg, "cpu").model.val_prompts
    assert len(prompts) == 10  # the sample's validation split (a fifth of 50), under CERTIFICATE_PROMPTS
    for r in records.values():
        (m,) = r.measurements
        assert m["batch"] == 1 and m["new_tokens"] == NEW_TOKENS and m["prompt_tokens"] == len(prompts[0])
        assert 0 < m["p50_ms"] <= m["p95_ms"] and m["first_token_ms"] > 0 and r.latency_ms == m["p50_ms"]
        assert m["provider"] == ("pytorch-cpu" if r.variant == "pytorch" else "CPUExecutionProvider")
        assert r.n_samples == len(prompts)
    # int8: every MatMul with a stored weight became MatMulNBits (8 bits); the file still answers.
    plain = onnx.load(str(fp32.path))
    stored = {t.name for t in plain.graph.initializer}
    weighted = sum(n.op_type == "MatMul" and n.input[1] in stored for n in plain.graph.node)
    ops = Counter(n.op_type for n in onnx.load(str(int8.path)).graph.node)
    assert weighted > 0 and ops["MatMulNBits"] == weighted and int8.bytes < fp32.bytes
    assert 0.0 <= (int8.top1_agreement or 0.0) <= 1.0
    assert int8.status == ("ok" if (int8.top1_agreement or 0.0) >= 0.9 else "flagged")
    assert len(Generator(int8.path).generate(QUESTION, max_new_tokens=4).tokens) >= 1
    halves = [
        t for t in onnx.load(str(fp16.path)).graph.initializer if t.data_type == onnx.TensorProto.FLOAT16
    ]
    assert sum(math.prod(t.dims) for t in halves) > 0.9 * sum(
        math.prod(t.dims) for t in plain.graph.initializer
    )

    root = Path(__file__).resolve().parents[1]
    at = AppTest.from_file(str(root / "pages" / "runs.py"), default_timeout=60).run()
    at.multiselect[0].set_value([run.id]).run()
    assert not at.exception and not at.error
    (table,) = [d.value for d in at.dataframe if "token agreement" in getattr(d.value, "columns", [])]
    assert list(table.index) == ["pytorch", "fp32", "int8", "fp16"]
    assert {"perplexity", "CPU first token (ms)", "CPU per token p50 (ms)"} <= set(table.columns)
    # Perplexities close together get the digits that tell them apart on the trade-off chart.
    assert summary.telling_digits([1.0052, 1.0071]) == 4 and summary.telling_digits([2.0, 9.5]) == 3

    out = subprocess.run(
        [sys.executable, "-m", "core", "export", "--run", str(run.id), "--variants", "fp32"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    header = out.stdout.splitlines()[0].split()
    assert header[:4] == ["variant", "status", "perplexity", "(change)"] and "ms/token" in header


def test_lora_options_are_checked(home: Path, tiny: Path) -> None:
    ds = ingest_file(HELPDESK_FILE)
    with pytest.raises(ConfigError, match="no layer of the model is named nope; its linear layers are: "):
        cfg = jobs.config_for(ds.id, model="hf-causal-lm", weights=str(tiny), lora_targets="nope")
        get_task(TASK).prepare(ds, cfg, "cpu")
    with pytest.raises(ValueError, match="names no layers"):
        jobs.config_for(ds.id, lora_targets="q_proj;v_proj")
    with pytest.raises(ConfigError, match="hf-causal-lm needs --weights"):
        get_task(TASK).prepare(ds, jobs.config_for(ds.id, model="hf-causal-lm"), "cpu")
    # Full fine-tuning trains every weight and keeps a tied output layer once.
    cfg = jobs.config_for(ds.id, model="hf-causal-lm", weights=str(tiny), finetune="full")
    data = get_task(TASK).prepare(ds, cfg, "cpu")
    state = data.model.state_dict()
    assert "lm.model.embed_tokens.weight" in state and "lm.lm_head.weight" not in state
    assert all(p.requires_grad for p in data.model.parameters())
    assert prompt_of("plain text") is None
    # Perplexity is best at its lowest, in the runs table and for sweeps.
    from core.sweeps import direction_of
    from db.queries import lower_is_better

    assert lower_is_better("val_perplexity") and direction_of("val_perplexity") == "minimize"
    assert np.isfinite(float(data.loss_fn(torch.tensor([[2.0, 1.0]]), torch.zeros(1))))


def test_studio_trains_and_chats_side_by_side_with_the_base_model(home: Path, tiny: Path) -> None:
    """The Train page offers the LoRA options; the run's page shows its answers epoch by epoch;
    the Predict page streams the run's answer beside the base model's (exported once, in the
    background, to the model cache)."""
    from streamlit.testing.v1 import AppTest

    from core import playground

    root = Path(__file__).resolve().parents[1]
    ds = ingest_file(HELPDESK_FILE)
    at = AppTest.from_file(str(root / "pages" / "train.py"), default_timeout=60).run()
    assert not at.exception
    assert [s.label for s in at.selectbox if s.label == "Fine-tuning"] == ["Fine-tuning"]
    assert any(n.label == "LoRA rank" for n in at.number_input)

    run = jobs.submit(jobs.config_for(ds.id, model="hf-causal-lm", weights=str(tiny), epochs=1, name="chat"))
    train_here(run.id)
    at = AppTest.from_file(str(root / "pages" / "runs.py"), default_timeout=60).run()
    at.multiselect[0].set_value([run.id]).run()
    assert not at.exception and not at.error
    assert any("Answers to fixed validation prompts" in h.value for h in at.subheader)
    assert any(c.value.startswith("Greedy answers; epoch 0 is the base model") for c in at.caption)

    source = playground.base_source(run.id)
    assert source == str(tiny)
    assert playground.base_status(source)[0] is None
    playground.export_base(source)  # what the page starts in the background
    assert playground.base_status(source)[1] == "ready"

    at = AppTest.from_file(str(root / "pages" / "predict.py"), default_timeout=120).run()
    assert not at.exception
    at.multiselect[0].set_value(["base"]).run()
    at.chat_input[0].set_value(QUESTION).run()
    assert not at.exception, at.exception
    captions = [c.value for c in at.caption]
    assert "run 1" in captions and "the base model" in captions
    timings = [c for c in captions if "ms/token" in c and "CPUExecutionProvider" in c]
    assert len(timings) == 2 and all(c.split(" tokens")[0].isdigit() for c in timings), captions
    # The conversation stays: the next question is asked after the first answers.
    at.chat_input[0].set_value("And the reset?").run()
    assert not at.exception
    assert [m.name for m in at.chat_message].count("user") == 2


def _toy_batch(model: torch.nn.Module, rows: slice) -> torch.Tensor:
    """A causal LM's [summed NLL, learnt tokens] per example, from a linear "model" on fixed
    inputs whose examples learn 1, 6, 2 and 9 tokens."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 9, 8, generator=gen)
    targets = torch.randint(0, 5, (4, 9), generator=gen)
    learnt = torch.arange(9)[None, :] < torch.tensor([1, 6, 2, 9])[:, None]
    nll = torch.nn.functional.cross_entropy(model(x[rows]).transpose(1, 2), targets[rows], reduction="none")
    mask = learnt[rows].float()
    return torch.stack([(nll * mask).sum(1), mask.sum(1)], dim=1)


# One process of two: its half of the toy batch through DistributedDataParallel, the gradient out
# as JSON. A fresh interpreter (not multiprocessing's spawn, which would run this process's
# __main__ again: a page script, once AppTest ran one here).
DDP_CHILD = """
import json, sys
import torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from core.tasks.generation import token_loss
from tests.test_generation import _toy_batch
rank, port = int(sys.argv[1]), int(sys.argv[2])
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
torch.manual_seed(0)
model = torch.nn.Linear(8, 5)
ddp = DistributedDataParallel(model)  # kept alive: its hooks average the gradients in backward
token_loss(_toy_batch(ddp, slice(2 * rank, 2 * rank + 2)), torch.zeros(2)).backward()
print(json.dumps(model.weight.grad.tolist()))
dist.barrier()
dist.destroy_process_group()
"""


def test_the_loss_over_two_processes_is_the_loss_over_the_whole_batch() -> None:
    """Two DistributedDataParallel processes, each half of a batch whose examples learn 1, 6, 2
    and 9 tokens: the averaged gradient is one process's on the whole batch (each process
    divides by the whole batch's token count, not its own)."""
    import os
    import socket

    from core.tasks.generation import token_loss

    torch.manual_seed(0)
    model = torch.nn.Linear(8, 5)
    token_loss(_toy_batch(model, slice(0, 4)), torch.zeros(4)).backward()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = Path(__file__).resolve().parents[1]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", DDP_CHILD, str(rank), str(port)],
            cwd=root,
            env={**os.environ, "PYTHONPATH": str(root)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    outs = [proc.communicate(timeout=180) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], [err[-2000:] for _, err in outs]
    grads = {rank: json.loads(out.strip().splitlines()[-1]) for rank, (out, _) in enumerate(outs)}
    assert model.weight.grad is not None
    for rank in (0, 1):
        assert torch.allclose(torch.tensor(grads[rank]), model.weight.grad, atol=1e-6), rank
