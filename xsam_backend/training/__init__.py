"""Active learning: fine-tune X-SAM on a project's accepted annotations, evaluate, version, serve.

Torch-free at import: the web process imports :mod:`triggers`, :mod:`coordination` and
:mod:`versions`; the modules that need torch (``features``, ``loss``, ``lora``, ``trainer``, ``job``) are
imported by the worker only.
"""
