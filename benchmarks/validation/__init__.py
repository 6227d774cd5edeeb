"""Sections of the validation report (``benchmarks/validate.py``): one module per section, each with
``KEY``, ``TITLE`` and ``run(ctx) -> Section``; shared statistics, caching and table helpers in ``common``."""
