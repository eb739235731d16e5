"""Turning uploads into datasets: safe ingest, task detection, validation, quality reports."""

# Every task a dataset can have (here, away from the heavy ingest modules: the CLI's parser
# names them on each start).
TASKS = (
    "tabular-classification",
    "tabular-regression",
    "image-classification",
    "text-classification",
    "audio-classification",
    "object-detection",
    "semantic-segmentation",
    "text-generation",
    "speech-recognition",
    "translation",
)
