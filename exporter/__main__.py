"""``python -m exporter``: the same as the ``simplivity-exporter`` command."""

from exporter.cli import main_entry

main_entry()
