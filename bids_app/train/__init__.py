"""Training, transfer (sex -> AD) with leave-sites-out validation, and fine-tuning.

* :func:`train_families` -- any family (brainimagenet, cnn, liu_mox, sfcn, regional) on any task
  (binary, multi-class, regression, multi-task heads) with the same leave-sites-out folds, learning
  curves, v2 packages and the side-by-side report;
* :func:`train_cohort` -- folds, sex pretraining, AD transfer, metrics, report, model packages;
* :func:`finetune_package` -- adapt a package to a new site with a fraction of its data;
* :func:`site_folds` -- whole-site, balanced fold allocation.
"""

from .crossval import FamiliesConfig, FamilyResult, cross_validate, make_card_v2, train_families, write_comparison
from .cv import DEFAULT_OPTIM, SYNTHETIC_NOTE, TaskResult, TrainConfig, make_card, train_cohort, write_report
from .data import collect_cohort, load_inputs, maps_origin
from .families import FAMILY_CHOICES, FAMILY_PRESETS, FamilyPreset, family_preset
from .finetune import finetune_package, frozen_modules
from .folds import allocate_sites, inner_validation_split, nested_subsets, site_folds
from .heads import TASK_HEADS, TRAIN_TASKS, HeadSet, HeadSpec, task_heads
from .loop import OptimConfig, TrainResult, evaluate, train_network

__all__ = [
    "FAMILY_CHOICES",
    "FAMILY_PRESETS",
    "TASK_HEADS",
    "TRAIN_TASKS",
    "FamiliesConfig",
    "FamilyPreset",
    "FamilyResult",
    "HeadSet",
    "HeadSpec",
    "cross_validate",
    "family_preset",
    "make_card_v2",
    "nested_subsets",
    "task_heads",
    "train_families",
    "write_comparison",
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
