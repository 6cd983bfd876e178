"""Methods text for the reports: a paragraph a researcher can paste into a paper, with references.

Like fMRIPrep's boilerplate, the text is generated from what was actually run (the backend and its
parameters from the map sidecars, the models and their versions and checksums from the predictions,
the explanation parameters from the explanation sidecars), so it cannot describe a configuration
that was not used. Only the references of the steps that ran are listed.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from .. import __version__

__all__ = ["REFERENCES", "participant_methods", "group_methods"]

#: key -> full reference (Vancouver-like style)
REFERENCES: dict[str, str] = {
    "lu2022": (
        "Lu B, Li HX, Chang ZK, Li L, Chen NX, Zhu ZC, et al. A practical Alzheimer's disease classifier via brain "
        "imaging-based deep learning on 85,721 samples. J Big Data. 2022;9:101. doi:10.1186/s40537-022-00650-y"
    ),
    "szegedy2017": (
        "Szegedy C, Ioffe S, Vanhoucke V, Alemi AA. Inception-v4, Inception-ResNet and the impact of residual "
        "connections on learning. Proc AAAI Conf Artif Intell. 2017;31(1):4278-4284."
    ),
    "avants2011": (
        "Avants BB, Tustison NJ, Song G, Cook PA, Klein A, Gee JC. A reproducible evaluation of ANTs similarity metric "
        "performance in brain image registration. NeuroImage. 2011;54(3):2033-2044. "
        "doi:10.1016/j.neuroimage.2010.09.025"
    ),
    "avants2008": (
        "Avants BB, Epstein CL, Grossman M, Gee JC. Symmetric diffeomorphic image registration with cross-correlation: "
        "evaluating automated labeling of elderly and neurodegenerative brain. Med Image Anal. 2008;12(1):26-41. "
        "doi:10.1016/j.media.2007.06.004"
    ),
    "tustison2010": (
        "Tustison NJ, Avants BB, Cook PA, Zheng Y, Egan A, Yushkevich PA, Gee JC. N4ITK: improved N3 bias correction. "
        "IEEE Trans Med Imaging. 2010;29(6):1310-1320. doi:10.1109/TMI.2010.2046908"
    ),
    "fonov2011": (
        "Fonov V, Evans AC, Botteron K, Almli CR, McKinstry RC, Collins DL. Unbiased average age-appropriate atlases "
        "for pediatric studies. NeuroImage. 2011;54(1):313-327. doi:10.1016/j.neuroimage.2010.07.033"
    ),
    "abraham2014": (
        "Abraham A, Pedregosa F, Eickenberg M, Gervais P, Mueller A, Kossaifi J, et al. Machine learning for "
        "neuroimaging with scikit-learn. Front Neuroinform. 2014;8:14. doi:10.3389/fninf.2014.00014"
    ),
    "routier2021": (
        "Routier A, Burgos N, Diaz M, Bacci M, Bottani S, El-Rifai O, et al. Clinica: an open-source software platform "
        "for reproducible clinical neuroscience studies. Front Neuroinform. 2021;15:689675. "
        "doi:10.3389/fninf.2021.689675"
    ),
    "ashburner2005": (
        "Ashburner J, Friston KJ. Unified segmentation. NeuroImage. 2005;26(3):839-851. "
        "doi:10.1016/j.neuroimage.2005.02.018"
    ),
    "zeiler2014": (
        "Zeiler MD, Fergus R. Visualizing and understanding convolutional networks. In: Computer Vision - ECCV 2014. "
        "Lecture Notes in Computer Science, vol 8689. Springer; 2014:818-833. doi:10.1007/978-3-319-10590-1_53"
    ),
    "selvaraju2017": (
        "Selvaraju RR, Cogswell M, Das A, Vedantam R, Parikh D, Batra D. Grad-CAM: visual explanations from deep "
        "networks via gradient-based localization. Proc IEEE Int Conf Comput Vis. 2017:618-626. "
        "doi:10.1109/ICCV.2017.74"
    ),
    "tzourio2002": (
        "Tzourio-Mazoyer N, Landeau B, Papathanassiou D, Crivello F, Etard O, Delcroix N, et al. Automated anatomical "
        "labeling of activations in SPM using a macroscopic anatomical parcellation of the MNI MRI single-subject "
        "brain. NeuroImage. 2002;15(1):273-289. doi:10.1006/nimg.2001.0978"
    ),
}

_NOTICE = (
    "The predictions are research outputs, not diagnoses; vbm-predict is not a medical device."
)


def _join(items: Sequence[str]) -> str:
    items = [i for i in items if i]
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _iters(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "x".join(str(v) for v in value)
    return str(value)


class _Citations:
    """Numbers references in the order they are first cited."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    def __call__(self, *keys: str) -> str:
        nums = []
        for key in keys:
            if key not in self.keys:
                self.keys.append(key)
            nums.append(str(self.keys.index(key) + 1))
        return "[" + ", ".join(nums) + "]"

    def references(self) -> list[str]:
        return [REFERENCES[k] for k in self.keys]


