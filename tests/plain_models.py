"""Plain PyTorch models of the shapes users bring: each a small class of its own."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn
from transformer_lens.hook_points import HookPoint


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.norm(self.conv(x))))
        return self.head(x.flatten(1))


class LSTMTagger(nn.Module):
    """nn.LSTM returns (output, (h, c)): the site fires with ``output``."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.lstm = nn.LSTM(8, 12, batch_first=True)
        self.head = nn.Linear(12, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(tokens))
        return self.head(out)


class AutoEncoder(nn.Module):
    """Raw parameters used with ``@`` and ``+``, as in an SAE."""

    def __init__(self, d_in: int = 8, d_sae: int = 32) -> None:
        super().__init__()
        self.W_enc = nn.Parameter(torch.randn(d_in, d_sae) / d_in**0.5)
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.W_dec = nn.Parameter(torch.randn(d_sae, d_in) / d_sae**0.5)
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        acts = torch.relu((x - self.b_dec) @ self.W_enc + self.b_enc)
        return acts @ self.W_dec + self.b_dec


class Nested(nn.Module):
    """ModuleList of ModuleDicts of Sequentials: containers get no site of their own."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.ModuleDict(
                {
                    "attn": nn.Linear(8, 8),
                    "mlp": nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8)),
                }
            )
            for _ in range(2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + block["attn"](x)
            x = x + block["mlp"](x)
        return x


class SharedTwice(nn.Module):
    """One submodule called twice in a forward: its site fires twice."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(8, 8)
        self.out = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.shared(torch.tanh(self.shared(x))))


class WithHookPoint(nn.Module):
    """A HookPoint placed by hand keeps its own name."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(8, 16)
        self.hook_mid = HookPoint()
        self.down = nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.hook_mid(torch.relu(self.up(x))))


class Counter(nn.Module):
    """Returns no tensor at all."""

    def forward(self, x: torch.Tensor) -> dict[str, int]:
        return {"rows": x.shape[0]}


class WithNonTensorOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.count = Counter()
        self.lin = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = self.count(x)["rows"]
        return self.lin(x) * rows


class ResidualBlock(nn.Module):
    """torchvision's BasicBlock pattern: in-place ReLU and ``out += identity`` rewrite
    tensors that submodules returned earlier in the same forward."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class ResidualNet(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.blocks = nn.Sequential(ResidualBlock(width), ResidualBlock(width))
        self.head = nn.Linear(width, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


# ------------------------------------------------ outputs and dtypes users bring
@dataclasses.dataclass
class Prediction:
    """A plain dataclass output, with non-tensor members."""

    logits: torch.Tensor
    hidden: torch.Tensor
    label: str = "prediction"
    extra: int | None = None


class DataclassOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> Prediction:
        hidden = torch.relu(self.body(x))
        return Prediction(self.head(hidden), hidden, extra=x.shape[0])


class MixedDtypes(nn.Module):
    """A bfloat16 trunk, a float32 head and an upcast loss, as mixed-precision code has."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Linear(8, 16).to(torch.bfloat16)
        self.head = nn.Linear(16, 4)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = torch.relu(self.trunk(x.to(torch.bfloat16)))
        logits = self.head(hidden.float())
        return F.cross_entropy(logits.float(), target), logits


class ZeroGatedResidual(nn.Module):
    """A zero-initialised gate (as adapters and Flamingo layers start): the branch reaches
    the loss by autograd, yet editing it changes nothing until the gate has trained."""

    def __init__(self) -> None:
        super().__init__()
        self.branch = nn.Linear(8, 8)
        self.gate = nn.Parameter(torch.zeros(1))
        self.out = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(x + self.gate * self.branch(x))


class NaNWhereMasked(nn.Module):
    """Puts NaN at masked positions of its output, on purpose."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.lin(x).masked_fill(~mask[..., None], float("nan"))


class ArgmaxClassifier(nn.Module):
    """Returns integer class ids and a string: nothing in its output requires grad."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> dict[str, object]:
        return {"ids": self.lin(x).argmax(-1), "note": "argmax"}


class Residual(nn.Module):
    """A block that returns the running value (input plus its update), as HF layers do."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.tanh(self.lin(x))
