"""Model cards built from a model folder's config and the metrics a run measured; publishing to the Hub.

    write_model_card(folder, metrics, recipe)     # folder/README.md (training/train.py calls this)
    python -m model_cards.rebuild --folders FOLDER ...   # rebuild the cards of finished folders
    python -m model_cards.publish --results outputs/cpu/results.json --repo_prefix user/vix- --dry_run
"""

from .card import build_model_card, inherited_base_model, variant_name, write_model_card
from .index import build_index_card


__all__ = ["build_index_card", "build_model_card", "inherited_base_model", "variant_name", "write_model_card"]
