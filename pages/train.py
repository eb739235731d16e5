"""Train: dataset -> model -> hyper-parameters -> launch; live progress of the runs going on."""

import streamlit as st
from streamlit.errors import StreamlitPageNotFoundError

from core import jobs, summary, sweeps
from core.access import Action, can
from core.config import describe_device
from core.data.ingest import get_dataset, list_datasets
from core.errors import AscentError, ConfigError, settings_error
from core.models import get_model, models_for
from core.plan import parse_budget
from pages.studio.edge import guarded
from pages.studio.session import page_actor

# The models that need a pretrained model named (--weights) and how the page asks for one.
WEIGHTS_ASKED = {
    "hf-transformer": ("Hugging Face model", "the Hugging Face model", "distilbert-base-uncased"),
    "hf-causal-lm": ("Chat model", "the chat model", "HuggingFaceTB/SmolLM2-360M-Instruct"),
    "hf-whisper": ("Whisper model", "the Whisper model", "openai/whisper-base.en"),
    "hf-marian": ("Marian model", "the Marian model", "Helsinki-NLP/opus-mt-en-es"),
    "hf-t5": ("T5 model", "the T5 model", "t5-small"),
}
# Encoder-decoder models fine-tuned whole by default, or with LoRA adapters when chosen.
ADAPTABLE = ("whisper-tiny-en", "hf-whisper", "hf-marian", "hf-t5")


def lora_options(options: dict[str, object]) -> None:
    """The LoRA settings of a run that trains adapters (inside the form)."""
    c7, c8, c9 = st.columns(3)
    options["lora_rank"] = c7.number_input(
        "LoRA rank", 1, 512, 16, help="Larger adapters learn more and cost more memory."
    )
    options["lora_targets"] = c8.text_input(
        "Layers with adapters",
        value="all-linear",
        help="all-linear, or layer names separated by commas, such as q_proj,v_proj.",
    )
    options["lora_alpha"] = c9.number_input(
        "LoRA alpha",
        1,
        4096,
        value=None,
        placeholder="twice the rank",
        help="The adapters' scale is alpha / rank.",
    )
    options["lora_dropout"] = c7.number_input("LoRA dropout", 0.0, 0.9, 0.05)


def weights_input(label: str, example: str) -> str | None:
    return (
        st.text_input(
            label,
            placeholder=(
                f"a local folder, or a hub id such as {example}"
                if can(actor, Action.SERVER_FILES)
                else f"a hub id such as {example}"
            ),
        )
        or None
    )


actor = page_actor()
st.title("Train")

datasets = list_datasets()
if not datasets:
    st.info("Add a dataset first (Datasets page, or a sample on the Home page).")
    st.stop()

if not can(actor, Action.TRAIN):
    st.caption(f"You are a {actor.role.value}: you can follow the runs going on; a member or admin trains.")
