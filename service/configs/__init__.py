"""Packaged Serve configs (`serve.yaml`)."""
