"""The worker's event loop, kept responsive and watched: every event waits out its stalls.

:func:`freeze_heap` takes the start-up objects out of the garbage collector's full collections;
:func:`probe_loop_lag` measures how late the loop runs (the ``event_loop_lag`` metric).
"""

from __future__ import annotations

import asyncio
import gc

from streamcascade.operators.metrics import OperatorMetrics


def freeze_heap() -> None:
    """Collect once, then exempt every object alive now from later collections (``gc.freeze``).

    A worker starts with tens of thousands of long-lived objects (Faust, aiokafka, the model and
    its state); every full collection of the cyclic GC walks all of them and stops the event
    loop meanwhile, for tens of milliseconds. Frozen, they are never walked again, and a full
    collection costs only what was allocated since. Startup objects that become garbage later are
    not reclaimed: a bounded, one-off cost. It is process-wide, so in a user's own app it covers
    the app's objects too; the ``freeze_heap`` setting turns it off.
    """
    gc.collect()
    gc.freeze()


async def probe_loop_lag(metrics: OperatorMetrics, interval_s: float = 0.05) -> None:
    """Observe, every ``interval_s``, how late the event loop woke this task: the length of the
    stalls (a long callback, a GC pause, a busy machine) that every event waits out as well.
    Runs until cancelled."""
    loop = asyncio.get_running_loop()
    while True:
        start = loop.time()
        await asyncio.sleep(interval_s)
        metrics.loop_lag.observe(max(0.0, loop.time() - start - interval_s))
