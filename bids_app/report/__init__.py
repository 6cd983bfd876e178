"""HTML reports: one per T1w and one for the group, self-contained (images embedded).

Layout (:mod:`.html`) is kept apart from figure making (:mod:`.figures`); the report builders
(:mod:`.participant_report`, :mod:`.group_report`) read only files in the output directory.
"""

from .group_report import GROUP_REPORT, write_group_report
from .participant_report import participant_report_path, write_participant_report

__all__ = ["GROUP_REPORT", "write_group_report", "write_participant_report", "participant_report_path"]
