"""A Lightning ``Trainer`` for tests: on the CPU, with no logger, checkpoint or progress bar."""

from __future__ import annotations

from typing import Any

import lightning


def quiet_trainer(*, max_epochs: int, **options: Any) -> lightning.Trainer:
    """A CPU ``Trainer`` of ``max_epochs`` that writes and prints nothing; ``options`` add to it."""
    return lightning.Trainer(
        accelerator="cpu",
        max_epochs=max_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **options,
    )
