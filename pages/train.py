"""Train: dataset -> model -> hyper-parameters -> launch; live progress of the runs going on."""

import streamlit as st

from core import jobs, summary
from core.access import Action, can
from core.data.ingest import get_dataset, list_datasets
from core.errors import AscentError
from core.models import get_model, models_for
from pages.studio.edge import guarded
from pages.studio.session import page_actor

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
    spec = st.selectbox("Model", specs, format_func=lambda m: f"{m.name} — {m.description}")
    d = get_model(spec.name, ds.task).defaults
    with st.form("hyper-parameters"):
        c1, c2, c3 = st.columns(3)
        epochs = c1.number_input(
            "Epochs",
            1,
            10_000,
            int(d.get("epochs", 30)),
            help="Passes over the training split; early stopping may end sooner.",
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
        if ds.task == "image-classification":
            c7, c8, c9 = st.columns(3)
            options["image_size"] = c7.number_input(
                "Image size (px)", 16, 1024, int(d.get("image_size", 224))
            )
            options["weights"] = c8.selectbox(
                "Initial weights",
                ["default", "none", "imagenet"],
                help="default: ImageNet where a package ships them (EfficientNet-Lite0), else random. imagenet downloads them.",
            )
            options["freeze_epochs"] = c9.number_input(
                "Head-only epochs", 0, 100, 0, help="Train only the new head first."
            )
            options["augment"] = st.checkbox("Augment (random crops, flips, colour jitter)", value=True)
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
            if spec.name == "hf-transformer":
                options["weights"] = (
                    st.text_input(
                        "Hugging Face model",
                        placeholder=(
                            "a local folder, or a hub id such as distilbert-base-uncased"
                            if can(actor, Action.SERVER_FILES)
                            else "a hub id such as distilbert-base-uncased"
                        ),
                    )
                    or None
                )
        name = st.text_input("Run name (optional)")
        launch = st.form_submit_button(
            "Launch", type="primary", icon=":material/play_arrow:", disabled=not can(actor, Action.TRAIN)
        )
    if launch:
        try:
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
            st.success(f"Run {run.id} queued: {summary.md(run.name)}.")
        except (AscentError, ValueError) as exc:
            st.error(summary.md(exc))


@st.fragment(run_every="2s")
@guarded
def live() -> None:
    active = jobs.list_runs(status="running", limit=20) + jobs.list_runs(status="queued", limit=20)
    if not active:
        st.caption("No run is going on. Finished runs are on the Runs page.")
        return
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
                key, _ = summary.main_metric(run)
                left, right = st.columns(2)
                losses = summary.curves([run.id], ["train_loss", "val_loss"], {run.id: "loss"})
                metric = summary.curves([run.id], [key], {run.id: "metric"})
                if not losses.empty:
                    left.line_chart(losses, x_label="epoch")
                if not metric.empty:
                    right.line_chart(metric, x_label="epoch")
            elif run.status == "running":
                st.progress(0.0, text="preparing data and model…")
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
