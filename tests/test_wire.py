"""The wire format: signing, replay refusal, malformed input, payload round trips."""

from __future__ import annotations

import hmac

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskmill.wire import (
    PARALLEL_MIN,
    PROTOCOL,
    FunctionLoads,
    FunctionPickles,
    HmacSha256,
    Packed,
    Refused,
    Spliced,
    Wire,
    dumps,
    dumps_arguments,
    loads,
    signing,
)

KEY = b"k" * 32


def test_round_trip_and_refused_counts():
    a, b = Wire(KEY), Wire(KEY)
    msg = a.encode({"type": "x", "n": 1}, [b"payload"])
    header, frames = b.decode(msg)
    assert header["type"] == "x" and header["n"] == 1
    assert frames == [b"payload"]
    assert not b.refused


def test_a_spliced_header_is_the_bytes_of_the_same_header_packed_whole():
    """Packed values (a client's task specs, packed once when each task was made) go into the
    header as they are: a receiver reads exactly the header they were packed from."""
    specs = [{"nodes": [{"exec": {"kind": "map", "fn": 2}, "pmac": b"m" * 32}], "after": []},
             {"nodes": [], "after": [1, 2**40]}, {}]
    a, b = Wire(KEY), Wire(KEY)
    spliced = Spliced(type="submit", watch=True, tids=[7, 8, 9])
    spliced["tasks"] = Packed(msgpack.packb(s, use_bin_type=True) for s in specs)
    plain = {"type": "submit", "watch": True, "tids": [7, 8, 9], "tasks": specs}
    msg = a.encode(spliced, [b"payload"])
    header, frames = b.decode(msg)
    assert header == {**plain, "sid": a.sid, "seq": 0} and frames == [b"payload"]
    # byte for byte what packing the whole header gives (the receiver checks its signature)
    assert msg[0][len(PROTOCOL) + 32:] == msgpack.packb({**plain, "sid": a.sid, "seq": 0},
                                                        use_bin_type=True)
    empty = Spliced(type="submit", tasks=Packed())
    assert b.decode(a.encode(empty))[0]["tasks"] == []


def test_wrong_key_is_refused_and_counted():
    msg = Wire(b"other" * 8).encode({"type": "x"})
    w = Wire(KEY)
    with pytest.raises(Refused) as e:
        w.decode(msg)
    assert e.value.reason == "bad-signature"
    assert w.refused["bad-signature"] == 1


def test_missing_or_truncated_signature_is_refused():
    w = Wire(KEY)
    (good,) = Wire(KEY).encode({"type": "x"})
    header = good[len(PROTOCOL) + 32:]
    for bad in ([PROTOCOL + header], [PROTOCOL + good[3:13] + header], [good[:20]],
                [b"junk"], [], [PROTOCOL]):
        with pytest.raises(Refused):
            w.decode(bad)


def test_replay_is_refused():
    a, b = Wire(KEY), Wire(KEY)
    m1 = a.encode({"type": "x"})
    m2 = a.encode({"type": "y"})
    b.decode(m1)
    b.decode(m2)
    with pytest.raises(Refused) as e:
        b.decode(m1)
    assert e.value.reason == "replay"


def test_signed_but_malformed_header_is_refused():
    w = Wire(KEY)
    for header in (b"\xc1garbage", msgpack.packb([1, 2]), msgpack.packb({"type": 3}),
                   msgpack.packb({"type": "x"})):  # the last lacks sid/seq
        with pytest.raises(Refused) as e:
            w.decode([w.seal(header)])
        assert e.value.reason == "malformed"


def test_oversize_message_is_refused():
    a, b = Wire(KEY), Wire(KEY, max_message=1000)
    with pytest.raises(Refused) as e:
        b.decode(a.encode({"type": "x"}, [b"x" * 2000]))
    assert e.value.reason == "too-large"


@settings(max_examples=200, deadline=None)
@given(key=st.binary(min_size=1, max_size=200), data=st.binary(max_size=300))
def test_hmac_matches_the_standard_library(key, data):
    """Keys shorter than, equal to and longer than SHA-256's block; data as a buffer too."""
    mac = HmacSha256(key)
    want = hmac.digest(key, data, "sha256")
    assert mac.digest(data) == want
    assert mac.digest(memoryview(bytearray(data))) == want


def test_the_envelope_mac_is_hmac_sha256():
    w = Wire(KEY)
    env = w.encode({"type": "x"})[0]
    at = len(PROTOCOL)
    assert env[at:at + 32] == hmac.digest(KEY, env[at + 32:], "sha256")


