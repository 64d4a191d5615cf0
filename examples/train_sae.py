"""Train a sparse autoencoder with sae_lens on a HuggingFace model, through the adapter.

    .venv/bin/python examples/train_sae.py [LOCAL_HF_CAUSAL_LM_DIR]

With no folder it uses a small Llama built from a config, and a tokenizer trained
offline; the SAE is saved in sae_lens' own format under ./sae_out.
"""

import sys
from pathlib import Path

from auto_hookpoint import HookedTransformerAdapter
from auto_hookpoint.adapter.train_sae import summary, train_sae
from auto_hookpoint.demo import demo_model, demo_tokenizer

if len(sys.argv) > 1:
    adapter = HookedTransformerAdapter.from_pretrained(sys.argv[1])
else:
    adapter = HookedTransformerAdapter(demo_model(num_layers=4), demo_tokenizer())

# TransformerLens' name; "model.layers.1.hook_point" (the HF module path) works too.
sae, metrics = train_sae(adapter, "blocks.1.hook_resid_post", Path("sae_out"), steps=300)
print("saved to sae_out/:", sorted(p.name for p in Path("sae_out").iterdir()))
print(summary(metrics))
