"""Ascent's engine: data, tasks, models, training, export, runtime and the run queue."""
