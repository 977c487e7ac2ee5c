"""The X-SAM model: configuration, modules, checkpoint loading, conversion and the inference pipeline.

``config`` (frozen dataclasses) → ``modeling`` (the network, top to bottom) → ``checkpoint`` (load
the official ``pytorch_model.bin`` or our safetensors) → ``pipeline`` (image and prompt in,
post-processed result out, using ``processing`` and ``prompting``). Importing the package imports
nothing heavy; each module imports torch itself.
"""
