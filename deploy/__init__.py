"""Serving: the promoted champion of artifacts/ behind HTTP, with onnxruntime and numpy only.

Nothing here imports torch: the container that runs deploy/service.py does not install it.
"""
