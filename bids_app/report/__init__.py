"""HTML reports: one per T1w and one for the group, self-contained (images embedded, nothing fetched).

Figure making (:mod:`.figures`: arrays in, matplotlib figures out), file reading (:mod:`.readers`),
the methods text (:mod:`.methods`) and page layout (:mod:`.html`) are kept apart; the report builders
(:mod:`.participant_report`, :mod:`.group_report`) decide what goes where. The participant report
reads only the files of its T1w in the output directory; the group report is given its data by the
group level (:class:`GroupReportInputs`), or reads the group files when rebuilt on its own.
"""

from .group_report import GROUP_REPORT, GroupReportInputs, write_group_report
from .participant_report import participant_report_path, write_participant_report

__all__ = ["GROUP_REPORT", "GroupReportInputs", "write_group_report", "write_participant_report",
           "participant_report_path"]
