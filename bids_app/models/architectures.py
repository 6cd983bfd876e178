"""The one registry of network architectures a model card may name.

``build_network(name, **params)`` builds an untrained network from a card's ``architecture``
section (``{"name": ..., "params": {...}}``). Each family lives in its own module and is imported
only when asked for:

=================== ============ ======================================= ==================
name                family       params                                  forward returns
=================== ============ ======================================= ==================
``irv2_sex``        brainimagenet width, blocks, in_channels, dropout,    logits (N,)
``irv2_ad_optimised``                 input_spatial
``irv2_ad_intact``
``cnn``             cnn          filters (list or ``cnn5`` / ``cnn7`` /  (N, n_outputs)
                                 ``cnn10`` / ``cnn12``), width,
                                 n_outputs, in_channels, input_shape,
                                 dropout, pool_after
``liu_mox``         liu_mox      n_outputs, in_channels, input_shape,    (N, n_outputs)
                                 channels, hidden
``sfcn``            sfcn         channels, n_outputs, in_channels,       (N, n_outputs)
                                 input_shape, dropout
``regional_linear`` regional     n_regions, n_outputs, atlas             (N, n_outputs)
=================== ============ ======================================= ==================

An unknown name or parameter, or a parameter outside its rule, raises
:class:`~bids_app.errors.ModelPackageError` naming the architecture, the parameter, the rule and the
value (exit code 65 when a card carried it). Every network built here records the resolved
parameters it was built with in ``net.params`` (for the card) and, for the new families,
``net.n_outputs``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal, Mapping

from torch import nn

from ..errors import ModelPackageError

__all__ = ["ARCHITECTURES", "ArchitectureSpec", "build_network", "architecture_spec"]

Family = Literal["brainimagenet", "cnn", "liu_mox", "sfcn", "regional"]


@dataclass(frozen=True)
class ArchitectureSpec:
    """What the registry knows of one architecture before importing its module."""

    name: str
    family: Family
    #: ``"module:attribute"`` of the builder, imported on first use.
    target: str
    #: Keyword parameters the builder accepts.
    params: frozenset[str]
    #: ``"logit"``: forward returns (N,) (the BrainImageNet networks); ``"vector"``: (N, n_outputs).
    output: Literal["logit", "vector"]
    #: Passed to the builder as its first positional argument (the IRv2 builder serves three names).
    positional_name: bool = False


_IRV2_PARAMS = frozenset({"width", "blocks", "in_channels", "dropout", "input_spatial"})
_SPECS = (
    ArchitectureSpec("irv2_sex", "brainimagenet", "bids_app.models.irv2:build_network", _IRV2_PARAMS, "logit", True),
    ArchitectureSpec("irv2_ad_optimised", "brainimagenet", "bids_app.models.irv2:build_network", _IRV2_PARAMS,
                     "logit", True),
    ArchitectureSpec("irv2_ad_intact", "brainimagenet", "bids_app.models.irv2:build_network", _IRV2_PARAMS,
                     "logit", True),
    ArchitectureSpec("cnn", "cnn", "bids_app.models.cnn:CNN3D", frozenset(
        {"filters", "width", "n_outputs", "in_channels", "input_shape", "dropout", "pool_after"}), "vector"),
    ArchitectureSpec("liu_mox", "liu_mox", "bids_app.models.liu:LiuMOX", frozenset(
        {"n_outputs", "in_channels", "input_shape", "channels", "hidden"}), "vector"),
    ArchitectureSpec("sfcn", "sfcn", "bids_app.models.sfcn:SFCN", frozenset(
        {"channels", "n_outputs", "in_channels", "input_shape", "dropout"}), "vector"),
    ArchitectureSpec("regional_linear", "regional", "bids_app.models.regional:RegionalLinear", frozenset(
        {"n_regions", "n_outputs", "atlas", "input_shape", "normalise"}), "vector"),
)
#: name -> :class:`ArchitectureSpec`, in the order of the table above.
ARCHITECTURES: Mapping[str, ArchitectureSpec] = MappingProxyType({s.name: s for s in _SPECS})


def architecture_spec(name: str) -> ArchitectureSpec:
    """The registry entry of ``name``; an unknown name raises ModelPackageError listing the known ones."""
    if not isinstance(name, str) or name not in ARCHITECTURES:
        raise ModelPackageError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def _builder(spec: ArchitectureSpec) -> Any:
    module_name, attr = spec.target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelPackageError(
            f"architecture {spec.name!r} needs {module_name}, which cannot be imported: {exc}"
        ) from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ModelPackageError(f"architecture {spec.name!r}: {module_name} has no {attr}") from None


def build_network(name: str, **params: Any) -> nn.Module:
    """Build the untrained network ``name`` (a key of :data:`ARCHITECTURES`) with ``params``."""
    spec = architecture_spec(name)
    unknown = sorted(set(params) - spec.params)
    if unknown:
        raise ModelPackageError(
            f"architecture {name!r}: unknown parameter(s) {unknown}; allowed: {sorted(spec.params)}"
        )
    build = _builder(spec)
    try:
        net = build(name, **params) if spec.positional_name else build(**params)
    except ModelPackageError:
        raise
    except ValueError as exc:
        raise ModelPackageError(f"architecture {name!r}: {exc}") from exc
    if not isinstance(net, nn.Module):  # pragma: no cover - a builder bug, not a user error
        raise TypeError(f"builder of {name!r} returned {type(net).__name__}, not an nn.Module")
    return net
