"""Random model structures for the generated tests (hypothesis strategies).

A model is built from a *spec*, a small tree of tuples that hypothesis generates and
shrinks: ``("linear",)``, ``("residual", child)``, ``("repeat", n, child)``, ... Every
node is a module mapping a float tensor ``[batch, positions, WIDTH]`` to one of the same
shape, so nodes compose freely. Between them the tree covers what real models do:

* builtin modules (``nn.Linear``, ``nn.ReLU(inplace=True)``, ``nn.LayerNorm``), nested
  ``nn.Sequential``, ``ModuleList``/``ModuleDict`` containers, modules never called;
* raw parameters used through operators and ``F.linear`` (parameter sites), also of a
  module with children (lent while they run), buffers;
* outputs as a tensor, tuple, list, dict, ``ModelOutput`` or dataclass, with ``None``,
  text, numbers, integer and boolean tensors next to the activation;
* in-place ops on tensors other modules returned (``out += x``, in-place ReLU), views;
* a module called several times, a module that calls itself (re-entrant), a module
  shared by two parents (tied), a parameter shared by two modules (tied), modules that
  return no tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn
from transformers.utils import ModelOutput

WIDTH = 4


@dataclass
class PlainOut:
    note: str
    missing: Any
    hidden: torch.Tensor
    ids: torch.Tensor


@dataclass
class HFOut(ModelOutput):
    loss: torch.Tensor | None = None
    hidden: torch.Tensor | None = None
    mask: torch.Tensor | None = None


# How a Structured node wraps its activation h (with integer ids and a boolean mask).
WRAPS = {
    "tuple": lambda h: (None, h, 3, h.argmax(-1)),
    "list": lambda h: [h, "text", h > 0],
    "dict": lambda h: {"note": "x", "none": None, "hidden": h, "mask": h > 0},
    "model_output": lambda h: HFOut(hidden=h, mask=h > 0),
    "dataclass": lambda h: PlainOut("x", None, h, h.argmax(-1)),
}


def unwrap_hidden(out: Any) -> torch.Tensor:
    """The activation inside what a Structured node returned (not via auto_hookpoint)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return next(v for v in out if isinstance(v, torch.Tensor) and v.is_floating_point())
    if isinstance(out, dict):
        return out["hidden"]
    return out.hidden  # type: ignore[no-any-return]


class RawAffine(nn.Module):
    """Raw parameters through ``@`` and ``+`` (or ``F.linear``), and a buffer."""

    def __init__(self, functional: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(WIDTH, WIDTH) / WIDTH)
        self.bias = nn.Parameter(torch.randn(WIDTH) / 10)
        self.register_buffer("scale", torch.tensor(0.9))
        self.functional = functional

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.functional:
            return F.linear(x, self.weight, self.bias) * self.scale
        return (x @ self.weight + self.bias) * self.scale


class TiedAffine(nn.Module):
    """Uses another module's parameter (tied weights) and one of its own."""

    def __init__(self, weight: nn.Parameter) -> None:
        super().__init__()
        self.weight = weight
        self.gain = nn.Parameter(torch.ones(WIDTH))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight) * self.gain


class Structured(nn.Module):
    """Returns its activation inside a structure; the parent unpacks it."""

    def __init__(self, wrap: str) -> None:
        super().__init__()
        self.inner = nn.Linear(WIDTH, WIDTH)
        self.wrap = wrap

    def forward(self, x: torch.Tensor) -> Any:
        return WRAPS[self.wrap](torch.tanh(self.inner(x)))


class Unpack(nn.Module):
    def __init__(self, child: nn.Module) -> None:
        super().__init__()
        self.child = child

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return unwrap_hidden(self.child(x))


class Gated(nn.Module):
    """Raw parameters of a module that has children: they are lent while the children run."""

    def __init__(self, child: nn.Module) -> None:
        super().__init__()
        self.child = child
        self.gate = nn.Parameter(torch.rand(WIDTH) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.child(x) * self.gate


class Residual(nn.Module):
    """``out = child(x); out += x`` rewrites the tensor the child returned."""

    def __init__(self, child: nn.Module) -> None:
        super().__init__()
        self.child = child

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.child(x)
        out += x
        return out


class InplaceAct(nn.Module):
    """An in-place activation after a module: rewrites its output."""

    def __init__(self, child: nn.Module) -> None:
        super().__init__()
        self.child = child
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.child(x) * 1.0) + x  # * 1.0: never a leaf or the input


class Repeat(nn.Module):
    """Calls one child several times."""

    def __init__(self, child: nn.Module, times: int) -> None:
        super().__init__()
        self.child = child
        self.times = times

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.times):
            x = torch.tanh(self.child(x))
        return x


