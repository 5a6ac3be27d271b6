"""Cache tiers behind one protocol (`Tier`), chosen by name from a registry.

Adding a tier is one module here and one line in `TIERS`.
"""

from __future__ import annotations

from collections.abc import Callable

from ..core.errors import ConfigurationError
from .base import Subset, Tier, TierOptions
from .disk import DiskTier
from .memory import MemoryTier
from .none import NoneTier

TIERS: dict[str, Callable[[TierOptions], Tier]] = {
    "none": NoneTier,
    "memory": MemoryTier,
    "disk": DiskTier,
}
"""Every tier by the name ``CachingDataModule(cache=...)`` takes."""


def check_tier_name(name: object) -> str:
    """``name`` if it names a tier, else `ConfigurationError` listing the valid names."""
    if not isinstance(name, str) or name not in TIERS:
        raise ConfigurationError(
            f"cache={name!r} is not a cache tier; valid tiers are {', '.join(TIERS)}"
        )
    return name


def make_tier(name: str, options: TierOptions) -> Tier:
    """The tier called ``name``, with ``options``."""
    return TIERS[check_tier_name(name)](options)


__all__ = ["TIERS", "Subset", "Tier", "TierOptions", "check_tier_name", "make_tier"]
