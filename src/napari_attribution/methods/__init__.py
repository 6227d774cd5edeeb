"""Attribution methods: pure PyTorch, N-dimensional, one registry (``_registry.register``), one file per family."""

from ._registry import MethodInfo, get_method, list_methods, register

__all__ = ["MethodInfo", "get_method", "list_methods", "register"]
