"""Makes the folder a package so installs ship top_k_accuracy.py; load it with `evaluate.load(<this folder>)`."""
