"""Run a folder written by `conversion.to_onnx` with onnxruntime: images in, labels and scores out.

    from conversion.onnx_runtime import OnnxImageClassifier

    classifier = OnnxImageClassifier("cifar10_ccn-onnx")            # model.onnx; file="model_int8.onnx" for int8
    classifier(["cat.png", "ship.jpg"], top_k=2)   # [[{"label": "cat", "score": 0.91}, ...], ...], as pipeline()
    classifier.logits(pixel_values)                # (B, num_labels) numpy, from (B, 3, H, W) float32

The folder's own `preprocessor_config.json` prepares the images and `config.json`'s `id2label` names the outputs, so
nothing but the folder is needed (and onnxruntime, transformers for the processor, and this package).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from modeling_vix import VixImageProcessor

from .to_onnx import INPUT_NAME, ONNX_FILE, OUTPUT_NAME, ort_session


class OnnxImageClassifier:
    def __init__(self, folder, file: str = ONNX_FILE, threads: int | None = None):
        folder = Path(folder)
        if not (folder / file).is_file():
            raise FileNotFoundError(f"{folder / file} not found: export the model with python -m conversion.to_onnx.")
        self.session = ort_session(folder / file, threads)
        self.processor = VixImageProcessor.from_pretrained(folder)
        id2label = json.loads((folder / "config.json").read_text()).get("id2label", {})
        self.id2label = {int(index): label for index, label in id2label.items()}

    def logits(self, pixel_values: np.ndarray) -> np.ndarray:
        """(B, num_labels) logits for (B, C, H, W) pixel_values already prepared by the folder's processor."""
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(pixel_values, np.float32)})[0]

    def __call__(self, images, top_k: int = 1) -> list[list[dict]]:
        """For each image (a PIL image or a path), its `top_k` labels with softmax scores, best first."""
        images = [Image.open(image) if isinstance(image, (str, Path)) else image for image in images]
        logits = self.logits(self.processor(images, return_tensors="np")["pixel_values"])
        shifted = np.exp(logits - logits.max(-1, keepdims=True))  # softmax, stable
        scores = shifted / shifted.sum(-1, keepdims=True)
        best = np.argsort(-scores, axis=-1)[:, :top_k]
        return [[{"label": self.id2label.get(int(i), str(int(i))), "score": float(row[i])} for i in indices]
                for row, indices in zip(scores, best, strict=True)]
