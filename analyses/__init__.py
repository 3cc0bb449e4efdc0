"""Reports: saving, loading, listing and rendering probe results."""

from lenslab.analyses.report import Report, list_reports, provenance

__all__ = ["Report", "list_reports", "provenance"]
