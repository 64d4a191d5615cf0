"""Where does the memory go? Bytes each module outputs, and the peak.

.venv/bin/python examples/memory_profile.py    # writes memory.png if matplotlib is installed
"""

import torch

from auto_hookpoint import auto_hook
from auto_hookpoint.demo import demo_model, demo_tokenizer
from auto_hookpoint.observers.memory import memory_profile

model, tokenizer = auto_hook(demo_model(num_layers=4)), demo_tokenizer()
inputs = tokenizer(["The pass statement does nothing."] * 8, return_tensors="pt")
with torch.no_grad(), memory_profile(model) as mem:
    model(**inputs)
print(mem.table(10))
try:
    mem.save_bar_chart("memory.png")
    print("bar chart written to memory.png")
except ImportError as error:
    print(error)
