"""Explanations of the model scores: occlusion maps (exact, fast) and Grad-CAM, as derivatives.

* :mod:`.occlusion` -- score drop when a cube of the input is set to a baseline; the exact fast
  engine (receptive-field-limited recomputation through the layer graph) and the naive definition.
* :mod:`.gradcam` -- Grad-CAM at the stem output, placed on the model grid; thresholded variants.
* :mod:`.atlas` -- top AAL regions of a map (Debian ``mricron-data``; offline).
* :mod:`.maps` -- the maps of a model package (fold ensemble) for one input, on the SPM grid.
* :mod:`.outputs` -- BIDS-Derivatives files, sidecars, atlas summaries, the predictions JSON.
"""

from .atlas import Atlas, AtlasUnavailable, load_atlas, top_regions
from .gradcam import (
    GradCAMResult,
    default_layer,
    gradcam,
    layer_placement,
    threshold_map,
)
from .maps import (
    EXPLAIN_CHOICES,
    METHODS,
    MODEL_DESC,
    ExplainOptions,
    ExplanationMap,
    explain_package,
)
from .occlusion import (
    OcclusionEngine,
    OcclusionParams,
    OcclusionResult,
    occlusion_fast,
    occlusion_naive,
    window_positions,
)
from .outputs import write_explanations

__all__ = [
    "EXPLAIN_CHOICES",
    "METHODS",
    "MODEL_DESC",
    "Atlas",
    "AtlasUnavailable",
    "ExplainOptions",
    "ExplanationMap",
    "GradCAMResult",
    "OcclusionEngine",
    "OcclusionParams",
    "OcclusionResult",
    "default_layer",
    "explain_package",
    "gradcam",
    "layer_placement",
    "load_atlas",
    "occlusion_fast",
    "occlusion_naive",
    "threshold_map",
    "top_regions",
    "window_positions",
    "write_explanations",
]
