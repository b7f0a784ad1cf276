"""Run reports: statistics and charts computed from the run store (never from the broker or the
data files), written as PNG files and one self-contained HTML page."""

from engine.report.html import Written, write_comparison, write_report

__all__ = ["Written", "write_comparison", "write_report"]
