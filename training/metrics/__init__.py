"""Evaluation modules for `evaluate.load(path)`, shipped with the repository (they load offline)."""
