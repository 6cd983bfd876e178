"""vbm-predict: a BIDS App from T1-weighted MRI to grey-matter maps and sex / AD predictions.

Data flow (one module, one job)::

    discovery -> preproc (backends) -> qc -> grid (model input) -> models -> explain
              -> derivatives (writer) -> report;   group reads only what participant wrote.

The command line lives in :mod:`bids_app.cli`; nothing in the library imports it.
Research use only: no output of this software is a diagnosis.
"""

__version__ = "0.1.0"

RESEARCH_USE_NOTICE = (
    "Research use only. Not a medical device; not for diagnosis, screening or any clinical decision."
)

__all__ = ["__version__", "RESEARCH_USE_NOTICE"]
