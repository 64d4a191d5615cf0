"""Hook a HuggingFace causal LM: cache a layer, ablate attention, generate, unwrap.

.venv/bin/python examples/hook_a_language_model.py
"""

import torch

from auto_hookpoint import auto_hook
from auto_hookpoint.demo import demo_model, demo_tokenizer

tokenizer = demo_tokenizer()
model = auto_hook(demo_model())  # a LlamaForCausalLM built from a config, now hooked
inputs = tokenizer("The import statement binds names in the local namespace.", return_tensors="pt")

with torch.no_grad():
    out, cache = model.run_with_cache(**inputs, names_filter=lambda n: n.endswith("mlp.hook_point"))
    for name, act in cache.items():
        print(f"{name:35s} {list(act.shape)}  mean |x| {act.abs().mean():.4f}")

    def zero_ablate(t: torch.Tensor, hook: object) -> torch.Tensor:
        return torch.zeros_like(t)

    ablated = model.run_with_hooks(
        **inputs, fwd_hooks=[("model.layers.1.self_attn.hook_point", zero_ablate)]
    )
    change = (ablated.logits - out.logits).abs().mean()
    print(f"zero-ablating layer 1 attention moves the logits by {change:.4f} on average")

    generated = model.generate(inputs["input_ids"], max_new_tokens=8, do_sample=False)
    print("generated:", tokenizer.decode(generated[0]))

original = model.unwrap()
print(
    "unwrapped:",
    type(original).__name__,
    "with",
    sum(len(m._forward_hooks) for m in original.modules()),
    "hooks",
)
