"""Model cards built from a model folder's config and the metrics a run measured."""

from .card import build_model_card, write_model_card


__all__ = ["build_model_card", "write_model_card"]
