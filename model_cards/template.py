"""The one model-card template (Jinja2 with `trim_blocks`: a line holding only a
`{% ... %}` tag leaves no blank line; StrictUndefined: a missing value is an error, not a blank).

Every variant's card, trained or converted, comes from this text and the data in its folder (config.json,
metrics.json, recipe.yaml; conversion.json for converted weights) plus the architecture numbers measured in
`measure.py`; nothing here is specific to one variant. Numbers arrive pre-formatted from `card.card_context`;
a row whose value was not measured is left out.
"""

CARD_TEMPLATE = """\
# {{ model_name }}

A **{{ variant }}** image classifier from the ViX family (*Vision Xformers: Efficient Attention for Image \
Classification*, Jeevan & Sethi, [arXiv 2107.02239]({{ paper_url }})): {{ architecture }} whose token mixer is \
{{ mixer_summary }}{% if embedding_type == "conv" %}, with the convolutional patch embedding ("hybrid"){% endif %}, \
using {{ position_summary }}.{% if conversion %} Converted from **{{ conversion.source }}**.\
{% elif base_model %} Fine-tuned from `{{ base_model }}`.{% endif %}\
{% if dataset %} Trained on **{{ dataset }}**.{% endif %}


## Model

| | |
|---|---|
{% for label, value in model_rows %}
| {{ label }} | {{ value }} |
{% endfor %}
{% if measurement_note %}

{{ measurement_note }}
{% endif %}

## How to use

With the `pipeline` (the modeling code is downloaded from this repository, so pin the commit you reviewed):

```python
from transformers import pipeline

classifier = pipeline("image-classification", model="{{ model_ref }}",{{ revision_kwarg }} trust_remote_code=True)
print(classifier("image.png"))
```

With the Auto classes (`AutoModel` gives the backbone without the classifier):

```python
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification

model = AutoModelForImageClassification.from_pretrained("{{ model_ref }}",{{ revision_kwarg }} trust_remote_code=True)
processor = AutoImageProcessor.from_pretrained("{{ model_ref }}",{{ revision_kwarg }} trust_remote_code=True)
inputs = processor(Image.open("image.png"), return_tensors="pt")
with torch.no_grad():
    predicted = model(**inputs).logits.argmax(-1).item()
print(model.config.id2label[predicted])
```

{% if not revision %}
`revision="<commit hash>"` pins the code and weights you reviewed: add it to the calls above.

{% endif %}
With the `vix` package installed (`pip install -e .` in the ViX repository), `import modeling_vix` registers the \
classes and the model loads without `trust_remote_code`.

Fine-tuning on your own labels with `Trainer` (a new classifier head is initialised):

```python
from transformers import (AutoImageProcessor, AutoModelForImageClassification, DefaultDataCollator, Trainer,
                          TrainingArguments)

labels = ["cat", "dog"]  # your classes
model = AutoModelForImageClassification.from_pretrained(
    "{{ model_ref }}",{{ revision_kwarg }} trust_remote_code=True, num_labels=len(labels),
    id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)}, ignore_mismatched_sizes=True,
)
processor = AutoImageProcessor.from_pretrained("{{ model_ref }}",{{ revision_kwarg }} trust_remote_code=True)
# train_dataset: a datasets.Dataset whose transform returns {"pixel_values": ..., "labels": ...} from the processor
args = TrainingArguments("vix-finetuned", remove_unused_columns=False, num_train_epochs=3, learning_rate=5e-4)
# Trainer(model=model, args=args, train_dataset=train_dataset, data_collator=DefaultDataCollator(),
#         processing_class=processor).train()
```

or, from the ViX repository: `python -m training.train --model_name_or_path {{ model_ref }} --trust_remote_code true \
--dataset_name path/to/images --ignore_mismatched_sizes true`.

{% if conversion %}
## Conversion

Converted from **{{ conversion.source }}** with `conversion/` of the ViX repository: every source tensor was \
used and every ViX tensor filled.

### Measured parity (logits, eval mode, fp32)

{% if parity_rows %}
| reference | ViX attention_type | max abs logit diff | reference logit scale | top-1 agreement | inputs |
|---|---|---|---|---|---|
{% for row in parity_rows %}
| {{ row | join(" | ") }} |
{% endfor %}
{% else %}
Parity was not measured (the source model could not be built here).
{% endif %}
{% if conversion_notes %}

{% for note in conversion_notes %}
- {{ note }}
{% endfor %}
{% endif %}

Every number above comes from `conversion.json`, written by the conversion that produced these weights.

{% endif %}
## Training procedure

{% if training_rows %}
| | |
|---|---|
{% for label, value in training_rows %}
| {{ label }} | {{ value }} |
{% endfor %}

{% endif %}
{% if recipe_yaml %}
Every setting of the run is in `recipe.yaml` beside this card; `python -m training.train recipe.yaml` in the ViX \
repository re-runs it.

<details><summary>recipe.yaml</summary>

```yaml
{{ recipe_yaml }}
```

</details>
{% elif conversion %}
These weights were converted (see Conversion above), not trained with ViX.
{% else %}
Not recorded: no `recipe.yaml` came with these weights, so the data, settings, hardware and time of their \
training are not stated here.
{% endif %}

## Results

{% if result_rows %}
{{ protocol }}

| metric | value |
|---|---|
{% for label, value in result_rows %}
| {{ label }} | {{ value }} |
{% endfor %}

Every number above comes from `metrics.json`, written by the training run that produced these weights.
{% else %}
Not measured: no evaluation was recorded with these weights (no `metrics.json`), so this card states no accuracy.\
{% if conversion %} The parity above compares logits with the source model; it is not an accuracy.{% endif %}

{% endif %}

## Limitations

{% for line in limitations %}
- {{ line }}
{% endfor %}

## Citation

```bibtex
{{ citation }}
```
"""

__all__ = ["CARD_TEMPLATE"]
