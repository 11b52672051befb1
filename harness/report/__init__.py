"""Reports of studies: comparison tables (Markdown, CSV, HTML) and plots from the MLflow store."""

from harness.report.build import ReportResult, write_report
from harness.report.compare import Comparison, comparison, reference_table
from harness.report.runs import ReportError, StudyRuns, load_study_runs

__all__ = [
    "Comparison",
    "ReportError",
    "ReportResult",
    "StudyRuns",
    "comparison",
    "load_study_runs",
    "reference_table",
    "write_report",
]
