"""Large results are acknowledged right after the commit that stores them (controller/engines.py
ACK_AT_ONCE_BYTES, the `stored` message), not with the answer to the engine's next heartbeat:
an engine does not keep a heartbeat's worth of large results in memory."""

from __future__ import annotations

import pytest
from systest import poll

from taskmill import Cluster
from taskmill.controller.engines import ACK_AT_ONCE_BYTES

pytestmark = pytest.mark.timeout(120, method="thread")

MIB = 1 << 20


def big(i):
    return bytes([i]) * MIB


def held_bytes():
    """(On the engine) the bytes of the results it keeps until the controller acknowledges them."""
    from taskmill import current_engine
    from taskmill.wire import frame_len

    engine = current_engine()
    with engine.lock:
        return sum(frame_len(f) for _, body in engine.outbox.unacked.values() for f in body)


def test_an_engine_drops_its_large_results_soon_after_they_are_stored_not_a_heartbeat_later():
    # The next heartbeat answer is up to 30 s away: only an early ack can drop them in time.
    with Cluster(1, heartbeat=30.0) as c, c.client() as tc:
        for rnd in range(3):
            futs = [tc.submit(big, i) for i in range(4)]
            assert [f.result(timeout=60) for f in futs] == [bytes([i]) * MIB for i in range(4)]
            poll(lambda: tc.submit(held_bytes).result(timeout=60) < ACK_AT_ONCE_BYTES,
                 timeout=5.0, what=f"the engine to drop its 1 MiB results (round {rnd})")
