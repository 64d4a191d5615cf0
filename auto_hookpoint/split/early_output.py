"""EarlyOutput: what a forward stopped by ``run_until`` banked, and its file format.

The file is a safetensors file (never pickle): one tensor per banked site, under the
site's name, and string metadata naming the format, the split site, the order in which
sites fired, the model's class and a fingerprint of its parameter names, shapes and
dtypes, so that loading into the wrong model is refused before anything runs, and the
shapes of the inputs it was banked for, so that resuming other inputs is refused too.

Each activation stays on the device where it was banked (on a model spread over several
devices, each block's on its own); ``.to()`` moves them, and ``load(path, device=...)``
reads them onto one device.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from auto_hookpoint.errors import EarlyOutputError

FORMAT = "auto_hookpoint.EarlyOutput/1"


def model_fingerprint(model: nn.Module) -> str:
    """A hash of the model's class and of every state_dict entry's name, shape and dtype."""
    digest = hashlib.sha256(type(model).__name__.encode())
    for name, value in model.state_dict().items():
        digest.update(f"|{name}:{tuple(value.shape)}:{value.dtype}".encode())
    return digest.hexdigest()[:16]


# Hashing the state dict costs more than a small forward, so each model's fingerprint
# is kept, and computed again when its parameters change dtype or device (.to(...)).
_FINGERPRINTS: weakref.WeakKeyDictionary[nn.Module, tuple[Any, str]] = weakref.WeakKeyDictionary()


@torch.compiler.disable  # plain Python (hashlib, a weak dict): never traced by dynamo
def cached_fingerprint(model: nn.Module) -> str:
    first = next(model.parameters(), None)
    key = (first.dtype, first.device) if first is not None else None
    cached = _FINGERPRINTS.get(model)
    if cached is None or cached[0] != key:
        cached = _FINGERPRINTS[model] = (key, model_fingerprint(model))
    return cached[1]


@dataclass
class EarlyOutput:
    """The banked activations of a forward that ``run_until`` stopped after ``site``.

    ``activations`` maps site names to their tensors (the last value of each, detached);
    ``order`` lists the site names in the order they fired (repeats included).
    """

    site: str
    activations: dict[str, torch.Tensor]
    order: list[str]
    model_class: str
    # Where the split tensor sat in its module's output: [] when the output was the
    # tensor itself, [0] for the first item of a tuple, ...
    output_path: list[int | str] = field(default_factory=list)
    fingerprint: str = ""  # of the model it was banked from (model_fingerprint)
    # The shapes of the forward's tensor inputs, by name (see split.inputs); {} if unknown.
    inputs: dict[str, list[int]] = field(default_factory=dict)
    # The model it was banked from, while it lives: resuming on that very model skips
    # the fingerprint comparison.
    source: weakref.ReferenceType[nn.Module] | None = field(default=None, repr=False, compare=False)

    @property
    def activation(self) -> torch.Tensor:
        """The activation at the split site."""
        return self.activations[self.site]

    @property
    def device(self) -> torch.device:
        """The device of the activation at the split site."""
        return self.activation.device

    @property
    def devices(self) -> dict[str, torch.device]:
        """The device of each banked activation, by site name."""
        return {name: tensor.device for name, tensor in self.activations.items()}

    def to(self, *args: Any, **kwargs: Any) -> EarlyOutput:
        """A copy with every activation moved/cast as ``Tensor.to`` would."""
        moved = {k: v.to(*args, **kwargs) for k, v in self.activations.items()}
        return dataclasses.replace(self, activations=moved, order=list(self.order))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write a safetensors file (never pickle): :meth:`to_safetensors`'s tensors and
        metadata."""
        tensors, metadata = self.to_safetensors()
        save_file(tensors, os.fspath(path), metadata=metadata)

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str | torch.device = "cpu") -> EarlyOutput:
        """Read a file written by :meth:`save`; a corrupt or foreign one: EarlyOutputError."""
        try:
            with safe_open(os.fspath(path), framework="pt", device=str(device)) as file:
                metadata = file.metadata() or {}
                tensors = {name: file.get_tensor(name) for name in file.keys()}  # noqa: SIM118
        except (SafetensorError, OSError, ValueError) as error:
            raise EarlyOutputError(f"{path} is not a readable EarlyOutput file: {error}") from error
        return cls.from_safetensors(tensors, metadata, str(path))

    def to_safetensors(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """The tensors (one per banked site, contiguous copies) and the string metadata
        of this EarlyOutput's safetensors form, for a file or another container (a
        network request)."""
        tensors = {name: t.detach().contiguous().clone() for name, t in self.activations.items()}
        metadata = {
            "format": FORMAT,
            "site": self.site,
            "order": json.dumps(self.order),
            "model_class": self.model_class,
            "fingerprint": self.fingerprint,
            "output_path": json.dumps(self.output_path),
            "inputs": json.dumps(self.inputs),
            "shapes": json.dumps({k: list(v.shape) for k, v in tensors.items()}),
            "dtypes": json.dumps({k: str(v.dtype) for k, v in tensors.items()}),
        }
        return tensors, metadata

    @classmethod
    def from_safetensors(
        cls, tensors: dict[str, torch.Tensor], metadata: dict[str, str], where: str = "the data"
    ) -> EarlyOutput:
        """The EarlyOutput that :meth:`to_safetensors` gave these tensors and metadata;
        EarlyOutputError (naming ``where``) if they are not one, or were altered."""
        if metadata.get("format") != FORMAT:
            raise EarlyOutputError(
                f"{where} is a safetensors file but not an EarlyOutput (format "
                f"{metadata.get('format')!r}, expected {FORMAT!r})"
            )
        try:
            site, order = metadata["site"], json.loads(metadata["order"])
            shapes, dtypes = json.loads(metadata["shapes"]), json.loads(metadata["dtypes"])
            early = cls(
                site, tensors, order, metadata["model_class"],
                json.loads(metadata["output_path"]), metadata["fingerprint"],
                inputs=json.loads(metadata.get("inputs", "{}")),
            )  # fmt: skip
        except (KeyError, json.JSONDecodeError) as error:
            raise EarlyOutputError(f"{where} has damaged EarlyOutput metadata: {error}") from error
        if site not in tensors:
            raise EarlyOutputError(
                f"{where} does not hold the activation of its split site {site!r}"
            )
        for name, tensor in tensors.items():
            if list(tensor.shape) != shapes.get(name) or str(tensor.dtype) != dtypes.get(name):
                raise EarlyOutputError(
                    f"{where}: {name!r} is {list(tensor.shape)} {tensor.dtype} but was saved as "
                    f"{shapes.get(name)} {dtypes.get(name)}"
                )
        return early

    def check_belongs_to(self, model: nn.Module) -> None:
        """Raise EarlyOutputError unless this was banked from a model of the same shape."""
        if self.source is not None and self.source() is model:
            return
        expected = cached_fingerprint(model)
        if self.fingerprint != expected:
            raise EarlyOutputError(
                f"this EarlyOutput was banked from a {self.model_class} with fingerprint "
                f"{self.fingerprint}, but this {type(model).__name__} has fingerprint {expected}: "
                "a different architecture or size. Resume on the model it was split from."
            )
