"""The heads of a model package: which network outputs answer which question, and how to read them.

A network returns one raw output vector per input (N x K). A package's card says, head by head,
which slice ``[start, stop)`` of that vector belongs to which prediction and what kind it is:

* ``binary``: one logit; ``sigmoid(logit)`` = P(``labels[1]``), the positive label; a decision
  threshold (``thresholds.default``, and optionally ``screening``) in (0, 1).
* ``multiclass``: one logit per class; ``softmax`` over the head's outputs only, in label order.
* ``regression``: one standardised value; ``value = raw * scale + offset`` in ``unit``.

Activations are computed here, in float32 (as the networks were trained), and returned as
float64. A schema-1 card (one sigmoid output, ``task`` ``sex`` or ``ad``) describes one binary head;
:func:`heads_from_v1` makes it, so old and new packages are read by the same code.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..errors import ModelPackageError
from ..types import HEAD_KINDS, TASK_NAME_PATTERN, HeadKind

__all__ = [
    "V1_TARGETS", "HeadSpec", "parse_heads", "check_outputs_in_range", "heads_from_v1", "activate", "check_values",
    "n_outputs_used",
]

#: The participants.tsv column a schema-1 task predicts.
V1_TARGETS: dict[str, str] = {"sex": "sex", "ad": "diagnosis"}
_NAME_RE = re.compile(TASK_NAME_PATTERN)


@dataclass(frozen=True)
class HeadSpec:
    """One validated head of a card (see the module docstring for what each kind means)."""

    name: str
    kind: HeadKind
    target: str
    outputs: tuple[int, int]
    labels: tuple[str, ...] = ()
    thresholds: Mapping[str, float] = field(default_factory=dict)
    unit: str | None = None
    scale: float = 1.0
    offset: float = 0.0

    @property
    def width(self) -> int:
        """How many network outputs the head reads."""
        return self.outputs[1] - self.outputs[0]

    @property
    def positive_label(self) -> str | None:
        return self.labels[1] if self.kind == "binary" else None

    @property
    def negative_label(self) -> str | None:
        return self.labels[0] if self.kind == "binary" else None

    def activate(self, raw: np.ndarray) -> np.ndarray:
        """This head's outputs from the network's raw N x K outputs: N x width, float64.

        Probabilities for ``binary`` (P(positive)) and ``multiclass`` (softmax, label order),
        values in ``unit`` for ``regression``; computed in float32.
        """
        a, b = self.outputs
        t = torch.from_numpy(np.ascontiguousarray(np.asarray(raw, dtype=np.float32).reshape(len(raw), -1)[:, a:b]))
        if self.kind == "binary":
            out = torch.sigmoid(t)
        elif self.kind == "multiclass":
            out = torch.softmax(t, dim=1)
        else:
            out = t * float(self.scale) + float(self.offset)  # python scalars keep the tensor float32
        return out.double().numpy()

    def as_card(self) -> dict[str, Any]:
        """The head as a schema-2 card entry."""
        entry: dict[str, Any] = {"name": self.name, "kind": self.kind, "target": self.target,
                                 "outputs": list(self.outputs)}
        if self.kind in ("binary", "multiclass"):
            entry["labels"] = list(self.labels)
        if self.kind == "binary":
            entry["thresholds"] = dict(self.thresholds)
        if self.kind == "regression":
            entry.update(unit=self.unit, scale=self.scale, offset=self.offset)
        return entry


def _fail(where: Path | str, problem: str) -> ModelPackageError:
    return ModelPackageError(f"{where}: {problem}")


def _labels(entry: Mapping[str, Any], where: Path | str, what: str, n: int | None) -> tuple[str, ...]:
    labels = entry.get("labels")
    if not isinstance(labels, list) or not labels or not all(isinstance(v, str) and v for v in labels):
        raise _fail(where, f"{what} needs 'labels': a list of class names")
    if len(set(labels)) != len(labels):
        raise _fail(where, f"{what} has repeated labels {labels}")
    if n is not None and len(labels) != n:
        raise _fail(where, f"{what} needs {n} labels, got {len(labels)} ({labels})")
    return tuple(labels)


def _thresholds(th: Any, where: Path | str, what: str) -> dict[str, float]:
    if not isinstance(th, Mapping) or "default" not in th:
        raise _fail(where, f"{what} thresholds must contain 'default'")
    for k, v in th.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < float(v) < 1.0:
            raise _fail(where, f"{what} threshold {k!r} must be a number in (0, 1), got {v!r}")
    return {str(k): float(v) for k, v in th.items()}


def _number(entry: Mapping[str, Any], key: str, default: float, where: Path | str, what: str) -> float:
    v = entry.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        raise _fail(where, f"{what} {key} must be a finite number, got {v!r}")
    return float(v)


def _parse_head(entry: Any, where: Path | str, index: int) -> HeadSpec:
    if not isinstance(entry, Mapping):
        raise _fail(where, f"heads[{index}] must be an object")
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise _fail(where, f"heads[{index}] name must match {TASK_NAME_PATTERN} (e.g. 'age'), got {name!r}")
    what = f"head {name!r}"
    kind = entry.get("kind")
    if kind not in HEAD_KINDS:
        raise _fail(where, f"{what}: unknown head kind {kind!r}; known: {', '.join(HEAD_KINDS)}")
    target = entry.get("target")
    if not isinstance(target, str) or not target:
        raise _fail(where, f"{what} needs 'target': the participants.tsv / sessions.tsv column it predicts")
    out = entry.get("outputs")
    ints = isinstance(out, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in out)
    if not ints or not isinstance(out, list) or len(out) != 2 or not 0 <= out[0] < out[1]:
        raise _fail(where, f"{what} outputs must be [start, stop) with 0 <= start < stop, got {out!r}")
    outputs = (int(out[0]), int(out[1]))
    width = outputs[1] - outputs[0]
    if kind in ("binary", "regression") and width != 1:
        raise _fail(where, f"{what} ({kind}) reads one network output, but outputs {list(outputs)} spans {width}")
    if kind == "binary":
        return HeadSpec(name, "binary", target, outputs, _labels(entry, where, what, 2),
                        _thresholds(entry.get("thresholds"), where, what))
    if kind == "multiclass":
        if width < 2:
            raise _fail(where, f"{what} (multiclass) needs at least 2 outputs, got {list(outputs)}")
        return HeadSpec(name, "multiclass", target, outputs, _labels(entry, where, what, width))
    unit = entry.get("unit")
    if not isinstance(unit, str) or not unit:
        raise _fail(where, f"{what} (regression) needs 'unit' (e.g. 'years')")
    scale = _number(entry, "scale", 1.0, where, what)
    if scale == 0.0:
        raise _fail(where, f"{what} scale must not be 0")
    offset = _number(entry, "offset", 0.0, where, what)
    return HeadSpec(name, "regression", target, outputs, (), {}, unit, scale, offset)


def parse_heads(entries: Any, where: Path | str = "model.json", *,
                n_outputs: int | None = None) -> tuple[HeadSpec, ...]:
    """Validate a schema-2 card's ``heads`` list; raise :class:`ModelPackageError` naming ``where``.

    Refused: an empty list, an unknown kind, missing labels / unit / thresholds, repeated head
    names, ``outputs`` that overlap or (when ``n_outputs`` is known) reach beyond the network.
    """
    if not isinstance(entries, list) or not entries:
        raise _fail(where, "heads must list at least one head")
    heads = tuple(_parse_head(e, where, i) for i, e in enumerate(entries))
    names = [h.name for h in heads]
    if len(set(names)) != len(names):
        raise _fail(where, f"head names must be unique, got {names}")
    spans = sorted(heads, key=lambda h: h.outputs)
    for a, b in itertools.pairwise(spans):
        if b.outputs[0] < a.outputs[1]:
            raise _fail(where, f"heads {a.name!r} {list(a.outputs)} and {b.name!r} {list(b.outputs)} "
                               "overlap in outputs")
    if n_outputs is not None:
        check_outputs_in_range(heads, n_outputs, where)
    return heads


def check_outputs_in_range(heads: Sequence[HeadSpec], n_outputs: int, where: Path | str) -> None:
    """Refuse heads whose ``outputs`` reach beyond the network's ``n_outputs`` values."""
    for h in heads:
        if h.outputs[1] > n_outputs:
            raise _fail(where, f"head {h.name!r} reads outputs {list(h.outputs)}, but the network gives {n_outputs}")