def test_one_envelope_frame_then_payload():
    msg = Wire(KEY).encode({"type": "x"}, [b"p1", b"p2"])
    assert len(msg) == 3 and msg[0].startswith(PROTOCOL)
    assert Wire(KEY).decode(msg[:1])[1] == []  # a message without payload is a single frame


def test_payload_mac_covers_frames_and_boundaries():
    w = Wire(KEY)
    mac = w.payload_mac([b"ab", b"c"])
    w.check_payload([b"ab", b"c"], mac)
    for other in ([b"a", b"bc"], [b"ab", b"d"], [b"abc"]):
        with pytest.raises(Refused):
            w.check_payload(other, mac)


def test_large_numpy_array_travels_out_of_band():
    arr = np.arange(1_000_000, dtype=np.float64)
    frames = dumps(arr)
    assert len(frames) == 2  # the pickle and the array's buffer
    assert len(frames[0]) < 1000  # the data is not inside the pickle
    back = loads(frames)
    assert np.array_equal(arr, back)


def test_large_bytes_travel_out_of_band_and_come_back_as_themselves():
    big, mutable = bytes(range(256)) * 1024, bytearray(b"m" * 200_000)
    for value in (big, mutable, [1, big], {"a": big, "b": 2}):
        frames = dumps(value)
        assert len(frames) >= 2 and len(frames[0]) < 1000, "the bytes went into the pickle"
        assert loads(frames) == value
    frames = dumps_arguments((big, 3), {"m": mutable})
    assert len(frames) == 3 and len(frames[0]) < 1000
    args, kwargs = loads(frames)
    assert args == (big, 3) and type(args[0]) is bytes
    assert kwargs == {"m": mutable} and type(kwargs["m"]) is bytearray
    assert kwargs["m"] is not mutable
    assert len(dumps(b"small")) == 1 and loads(dumps(b"small")) == b"small"  # in the pickle


def test_mac_of_a_large_frame_covers_every_byte_and_its_length():
    w = Wire(KEY)
    base = bytearray(np.random.default_rng(1).bytes(PARALLEL_MIN * 3 + 12345))
    mac = w.payload_mac([b"p", base])
    w.check_payload([b"p", bytes(base)], mac)
    for at in (0, len(base) // 4, len(base) // 2 + 7, len(base) - 1):
        changed = bytearray(base)
        changed[at] ^= 1
        with pytest.raises(Refused):
            w.check_payload([b"p", changed], mac)
    with pytest.raises(Refused):
        w.check_payload([b"p", base[:-1]], mac)
    with pytest.raises(Refused):
        w.check_payload([b"p" + base[:1], base[1:]], mac)
    with pytest.raises(Refused):
        Wire(b"another key").check_payload([b"p", base], mac)


def test_the_payload_mac_uses_blake3_threads_only_for_a_frame_of_parallel_min(monkeypatch):
    """Payloads up to some MiB are hashed on one core: waking BLAKE3's threads costs more than
    they save there while the other processes of a round trip want the cores too."""
    import blake3

    mac = signing.PayloadMac(KEY)
    asked = []
    real = blake3.blake3

    def recording(*args, max_threads=1, **kwargs):
        asked.append(max_threads)
        return real(*args, max_threads=max_threads, **kwargs)

    recording.AUTO = real.AUTO  # (what PayloadMac asks for more threads with)
    monkeypatch.setattr(signing.blake3, "blake3", recording)
    for size in (1 << 20, 8_000_000):
        mac.digest([b"p", b"\0" * size], [1, size])
    mac.digest([b"\0" * PARALLEL_MIN], [PARALLEL_MIN])
    assert asked == [1, 1, real.AUTO]


def test_the_payload_mac_is_keyed_blake3_over_length_prefixed_frames():
    """(Keyed BLAKE3, the `blake3` package, with a key derived from the connection key: the
    SPEC's payload digest; on every core for a large frame, with the same result.)"""
    import blake3

    frames = [b"head", np.random.default_rng(2).bytes(PARALLEL_MIN + 5)]
    key = blake3.blake3(KEY, derive_key_context=signing.PAYLOAD_KEY_CONTEXT).digest()
    h = blake3.blake3(key=key)
    for f in frames:
        h.update(len(f).to_bytes(8, "little"))
        h.update(f)
    assert Wire(KEY).payload_mac(frames) == h.digest()


def test_closures_and_lambdas_pickle():
    k = 7
    f = loads(dumps(lambda x: x + k))
    assert f(1) == 8


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), min_size=0, max_size=6))
def test_random_frames_never_pass_or_crash(frames):
    w = Wire(KEY)
    with pytest.raises(Refused):
        w.decode(frames)


