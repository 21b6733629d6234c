"""The step profile charges each phase its own time only (a collective inside the forward
is not forward time), reads DeepSpeed's collectives through its comm module only while
installed, and reports medians and the threads started."""
from __future__ import annotations

import threading

from delia_dist.train import profile


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_nested_phases_count_their_own_time(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(profile.time, "perf_counter", clock)
    prof = profile.StepProfile()
    for _ in range(3):
        with prof.phase("data"):
            clock.now += 1.0
        with prof.phase("forward"):
            clock.now += 2.0
            with prof.phase("collectives"):
                clock.now += 5.0
            with prof.phase("loss"):
                clock.now += 3.0
        prof.end_step()
    rows = prof.per_step()
    assert rows == [{"data": 1.0, "forward": 2.0, "collectives": 5.0, "loss": 3.0}] * 3
    summary = prof.summary(skip=1)
    assert summary["steps"] == 2
    assert list(summary["median_s"]) == ["data", "collectives", "forward", "loss"]
    assert abs(sum(summary["share"].values()) - 1.0) < 1e-12
    assert summary["share"]["collectives"] == 5.0 / 11.0


def test_comm_timers_wrap_deepspeed_collectives_only_while_installed(monkeypatch):
    import deepspeed.comm as ds_comm
    clock = FakeClock()
    monkeypatch.setattr(profile.time, "perf_counter", clock)
    calls = []

    def fake_all_reduce(t):
        calls.append(t)
        clock.now += 4.0
    monkeypatch.setattr(ds_comm, "all_reduce", fake_all_reduce)
    prof = profile.StepProfile()
    prof.install_comm_timers()
    try:
        with prof.phase("backward"):
            clock.now += 1.0
            ds_comm.all_reduce("grad")
        prof.end_step()
    finally:
        prof.uninstall()
    assert ds_comm.all_reduce is fake_all_reduce
    assert calls == ["grad"]
    assert prof.per_step() == [{"backward": 1.0, "collectives": 4.0}]


def test_threads_started_are_named():
    prof = profile.StepProfile()
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, name="delia-test-sender")
    t.start()
    try:
        th = prof.summary()["threads"]
        assert th["python_started"] == ["delia-test-sender"]
        assert "delia-test-sender" in th["python_alive"]
        assert th["os_now"] >= th["os_at_start"] + 1
    finally:
        stop.set()
        t.join()


def test_disabled_profile_is_free_of_state():
    assert profile.start(False, "cpu", object()) is profile.NULL
    with profile.NULL.phase("forward"):
        pass
    profile.NULL.end_step()
    assert profile.finish(profile.NULL, "/nonexistent", write=True) is None