with st.container(border=True):
    choice = st.selectbox("Dataset", datasets, format_func=summary.dataset_label)
    ds = get_dataset(choice.id)
    specs = models_for(ds.task)
    if not specs:
        st.info(f"Ascent has no model that trains {ds.task} yet; the dataset stays for when it does.")
        st.stop()
    spec = st.selectbox("Model", specs, format_func=lambda m: f"{m.name} — {m.description}")
    fitted = {c.key: c for c in jobs.fitted(ds, spec.name)}
    # What the run uses unless changed below: fitted to the data and device, else the model's.
    d = {**get_model(spec.name, ds.task).defaults, **{k: c.value for k, c in fitted.items()}}
    finetune = None
    if spec.name in ADAPTABLE:
        chosen = st.radio(
            "Fine-tuning",
            ["every weight", "LoRA adapters"],
            horizontal=True,
            help=(
                "Every weight: the whole model learns (best on a small model such as Whisper tiny). "
                "LoRA: small low-rank adapters beside the frozen model learn, at a higher rate; the "
                "export folds them into the weights."
            ),
        )
        finetune = "lora" if chosen == "LoRA adapters" else "full"
        if finetune == "lora":
            d["lr"] = d.get("lora_lr", d.get("lr"))
    if fitted:
        st.markdown(
            f"**Fitted to your data and this device** ({summary.md(describe_device())}), unless you change them below:\n"
            + "\n".join(
                f"- {summary.FITTED_NAMES.get(c.key, c.key)}: **{summary.fitted_value(c)}** — {summary.md(c.why)}"
                for c in fitted.values()
            )
        )
    with st.form("hyper-parameters"):
        c1, c2, c3 = st.columns(3)
        epochs = c1.number_input(
            "Epochs",
            1,
            10_000,
            int(d.get("epochs", 30)),
            help="Passes over the training split; early stopping or a time budget may end sooner.",
        )
        batch = c2.number_input("Batch size", 1, 65_536, int(d.get("batch_size", 64)))
        lr = c3.number_input(
            "Learning rate",
            1e-6,
            1.0,
            float(d.get("lr", 1e-3)),
            format="%.5f",
            help="Peak rate of AdamW's cosine schedule, after warm-up.",
        )
        c4, c5, c6 = st.columns(3)
        patience = c4.number_input(
            "Early-stopping patience",
            0,
            1000,
            int(d.get("patience", 8)),
            help="Epochs without a better validation metric before stopping (0: never).",
        )
        seed = c5.number_input(
            "Seed", 0, 2**31 - 1, 0, help="Fixes the train/validation split and initialisation."
        )
        precision = c6.selectbox(
            "Precision",
            ["auto", "fp32", "bf16", "fp16"],
            help="auto: bf16 or fp16 autocast on a GPU, fp32 on the CPU.",
        )
        options: dict[str, object] = {}
        b1, b2, _ = st.columns(3)
        options["processes"] = b2.number_input(
            "Processes",
            1,
            64,
            1,
            help=(
                "Train this run in several processes with DistributedDataParallel: one per GPU, or "
                "gloo processes on the CPU. The batch size stays the whole batch (a multiple of the "
                "processes); each process takes its share."
            ),
        )
        if "budget_s" in fitted:
            budget = d.get("budget_s")
            options["budget_text"] = b1.text_input(
                "Time budget (s)",
                value="auto",
                help=(
                    "Seconds from the run's start to its exported model: after timing its first steps "
                    "the run plans how many epochs fit (at most the epochs above) and exports its best "
                    "model. auto: "
                    + (f"{budget:g} s here" if budget else "no limit here")
                    + "; none: no limit."
                ),
            )
        if ds.task == "image-classification":
            c7, c8, c9 = st.columns(3)
            options["image_size"] = c7.number_input(
                "Image size (px)",
                16,
                1024,
                int(d.get("image_size", 224)),
                help=(
                    fitted["image_size"].why + "; left so, a time budget may lower it so that two epochs fit"
                    if "image_size" in fitted
                    else None
                ),
            )
            options["weights"] = c8.selectbox(
                "Initial weights",
                ["default", "none", "imagenet"],
                help="default: ImageNet where a package ships them (EfficientNet-Lite0), else random. imagenet downloads them.",
            )
            options["freeze_epochs"] = c9.number_input(
                "Head-only epochs", 0, 100, 0, help="Train only the new head first."
            )
            a1, a2, a3 = st.columns(3)
            options["augment"] = a1.checkbox("Augment (random crops, colour jitter)", value=True)
            options["flip"] = a2.checkbox(
                "Horizontal flips",
                value=False,
                help="Mirror training images at random. Off by default: flips break digits, letters and documents.",
            )
            if "head_first" in fitted:
                options["head_first"] = a3.checkbox(
                    "Fit the head first",
                    value=bool(fitted["head_first"].value),
                    help="Fit the new head on the frozen network's features (seconds, cached), then fine-tune all of it.",
                )
        if ds.task in ("object-detection", "semantic-segmentation"):
            c7, c8, c9 = st.columns(3)
            options["image_size"] = c7.number_input(
                "Image size (px)",
                32,
                1024,
                int(d.get("image_size", 256)),
                step=32,
                help=(fitted["image_size"].why if "image_size" in fitted else None),
            )
            start = c8.selectbox(
                "Initial weights",
                ["default", "none"],
                help="default: the backbone's ImageNet weights, shipped on disk; none: random.",
            )
            repo = c8.text_input(
                "Or from a Hugging Face repo",
                placeholder="ORG/NAME",
                help=(
                    "A repo holding model.safetensors or best.safetensors: a whole detector's or "
                    "segmenter's (an Ascent run's), or a backbone's; downloaded once."
                ),
            ).strip()
            options["weights"] = f"hub:{repo}" if repo else start
            options["augment"] = c9.checkbox(
                "Augment (random crops, colour jitter)",
                value=True,
                help="Boxes and masks move with the pixels.",
            )
            options["flip"] = c9.checkbox("Horizontal flips", value=False)
        if ds.task == "audio-classification":
            c7, c8, c9 = st.columns(3)
            options["clip_seconds"] = c7.number_input(
                "Clip length (s)",
                0.2,
                30.0,
                float(ds.schema.get("clip_seconds", 1.0)),
                help="Clips are padded or cut around their middle to this length (default: 95% of clips fit).",
            )
            options["sample_rate"] = c8.selectbox(
                "Sample rate (Hz)", [16_000, 8_000, 22_050, 44_100], help="Clips are resampled to this rate."
            )
            options["n_mels"] = c9.number_input("Mel bands", 16, 256, 64)
            options["augment"] = st.checkbox("Augment (SpecAugment masks, random time shift)", value=True)
        if ds.task == "text-classification":
            p95 = ds.schema.get("p95_tokens")
            c7, c8, c9 = st.columns(3)
            options["max_length"] = c7.number_input(
                "Max tokens per text",
                8,
                4096,
                value=None,
                placeholder=f"from the data ({p95:g} at the 95th percentile)" if p95 else "from the data",
                help="Longer texts are cut. Empty: the data's 95th percentile, at most 256.",
            )
            options["freeze_layers"] = c8.number_input(
                "Frozen lower layers",
                0,
                100,
                0,
                help="Freeze the embeddings and this many lower transformer layers (0: train all).",
            )
            options["grad_accum"] = c9.number_input(
                "Gradient accumulation",
                1,
                1024,
                1,
                help="An optimiser step every this many batches: a larger batch in the same memory.",
            )
            c10, c11 = st.columns(2)
            options["warmup_fraction"] = c10.number_input(
                "Warm-up fraction",
                0.0,
                0.5,
                float(d.get("warmup_fraction", 0.05)),
                help="Share of the steps spent raising the learning rate from zero.",
            )
            options["weight_decay"] = c11.number_input(
                "Weight decay", 0.0, 1.0, float(d.get("weight_decay", 1e-4)), format="%.4f"
            )
            if "head_first" in fitted:
                options["head_first"] = st.checkbox(
                    "Fit the head first",
                    value=bool(fitted["head_first"].value),
                    help="Fit the new head on the frozen transformer's pooled features first, then fine-tune all of it.",
                )
        if ds.task == "text-generation":
            c7, c8 = st.columns(2)
            full = c7.selectbox(
                "Fine-tuning",
                ["LoRA adapters", "every weight"],
                help=(
                    "LoRA trains small low-rank adapters beside the frozen model (a few MB a run); "
                    "every weight suits small models and needs much more memory."
                ),
            )
            options["finetune"] = "full" if full == "every weight" else "lora"
            longest = ds.schema.get("max_tokens")
            options["max_length"] = c8.number_input(
                "Context (tokens)",
                8,
                4096,
                value=None,
                placeholder=f"longest: {longest}" if longest else "from the data",
                help="Examples longer than this are left out. Empty: the longest example, at most 512.",
            )
            lora_options(options)
        if finetune is not None:
            options["finetune"] = finetune
            if finetune == "lora":
                lora_options(options)
        if spec.name in WEIGHTS_ASKED:
            label, _, example = WEIGHTS_ASKED[spec.name]
            options["weights"] = weights_input(label, example)
        name = st.text_input("Run name (optional)")
        launch = st.form_submit_button(
            "Launch", type="primary", icon=":material/play_arrow:", disabled=not can(actor, Action.TRAIN)
        )
    if launch:
        try:
            if "budget_text" in options:
                options["budget_s"] = parse_budget(str(options.pop("budget_text")))
            if "image_size" in fitted and options.get("image_size") == fitted["image_size"].value:
                options["image_size"] = None  # left as fitted: a time budget may lower it
            if spec.name in WEIGHTS_ASKED and not options.get("weights"):
                _, noun, example = WEIGHTS_ASKED[spec.name]
                raise ConfigError(f"give {noun} to fine-tune, e.g. {example}")
            cfg = jobs.config_for(
                ds.id,
                model=spec.name,
                epochs=int(epochs),
                batch_size=int(batch),
                lr=float(lr),
                patience=int(patience),
                seed=int(seed),
                precision=precision,
                name=name or None,
                **options,
            )
            run = jobs.submit(cfg, actor=actor)
            st.session_state.setdefault("train-following", []).append(run.id)
            st.success(f"Run {run.id} queued: {summary.md(run.name)}.")
        except (AscentError, ValueError) as exc:
            st.error(summary.md(settings_error(exc)))
    with (
        st.expander("Sweep: try many settings (Optuna)", icon=":material/tune:"),
        st.form("sweep"),
    ):
        st.caption(
            f"Each trial is a run of {spec.name} on this dataset with settings the sampler picks from the "
            "space; trials that do worse than the earlier ones at the same epoch stop early (pruned). "
            "The Runs page shows the sweep."
        )
        s1, s2, s3 = st.columns(3)
        trials = s1.number_input("Trials", 1, sweeps.MAX_TRIALS, 8)
        parallel = s2.number_input(
            "At once", 1, sweeps.MAX_TRIALS, 2, help="Trials queued or running at once."
        )
        trial_epochs = s3.number_input("Epochs per trial", 1, 10_000, int(d.get("epochs", 30)))
        space = st.text_input(
            "Search space",
            sweeps.DEFAULT_SPACE,
            help="name=low..high (add log for a log scale), or name=a,b,c; separated by ';'. "
            f"Names: {', '.join(sweeps.TUNABLE)}.",
        )
        s4, s5 = st.columns(2)
        goal = s4.text_input(
            "Metric", summary.MAIN_METRIC.get(ds.task, "val_loss"), help="A validation metric."
        )
        trial_budget = s5.text_input("Time budget per trial", "none", help="Seconds, or none.")
        start = st.form_submit_button(
            "Start sweep", icon=":material/tune:", disabled=not can(actor, Action.TRAIN)
        )
    if start:
        try:
            made = sweeps.create(
                ds.id,
                trials=int(trials),
                parallel=int(parallel),
                space=space,
                metric=goal.strip(),
                actor=actor,
                model=spec.name,
                epochs=int(trial_epochs),
                budget_s=parse_budget(trial_budget),
            )
            queued = [t.run_id for t in made.trial_list if t.run_id is not None]
            st.session_state.setdefault("train-following", []).extend(queued)
            st.success(
                f"Sweep {made.id} queued: {len(queued)} trial run(s) first, the worker queues the rest."
            )
        except (AscentError, ValueError) as exc:
            st.error(summary.md(settings_error(exc)))


