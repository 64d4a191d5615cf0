"""Where did the first NaN come from? Forward and backward.

.venv/bin/python examples/find_nan.py
"""

import torch

from auto_hookpoint import NonFiniteError, auto_hook, find_nonfinite
from auto_hookpoint.demo import demo_model, demo_tokenizer

model, tokenizer = auto_hook(demo_model(num_layers=4)), demo_tokenizer()
with torch.no_grad():
    model.model.layers[2].self_attn.v_proj.weight[3, 7] = float("inf")  # a corrupted weight
ids = tokenizer("The raise statement raises an exception.", return_tensors="pt")["input_ids"]

with find_nonfinite(model) as found:  # collect, don't stop
    model(ids, labels=ids).loss.backward()
print("first producer:", found.first)

try:  # or stop at the first one, here inside a generation
    with find_nonfinite(model, raise_on_first=True):
        model.generate(ids, max_new_tokens=3, do_sample=False)
except NonFiniteError as error:
    print("generation stopped:", error)
