"""The `recsys` command: the layer above tasks/ and flows/ that people type."""
