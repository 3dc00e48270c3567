"""The adapter contract suite (``shared.adapters.base``), run against every adapter."""
