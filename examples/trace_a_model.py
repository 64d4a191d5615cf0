"""Where does the time go? Trace a generation module by module.

.venv/bin/python examples/trace_a_model.py     # writes a trace.json (Perfetto, chrome://tracing)
"""

import tempfile
from pathlib import Path

import torch

from auto_hookpoint import auto_hook, trace
from auto_hookpoint.demo import demo_model, demo_tokenizer

model, tokenizer = auto_hook(demo_model()), demo_tokenizer()
ids = tokenizer("The with statement wraps a block.", return_tensors="pt")["input_ids"]
with torch.no_grad(), trace(model) as recorded:
    model.generate(ids, max_new_tokens=5, do_sample=False)
print(recorded.key_averages().table(sort_by="self_ns", row_limit=10))
out = Path(tempfile.mkdtemp(prefix="auto_hookpoint_")) / "trace.json"
recorded.export_chrome_trace(out)
print(f"{len(recorded.events)} module calls written to {out}")
