"""Pictures and the HTML report: feature maps, neighbours, filters, top images, clusters, curves."""

from deepcluster.report.build import build_report
from deepcluster.report.config import ReportConfig

__all__ = ["ReportConfig", "build_report"]
