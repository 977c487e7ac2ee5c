"""X-SAM Label Studio ML backend.

Importing this package has no side effects: nothing reads the environment, opens a connection or
imports torch until a composition root (``_wsgi.py``, ``python -m xsam_backend``) asks for it.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
