"""Prefill attention methods. Importing this package registers every method.

Add one import line per method module below; the registry is filled on import.
"""
# --- registered methods: one import per module (others append here) -------------------------
from methods import anchor, dense, flexprefill, oracles, streaming, vertical_slash  # noqa: F401,E402
from methods import vertical_slash_block, xattention  # noqa: F401,E402
from methods.registry import get_method, list_methods, register_method

# ----------------------------------------------------------------------------------------------

__all__ = ["get_method", "list_methods", "register_method"]