def _backend_sentence(backend: str, version: str, provenance: Mapping[str, Any], cite: _Citations) -> str:
    if backend == "ants":
        p = provenance.get("Parameters") or {}
        detail = ""
        if p:
            detail = (
                f" (N4 shrink factor {p.get('n4_shrink', 'n/a')}, iterations {_iters(p.get('n4_iterations', 'n/a'))}; "
                f"affine iterations {_iters(p.get('affine_iterations', 'n/a'))}; SyN iterations "
                f"{_iters(p.get('syn_iterations', 'n/a'))}, metric {p.get('syn_metric', 'n/a')}, gradient step "
                f"{p.get('syn_grad_step', 'n/a')}, flow sigma {p.get('syn_flow_sigma', 'n/a')}; EM iterations "
                f"{p.get('em_iterations', 'n/a')}, prior floor {p.get('prior_floor', 'n/a')})"
            )
        return (
            f"Grey-matter (GM) maps were computed with the SPM-free ANTs chain of vbm-predict ({version}) "
            f"{cite('avants2011')}: intensity non-uniformity correction with N4 {cite('tustison2010')}, affine and "
            f"symmetric diffeomorphic (SyN) registration {cite('avants2008')} to the MNI152 2009 template "
            f"{cite('fonov2011')} as shipped by nilearn {cite('abraham2014')}, and a partial-volume expectation-"
            f"maximisation tissue segmentation with template priors{detail}. GM density (GMD) is the GM probability "
            "in template space; GM volume (GMV) is GMD multiplied by the Jacobian determinant of the warp. Both lie on "
            "SPM's 1.5 mm IXI549Space grid (121 x 145 x 121 voxels). These maps differ from the SPM/DPARSF maps the "
            "published models were trained on."
        )
    if backend == "clinica":
        return (
            f"Grey-matter (GM) maps were computed with Clinica {cite('routier2021')} "
            f"(t1-volume-tissue-segmentation; {version}), which runs SPM's unified segmentation and normalisation "
            f"{cite('ashburner2005')}; the warped unmodulated (GM density, GMD) and modulated (GM volume, GMV) GM "
            "probability maps on SPM's 1.5 mm IXI549Space grid (121 x 145 x 121 voxels) were used."
        )
    if backend == "derivatives":
        layout = provenance.get("Layout", "existing")
        origin = provenance.get("OriginalBackend", "unknown")
        return (
            f"Existing GM density (GMD) and GM volume (GMV) maps were reused ({layout} layout; made by {origin}) and "
            "placed on SPM's 1.5 mm IXI549Space grid (121 x 145 x 121 voxels)"
            + (", resampled where needed." if provenance.get("ResampledToSPMGrid") else ".")
        )
    return f"Grey-matter maps were made by the '{backend}' backend ({version})."


def _qc_sentence(qc: Mapping[str, Any] | None, cite: _Citations) -> str:
    from ..qc import GMV_CORRELATION_THRESHOLD

    text = (
        "Quality control followed the reference system: the spatial correlation of the GMV map with a reference mean "
        f"GMV map (threshold {GMV_CORRELATION_THRESHOLD:.3f}, the mean minus two standard deviations of a reference "
        f"distribution) {cite('lu2022')}, complemented by the Dice overlap of the GM map with the template GM, the "
        "share of GM inside the template brain mask and the total GM volume."
    )
    if qc:
        flags = list(qc.get("Flags") or [])
        text += " This image " + ("passed every check." if not flags else f"failed: {', '.join(flags)}.")
    return text


def _model_sentences(models: Sequence[Mapping[str, Any]], cite: _Citations) -> str:
    if not models:
        return ""
    described = []
    for m in models:
        sha = [s for s in str(m.get("model_sha256") or "").split(";") if s]
        folds = int(m.get("n_folds") or len(sha) or 1)
        what = {"sex": "sex", "ad": "Alzheimer's disease"}.get(str(m.get("target")), str(m.get("target")))
        described.append(
            f"the {what} model {m.get('model_name')} version {m.get('model_version')} "
            f"({folds} fold{'s' if folds != 1 else ''}, weights sha256 {', '.join(s[:12] for s in sha) or 'n/a'}; "
            f"decision threshold {m.get('threshold')})"
        )
    synthetic = any(str(m.get("model_trained_on_synthetic")).lower() == "true" for m in models)
    text = (
        "Both maps were multiplied by a brain mask (nilearn's MNI152 brain mask on the SPM grid, thresholded at 0.5; "
        "the reference system's mask files are not public), cropped to 96 x 120 x 86 voxels and stacked as two "
        f"channels (GMD, GMV) as in BrainImageNet {cite('lu2022')}. Scores were computed with "
        f"3D Inception-ResNet-V2 networks {cite('szegedy2017', 'lu2022')}: " + _join(described) + ". A score is the "
        "mean over folds of the sigmoid output (the probability of male sex or of AD); the predicted label is "
        "score >= threshold."
    )
    if synthetic:
        text += " Some models were trained on synthetic data only (demonstration models); their scores mean nothing."
    return text


