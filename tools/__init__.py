"""Developer tools run outside the exporter (the Helm chart helper runs in .venv-helm)."""
