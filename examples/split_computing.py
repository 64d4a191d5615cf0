"""Split computing: run a causal LM up to layer 1 here, finish it in another process.

    .venv/bin/python examples/split_computing.py [LOCAL_HF_MODEL_DIR]

The first process stops the forward right after decoder layer 1 (nothing after it is
computed) and saves the activation with safetensors; a second process loads it and
resumes from layer 2 without recomputing layers 0-1. The logits match the un-split
forward bit for bit.
"""

import sys
from pathlib import Path

from auto_hookpoint.commands.split_demo import split_and_finish_elsewhere

model_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else None
same = split_and_finish_elsewhere(
    model_dir, "A for loop iterates over the items of a list.", layer=1
)
sys.exit(0 if same else 1)
