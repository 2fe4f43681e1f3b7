"""Top-1 and top-k accuracy from class scores, as an `evaluate` metric module that ships with the repository.

`evaluate.load("accuracy")` fetches its script from the Hub; this module loads offline by path:

    evaluate.load("training/metrics/top_k_accuracy", keep_in_memory=True).compute(
        predictions=logits, references=labels, k=5)   # -> {"accuracy": ..., "top5_accuracy": ...}

`predictions` are per-class scores (logits or probabilities), one row per sample; `references` the class ids.
With fewer than k classes, top-k is over all classes (so it is 1.0); the key keeps the k that was asked for.
"""

import datasets
import evaluate
import numpy as np


class TopKAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description="predictions: (N, C) class scores; references: (N,) class ids; k: int, default 5.",
            features=datasets.Features({
                "predictions": datasets.Sequence(datasets.Value("float32")),
                "references": datasets.Value("int64"),
            }),
        )

    def _compute(self, predictions, references, k: int = 5):
        scores, labels = np.asarray(predictions), np.asarray(references)
        depth = min(k, scores.shape[-1])
        top = np.argpartition(-scores, depth - 1, axis=-1)[:, :depth]
        return {
            "accuracy": float((scores.argmax(-1) == labels).mean()),
            f"top{k}_accuracy": float((top == labels[:, None]).any(-1).mean()),
        }
