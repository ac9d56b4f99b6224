"""Metrics that apply to any learning rule."""

from jaxbio.metrics.alignment import alignment_metrics, angle_degrees

__all__ = ["alignment_metrics", "angle_degrees"]