def heads_from_v1(card: Mapping[str, Any]) -> tuple[HeadSpec, ...]:
    """The one binary head a (validated) schema-1 card describes: named after its task, output 0."""
    task = str(card["task"])
    out = card["output"]
    th = {str(k): float(v) for k, v in card["thresholds"].items()}
    labels = (str(out["negative_label"]), str(out["positive_label"]))
    return (HeadSpec(task, "binary", V1_TARGETS.get(task, task), (0, 1), labels, th),)


def n_outputs_used(heads: Sequence[HeadSpec]) -> int:
    """The smallest network output count the heads fit in."""
    return max(h.outputs[1] for h in heads)


def activate(heads: Sequence[HeadSpec], raw: np.ndarray) -> list[np.ndarray]:
    """Every head's outputs (N x width, float64) from raw network outputs N x K (or (N,) logits)."""
    raw = np.asarray(raw, dtype=np.float32).reshape(len(raw), -1)
    return [h.activate(raw) for h in heads]


def check_values(heads: Sequence[HeadSpec], raw: np.ndarray) -> np.ndarray:
    """What an engine's self-check compares, N x sum(width): probabilities for the classification
    heads, the raw standardised outputs for regression heads (so that one absolute tolerance means
    the same whatever a head's unit and scale)."""
    raw = np.asarray(raw, dtype=np.float32).reshape(len(raw), -1)
    cols = [h.activate(raw) if h.kind != "regression" else raw[:, h.outputs[0]:h.outputs[1]].astype(np.float64)
            for h in heads]
    return np.concatenate(cols, axis=1)