class Reentrant(nn.Module):
    """Calls itself: its site fires nested inside its own call."""

    def __init__(self, depth: int) -> None:
        super().__init__()
        self.lin = nn.Linear(WIDTH, WIDTH)
        self.mix = nn.Parameter(torch.rand(WIDTH) + 0.5)  # lent in nested calls too
        self.depth = depth

    def forward(self, x: torch.Tensor, depth: int | None = None) -> torch.Tensor:
        depth = self.depth if depth is None else depth
        x = torch.tanh(self.lin(x)) * self.mix
        return self(x, depth - 1) * 0.5 + x if depth > 0 else x


class Containers(nn.Module):
    """A ModuleList and a ModuleDict; some members never called."""

    def __init__(self, children: list[nn.Module], skip_last: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(children)
        self.extra = nn.ModuleDict({"unused": nn.Linear(WIDTH, WIDTH), "norm": nn.LayerNorm(WIDTH)})
        self.skip_last = skip_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blocks = list(self.blocks)[:-1] if self.skip_last and len(self.blocks) > 1 else self.blocks
        for block in blocks:
            x = block(x)
        return self.extra["norm"](x)


class Shape(nn.Module):
    """Returns no tensor at all."""

    def forward(self, x: torch.Tensor) -> dict[str, Any]:
        return {"rows": x.shape[0], "none": None}


class WithShape(nn.Module):
    def __init__(self, child: nn.Module) -> None:
        super().__init__()
        self.shape = Shape()
        self.child = child

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.child(x) * (self.shape(x)["rows"] / x.shape[0])


class HalfView(nn.Module):
    """Returns a view of its input's computation (the caller keeps using the base)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., : WIDTH // 2]


class ViewUser(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(WIDTH, WIDTH)
        self.first_half = HalfView()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        return h + self.first_half(h).sum(-1, keepdim=True)


class Root(nn.Module):
    def __init__(self, body: nn.Module, tie: nn.Module | None) -> None:
        super().__init__()
        self.body = body
        self.tied = tie  # a module that also lives inside the body (tied): one site
        self.head = nn.Linear(WIDTH, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(x)
        if self.tied is not None:
            x = self.tied(x)
        return self.head(x)


# ------------------------------------------------------------------ specs
LEAVES = st.sampled_from(
    [("linear",), ("relu_linear",), ("raw", False), ("raw", True), ("layernorm",), ("view",)]
)


def _extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.tuples(st.just("seq"), st.lists(children, min_size=1, max_size=3)),
        st.tuples(st.just("residual"), children),
        st.tuples(st.just("gated"), children),
        st.tuples(st.just("inplace_act"), children),
        st.tuples(st.just("repeat"), st.integers(2, 3), children),
        st.tuples(st.just("structured"), st.sampled_from(sorted(WRAPS))),
        st.tuples(st.just("reentrant"), st.integers(1, 2)),
        st.tuples(st.just("containers"), st.lists(children, min_size=1, max_size=3), st.booleans()),
        st.tuples(st.just("with_shape"), children),
    )


SPECS = st.tuples(
    st.recursive(LEAVES, _extend, max_leaves=6),
    st.booleans(),  # tie a module of the body to the root as well
    st.booleans(),  # tie a parameter of a raw module to a second module
)


def build(spec: Any, seed: int = 0) -> nn.Module:
    """The model a spec describes, with weights from ``seed``."""
    body_spec, tie_module, tie_param = spec
    torch.manual_seed(seed)
    made: list[nn.Module] = []
    body = _node(body_spec, made)
    tie = next((m for m in made if isinstance(m, nn.Linear)), None) if tie_module else None
    raw = next((m for m in made if isinstance(m, RawAffine)), None)
    if tie_param and raw is not None:
        body = nn.Sequential(body, TiedAffine(raw.weight))
    return Root(body, tie)


def _node(spec: Any, made: list[nn.Module]) -> nn.Module:
    kind = spec[0]
    module: nn.Module
    if kind == "linear":
        module = nn.Linear(WIDTH, WIDTH)
    elif kind == "relu_linear":
        module = nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.ReLU(inplace=True))
    elif kind == "raw":
        module = RawAffine(spec[1])
    elif kind == "layernorm":
        module = nn.LayerNorm(WIDTH)
    elif kind == "view":
        module = ViewUser()
    elif kind == "seq":
        module = nn.Sequential(*[_node(child, made) for child in spec[1]])
    elif kind == "gated":
        module = Gated(_node(spec[1], made))
    elif kind == "residual":
        module = Residual(_node(spec[1], made))
    elif kind == "inplace_act":
        module = InplaceAct(_node(spec[1], made))
    elif kind == "repeat":
        module = Repeat(_node(spec[2], made), spec[1])
    elif kind == "structured":
        module = Unpack(Structured(spec[1]))
    elif kind == "reentrant":
        module = Reentrant(spec[1])
    elif kind == "containers":
        module = Containers([_node(child, made) for child in spec[1]], spec[2])
    elif kind == "with_shape":
        module = WithShape(_node(spec[1], made))
    else:
        raise ValueError(kind)
    made.extend(module.modules())
    return module
