"""Progress reporting for long runs (``show_progress=True``), via tqdm."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress(
    iterable: Iterable[T], *, total: int | None = None, desc: str = "", enabled: bool = True
) -> Iterator[T]:
    """Yield the items of ``iterable`` with a progress bar on stderr when ``enabled``.

    The bar counts *finished* items: it advances when the loop asks for the next item,
    so after the last one it shows ``total/total`` (the final state is drawn, whatever
    tqdm's refresh interval) before it is cleared. A loop left early (``break``, an
    exception) closes the bar too. Callers that dispatch asynchronous JAX work block on
    each item's result (see :func:`sync`) so the count follows the computation.

    Inside a jit trace the loop runs once at trace time, so the bar then shows tracing,
    not execution; methods enable it only for eager calls.

    Args:
        iterable: The items (chunks, windows, batches).
        total: The number of items, if ``iterable`` has no ``len``.
        desc: The bar's label (the method's name).
        enabled: Show the bar; ``False`` yields the items unchanged.

    Yields:
        The items of ``iterable``.

    Example:
        >>> from jaxattr._progress import progress
        >>> list(progress(range(3), desc="demo", enabled=False))
        [0, 1, 2]
    """
    if not enabled:
        yield from iterable
        return
    from tqdm.auto import tqdm

    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    bar = tqdm(total=total, desc=desc, leave=False)
    try:
        for item in iterable:
            yield item
            bar.update(1)
        bar.refresh()  # draw the final count even inside tqdm's refresh interval
    finally:
        bar.close()


def sync(value: T, enabled: bool) -> T:
    """Wait for ``value``'s JAX computation when a progress bar is shown; return it."""
    if enabled:
        import jax

        jax.block_until_ready(value)
    return value
