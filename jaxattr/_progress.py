"""Progress reporting for long runs (``show_progress=True``), via tqdm."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress(
    iterable: Iterable[T], *, total: int | None = None, desc: str = "", enabled: bool = True
) -> Iterator[T]:
    """Wrap ``iterable`` in a progress bar on stderr when ``enabled``.

    Inside a jit trace the loop runs once at trace time, so the bar then shows tracing,
    not execution; methods enable it only for eager calls.
    """
    if not enabled:
        yield from iterable
        return
    from tqdm.auto import tqdm

    yield from tqdm(iterable, total=total, desc=desc, leave=False)