def _explanation_sentence(explanations: Iterable[Mapping[str, Any]], cite: _Citations) -> str:
    parts = []
    atlas = False
    for side in explanations:
        method = str(side.get("Method", "")).lower()
        params = side.get("Parameters") or {}
        ptxt = ", ".join(f"{k} {v}" for k, v in params.items() if not isinstance(v, (dict, list)))
        ref = ""
        if method.startswith("occlusion"):
            ref = " " + cite("zeiler2014", "lu2022")
        elif method.startswith("gradcam"):
            ref = " " + cite("selvaraju2017")
        parts.append(f"{side.get('Method')} maps for {side.get('Model')}{ref}" + (f" ({ptxt})" if ptxt else ""))
        atlas = atlas or bool(side.get("Atlas") or side.get("AtlasName"))
    if not parts:
        return ""
    text = "Explanation maps were computed on the model grid in MNI space: " + "; ".join(dict.fromkeys(parts)) + "."
    if atlas:
        text += f" Their top regions were summarised in the AAL atlas {cite('tzourio2002')}."
    return text


def participant_methods(
    *,
    backend: str | None,
    backend_version: str | None,
    provenance: Mapping[str, Any] | None,
    qc: Mapping[str, Any] | None,
    models: Sequence[Mapping[str, Any]],
    explanations: Sequence[Mapping[str, Any]] = (),
) -> tuple[list[str], list[str]]:
    """(paragraphs, references) describing how one T1w was processed."""
    cite = _Citations()
    paragraphs = []
    first = f"The T1-weighted image was processed with vbm-predict {__version__}. "
    if backend:
        first += _backend_sentence(backend, str(backend_version or "version not recorded"), provenance or {}, cite)
    paragraphs.append(first)
    paragraphs.append(_qc_sentence(qc, cite))
    model_text = _model_sentences(models, cite)
    if model_text:
        paragraphs.append(model_text)
    expl = _explanation_sentence(explanations, cite)
    if expl:
        paragraphs.append(expl)
    paragraphs.append(_NOTICE)
    return paragraphs, cite.references()


def group_methods(
    *,
    backends: Mapping[str, tuple[int, str]],
    models: Sequence[Mapping[str, Any]],
    n_images: int,
    n_participants: int,
    n_failed: int,
    evaluated: bool,
    explanations: Sequence[Mapping[str, Any]] = (),
    provenance: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[list[str], list[str]]:
    """(paragraphs, references) describing the group analysis and what it combined.

    ``backends`` maps each preprocessing backend to (number of T1w, its versions joined by '; ');
    ``provenance`` each backend to the ``Provenance`` of one of its map sidecars (its parameters).
    """
    cite = _Citations()
    used = ", ".join(f"{name} ({n:,} T1w)" for name, (n, _) in backends.items()) or "not recorded"
    paragraphs = [
        f"{n_images:,} T1-weighted images of {n_participants:,} participants were processed with vbm-predict "
        f"{__version__} ({n_failed:,} further image{'s' if n_failed != 1 else ''} failed and "
        f"{'were' if n_failed != 1 else 'was'} excluded). Preprocessing backends: {used}."
    ]
    for name, (_, versions) in backends.items():
        prov = (provenance or {}).get(name) or {}
        paragraphs.append(_backend_sentence(name, versions or "version not recorded", prov, cite))
    paragraphs.append(_qc_sentence(None, cite))
    model_text = _model_sentences(models, cite)
    if model_text:
        paragraphs.append(model_text)
    if evaluated:
        paragraphs.append(
            "Predictions were evaluated against the labels in participants.tsv with the participant as the unit "
            "(the mean score over a participant's images): accuracy, sensitivity, specificity, balanced accuracy and "
            "the area under the ROC curve, with 95% intervals from the 2.5th and 97.5th percentiles over 1,000 random "
            f"subsamples of 50% of the labelled participants drawn without replacement {cite('lu2022')}, and "
            "Spearman's rank correlation of the AD score with MMSE. Predictions made outside a model's validated "
            "conditions (other preprocessing, failed QC) were evaluated separately."
        )
    expl = _explanation_sentence(explanations, cite)
    if expl:
        paragraphs.append(expl + " Group maps are voxel-wise means over participants of each class.")
    paragraphs.append(_NOTICE)
    return paragraphs, cite.references()
