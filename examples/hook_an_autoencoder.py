"""@auto_hook on your own class: raw parameters are hook sites too.

.venv/bin/python examples/hook_an_autoencoder.py
"""

import torch
from torch import nn

from auto_hookpoint import auto_hook


@auto_hook
class SparseAutoencoder(nn.Module):
    def __init__(self, d_in: int = 16, d_sae: int = 64) -> None:
        super().__init__()
        self.W_enc = nn.Parameter(torch.randn(d_in, d_sae) / d_in**0.5)
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.W_dec = nn.Parameter(torch.randn(d_sae, d_in) / d_sae**0.5)
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        acts = torch.relu((x - self.b_dec) @ self.W_enc + self.b_enc)
        return acts @ self.W_dec + self.b_dec


torch.manual_seed(0)
sae = SparseAutoencoder()
print("sites:", list(sae.hook_dict))
x = torch.randn(8, 16)


def keep_first_latents(W_enc: torch.Tensor, hook: object) -> torch.Tensor:
    """Ablate all but the first 8 latents by zeroing their encoder columns."""
    mask = torch.zeros_like(W_enc)
    mask[:, :8] = 1
    return W_enc * mask


full = sae(x)
narrow = sae.run_with_hooks(x, fwd_hooks=[("W_enc.hook_point", keep_first_latents)])
print(f"reconstruction error, all latents: {(full - x).pow(2).mean():.4f}")
print(f"reconstruction error, first 8 latents: {(narrow - x).pow(2).mean():.4f}")

# Gradients flow through the hook to the real parameter.
with sae.hooks(fwd_hooks=[("W_enc.hook_point", keep_first_latents)]):
    sae(x).pow(2).sum().backward()
print("W_enc gradient is zero outside the kept latents:", bool((sae.W_enc.grad[:, 8:] == 0).all()))
