"""Prometheus exporter for HPE SimpliVity backups."""

__version__ = "0.1.0"