# -- the function pickle caches ----------------------------------------------------------------
# Test modules are pickled by value (tests/conftest.py), as __main__ code would be.

SCALE = 2
SETTINGS = {"offset": 1}


def scaled(x):
    return x * SCALE


def uses_settings(x):
    return x + SETTINGS["offset"]


def calls_scaled(x):
    return scaled(x) + 1


def _run(frames, *args):
    return loads(frames)(*args)


def test_an_unchanged_function_is_pickled_once():
    cache = FunctionPickles()
    first = cache.dumps(scaled)
    assert cache.dumps(scaled) is first
    assert _run(first, 21) == 42
    assert cache.dumps(abs) is cache.dumps(abs)  # builtins cannot change


def test_a_rebound_global_is_seen(monkeypatch):
    cache = FunctionPickles()
    assert _run(cache.dumps(scaled), 5) == 10
    assert _run(cache.dumps(calls_scaled), 5) == 11
    monkeypatch.setitem(globals(), "SCALE", 3)
    assert _run(cache.dumps(scaled), 5) == 15
    assert _run(cache.dumps(calls_scaled), 5) == 16  # through the function it calls


def test_functions_naming_mutable_state_are_pickled_every_time(monkeypatch):
    cache = FunctionPickles()
    assert _run(cache.dumps(uses_settings), 1) == 2
    monkeypatch.setitem(SETTINGS, "offset", 10)  # edited in place
    assert _run(cache.dumps(uses_settings), 1) == 11
    items = [1]
    holder = lambda: len(items)  # noqa: E731 - a closure over a list
    cache.dumps(holder)
    items.append(2)
    assert _run(cache.dumps(holder)) == 2

    def with_default(x, acc=[]):  # noqa: B006 - a mutable default, on purpose
        return len(acc)

    assert cache.dumps(with_default) is not cache.dumps(with_default)


def test_engine_function_cache_keys_on_the_pickle():
    cache = FunctionLoads()
    frames = FunctionPickles().dumps(scaled)
    f = cache.loads([bytes(frames[0])])
    assert cache.loads([bytes(frames[0])]) is f and f(2) == 4


def test_replay_table_is_bounded_and_keeps_the_senders_heard_from_lately():
    receiver = Wire(b"k" * 32)
    receiver.max_senders = 50
    steady = Wire(b"k" * 32)
    first = steady.encode({"type": "ping"})
    receiver.decode(first)
    for _ in range(200):  # many senders, one message each; `steady` speaks now and then
        receiver.decode(Wire(b"k" * 32).encode({"type": "ping"}))
        receiver.decode(steady.encode({"type": "ping"}))
    assert len(receiver.last_seq) <= 50
    with pytest.raises(Refused, match="replay"):  # still known: its replay is refused
        receiver.decode(first)


def test_a_spliced_header_holding_the_wires_mark_is_still_packed_right():
    """`encode` packs a Spliced header whole with a random mark standing for each Packed
    value; a header whose own values hold the mark's bytes is packed key by key instead."""
    a, b = Wire(KEY), Wire(KEY)
    specs = [{"after": [1]}, {"after": []}]
    for odd in (a.splice_mark, b"x" + a.splice_mark, [a.splice_mark, a.splice_mark]):
        spliced = Spliced(type="submit", odd=odd)
        spliced["tasks"] = Packed(msgpack.packb(s, use_bin_type=True) for s in specs)
        spliced["more"] = Packed()
        header, _ = b.decode(a.encode(spliced))
        assert header["odd"] == odd and header["tasks"] == specs and header["more"] == []


def test_a_wire_packs_headers_with_its_encoder_to_the_same_bytes():
    """The controller's Wire packs plain headers with msgspec's encoder (HEADER_ENCODER): the
    bytes msgpack's Packer gives, so a peer reads the same header."""
    from taskmill.wire import HEADER_ENCODER

    header = {"type": "done", "req": 7, "results": [
        {"tid": 2 ** 40, "status": "ok", "duration": 1e-9, "stdout": "é" * 40, "error": None,
         "pmac": b"\x00" * 32, "nframes": 1, "started": None}] * 3, "at": 0, "ask": True}
    fast, plain = Wire(KEY, encoder=HEADER_ENCODER), Wire(KEY)
    plain.sid = fast.sid
    assert fast.encoder is HEADER_ENCODER and plain.encoder is None
    a, b = fast.encode(dict(header), [b"x"]), plain.encode(dict(header), [b"x"])
    assert a == b
    assert Wire(KEY).decode(a)[0] == {**header, "sid": fast.sid, "seq": 0}
