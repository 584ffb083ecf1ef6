"""The architectures timm offers: every ``timm.list_models()`` name, all for classification."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def architectures() -> dict[str, str]:
    """Architecture name → task (always ``classify``); imports timm on first use."""
    import timm

    return dict.fromkeys(timm.list_models(), "classify")
