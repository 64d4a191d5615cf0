"""capture: record chosen activations (names, globs or a predicate) from any call.

.venv/bin/python examples/capture_activations.py
"""

import torch

from auto_hookpoint import auto_hook, capture
from auto_hookpoint.demo import demo_model, demo_tokenizer

model, tokenizer = auto_hook(demo_model(num_layers=4)), demo_tokenizer()
inputs = tokenizer("The assert statement checks a condition.", return_tensors="pt")

with torch.no_grad(), capture(model, "model.layers.*.hook_point", positions=-1) as last_token:
    model(**inputs)
for name, act in last_token.items():
    print(f"{name:28s} last-token residual norm {act.norm():.4f}")
