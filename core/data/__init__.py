"""Turning uploads into datasets: safe ingest, task detection, validation, quality reports."""
