"""Where does the memory go? Bytes each module outputs, and the peak.

.venv/bin/python examples/memory_profile.py    # writes a memory.png if matplotlib is installed
"""

import tempfile
from pathlib import Path

import torch

from auto_hookpoint import auto_hook, memory_profile
from auto_hookpoint.demo import demo_model, demo_tokenizer

model, tokenizer = auto_hook(demo_model(num_layers=4)), demo_tokenizer()
inputs = tokenizer(["The pass statement does nothing."] * 8, return_tensors="pt")
with torch.no_grad(), memory_profile(model) as mem:
    model(**inputs)
print(mem.key_averages().table(row_limit=10))
try:
    out = Path(tempfile.mkdtemp(prefix="auto_hookpoint_")) / "memory.png"
    mem.save_bar_chart(out)
    print(f"bar chart written to {out}")
except ImportError as error:
    print(error)
