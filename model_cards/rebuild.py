"""Rebuild the model cards (README.md) of finished model folders from their own files, without retraining.

    python -m model_cards.rebuild --folders outputs/vix-nystrom-digits/final
    python -m model_cards.rebuild --results outputs/cpu/results.json

For folders whose card was written by an older card builder: the card is the template filled from the
folder's config.json, metrics.json and recipe.yaml (and conversion.json for converted weights), so
rebuilding changes no number.
"""

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from .card import read_folder, write_model_card
from .publish import folders_from_results, parse_arguments


@dataclass
class RebuildArguments:
    folders: list[Path] = field(default_factory=list, metadata={"help": "Model folders (a run's final/)."})
    results: Path | None = field(default=None, metadata={
        "help": "A training/results.py results.json listing the runs."})


def rebuild_card(folder) -> Path:
    _, metrics, recipe = read_folder(folder)
    return write_model_card(folder, metrics, recipe)


def main(argv=None) -> int:
    parser = HfArgumentParser(RebuildArguments, prog="python -m model_cards.rebuild", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    args = parse_arguments(parser, argv)
    listed = folders_from_results(args.results) if args.results else []
    folders = list(args.folders) + [folder for folder, _ in listed]
    if not folders:
        parser.error("give --folders or --results")
    for folder in folders:
        print(f"wrote {rebuild_card(folder)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
