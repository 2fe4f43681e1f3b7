"""Training entry points for ViX (Trainer + accelerate)."""
