"""Training, transfer (sex -> AD) with leave-sites-out validation, and fine-tuning.

* :func:`train_cohort` -- folds, sex pretraining, AD transfer, metrics, report, model packages;
* :func:`finetune_package` -- adapt a package to a new site with a fraction of its data;
* :func:`site_folds` -- whole-site, balanced fold allocation.
"""

from .cv import DEFAULT_OPTIM, SYNTHETIC_NOTE, TaskResult, TrainConfig, make_card, train_cohort, write_report
from .data import collect_cohort, load_inputs, maps_origin
from .finetune import finetune_package, frozen_modules
from .folds import allocate_sites, inner_validation_split, site_folds
from .loop import OptimConfig, TrainResult, evaluate, train_network

__all__ = [
    "DEFAULT_OPTIM",
    "SYNTHETIC_NOTE",
    "OptimConfig",
    "TaskResult",
    "TrainConfig",
    "TrainResult",
    "allocate_sites",
    "collect_cohort",
    "evaluate",
    "finetune_package",
    "frozen_modules",
    "inner_validation_split",
    "load_inputs",
    "make_card",
    "maps_origin",
    "site_folds",
    "train_cohort",
    "train_network",
    "write_report",
]
