"""What a long-lived controller keeps stays bounded: dead engines' records, and (see
test_wire.py) the replay table."""

from __future__ import annotations

import time

from taskmill.connection import new_connection_info
from taskmill.controller import Controller, Now, engines
from taskmill.store import MemoryStore
from taskmill.wire import Wire


def test_dead_engine_records_are_bounded(monkeypatch):
    monkeypatch.setattr(engines, "DEAD_RECORDS_KEPT", 5)
    info = new_connection_info()
    ctl = Controller(info, store=MemoryStore(), heartbeat=3600.0)
    engine_wire = Wire(info.key_bytes)
    try:
        for n in range(40):
            uuid = f"engine-{n}"
            header, frames = ctl.wire.decode(engine_wire.encode({
                "type": "register", "uuid": uuid, "ctl_ident": f"{uuid}.c".encode(),
                "res_ident": f"{uuid}.r".encode(), "heart_ident": f"{uuid}.h".encode(),
                "hostname": "host", "pid": 1000 + n, "session": ctl.session, "t": 0.0}))
            now = Now(time.monotonic(), time.time())
            ctl.core.on_engine(f"{uuid}.t".encode(), header, frames, now)
            (rec,) = [r for r in ctl.engines.values() if r.uuid == uuid]
            ctl.core.engines.died(rec, "gone")
        dead = [r.eid for r in ctl.engines.values() if r.state == "dead"]
        assert dead == list(range(35, 40))  # the latest five are still listed
        registry = ctl.core.engines
        assert len(registry.by_uuid) == 5 and len(registry.death_reasons) == 5
        assert not registry.by_ident
        assert [e["engineid"] for e in ctl.engine_table()] == dead
    finally:
        ctl.close()