def outcome(run_id: int) -> None:
    """One line on how a run this page followed ended, with a link to it."""
    try:
        run = jobs.get_run(run_id)
    except AscentError:
        return  # deleted meanwhile
    key, best = summary.main_metric(run)
    said = f"Run {run.id} · {summary.md(run.name)} {run.status}"
    if run.status == "succeeded" and best is not None:
        said += f": best {summary.metric_label(key)} {best:.3g}"
    elif run.error:
        said += f": {summary.md(run.error.splitlines()[0])}"
    show = {"succeeded": st.success, "failed": st.error}.get(run.status, st.warning)
    with st.container(horizontal=True, vertical_alignment="center"):
        show(said, icon=":material/flag:")
        try:
            st.page_link("pages/runs.py", label="See it on Runs", icon=":material/table_view:")
        except StreamlitPageNotFoundError:  # this page run alone, without the router's pages
            st.caption("It is on the Runs page.")


@st.fragment(run_every="2s")
@guarded
def live() -> None:
    active = jobs.list_runs(status="running", limit=20) + jobs.list_runs(status="queued", limit=20)
    following: list[int] = st.session_state.setdefault("train-following", [])
    live_ids = {r.id for r in active}
    following.extend(r.id for r in active if r.id not in following)
    ended = st.session_state.setdefault("train-ended", [])
    for run_id in [i for i in following if i not in live_ids]:
        following.remove(run_id)
        ended.insert(0, run_id)
    del ended[5:]
    for run_id in ended:
        outcome(run_id)
    if not active:
        st.caption("No run is going on. Finished runs are on the Runs page.")
        return
    if any(r.status == "queued" for r in active):
        # The studio's worker leaves after a while with nothing to do, and one may be stopped or
        # killed: while runs wait, this page (which may be all the user looks at) brings one back.
        jobs.ensure_worker()
    for run in active:
        with st.container(border=True):
            st.markdown(
                f"**Run {run.id} · {summary.md(run.name)}** — {run.status} "
                f"({run.model} on {summary.md(run.device or 'waiting')}, by {summary.md(run.created_by or 'no signed-in user')})"
            )
            p = run.progress or {}
            total = p.get("total_steps") or 0
            if run.status == "running" and total:
                rate = p.get("steps_per_sec")
                samples = run.metrics.get("samples_per_sec")
                st.progress(
                    min(1.0, p["step"] / total),
                    text=f"epoch {p['epoch']}/{p['epochs']} · step {p['step']}/{total} · {p['phase']} · "
                    f"ETA {summary.format_eta(p.get('eta_s'))}"
                    + (f" · {samples:,.0f} samples/s" if samples else "")
                    + (f" · {rate:.1f} steps/s" if rate else ""),
                )
                if p.get("plan"):
                    st.caption(f"Time budget: {summary.md(p['plan'])}")
                key, _ = summary.main_metric(run)
                left, right = st.columns(2)
                losses = summary.curves([run.id], ["train_loss", "val_loss"], {run.id: "loss"})
                metric = summary.curves([run.id], [key], {run.id: "metric"})
                if losses.empty and metric.empty:
                    st.caption("Curves appear after the first epoch.")
                if not losses.empty:
                    left.line_chart(losses, x_label="epoch", y_label="loss")
                if not metric.empty:
                    right.line_chart(metric, x_label="epoch", y_label=summary.metric_label(key))
            elif run.status == "running":
                phase = p.get("phase") or "preparing"
                st.progress(0.0, text=f"{phase}: data and model…" if phase == "preparing" else f"{phase}…")
            if can(actor, Action.CANCEL) and st.button(
                "Cancel", key=f"cancel-{run.id}", icon=":material/stop:"
            ):
                try:
                    status = jobs.cancel(run.id, actor=actor)
                    st.toast(
                        f"Run {run.id}: "
                        + ("cancelled." if status == "cancelled" else "stopping at its next step…"),
                        icon=":material/stop:",
                    )
                except AscentError as exc:
                    st.error(summary.md(exc))


st.subheader("Going on")
live()
