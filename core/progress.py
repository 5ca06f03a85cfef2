"""What a training run reports while it runs: plain data, with no Keras, so any module can import it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class ProgressEvent:
    """One progress report: kind is 'load', 'start', 'batch', 'epoch' or 'end'."""

    kind: str
    epoch: int = 0
    epochs: int = 0
    batch: int = 0
    batches: int = 0
    logs: dict = field(default_factory=dict)
    elapsed: float = 0.0


ProgressFn = Callable[[ProgressEvent], None]


def ignore(event: ProgressEvent) -> None:
    """The progress function of a run that nobody watches."""
