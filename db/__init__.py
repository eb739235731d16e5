"""Ascent's tracking store: tables, sessions and typed queries. Imports nothing of Ascent's."""
