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


class FakeEvent:
    """A CUDA event stand-in: done once the 'device' got past it; elapsed in ms."""
    def __init__(self, device):
        self.device, self.t, self.synced = device, None, False

    def record(self):
        self.t = self.device["clock"]

    def query(self):
        return self.device["done"]

    def synchronize(self):
        self.synced = True

    def elapsed_time(self, end):
        return (end.t - self.t) * 1000.0


def test_gpu_events_are_folded_once_finished_and_never_waited_for(monkeypatch):
    """On a GPU the device phases are events: end_step reads only those the device has
    finished (query), so the profile neither syncs the host nor keeps every step's events;
    nested device phases count their own time."""
    import torch
    device = {"clock": 0.0, "done": False}
    made = []

    def event(enable_timing):
        made.append(FakeEvent(device))
        return made[-1]
    monkeypatch.setattr(torch.cuda, "Event", event)
    prof = profile.StepProfile(cuda=True)
    for _ in range(3):
        with prof.phase("forward"):
            device["clock"] += 2.0
            with prof.phase("loss"):
                device["clock"] += 1.0
        prof.end_step()
    assert not any(e.synced for e in made)  # nothing finished yet: nothing read
    device["done"] = True
    with prof.phase("forward"):
        device["clock"] += 2.0
    prof.end_step()
    assert [len(ev) for ev in prof._events] == [0, 0, 0, 1]  # finished steps folded, the last kept
    assert prof.per_step() == [{"forward": 2.0, "loss": 1.0}] * 3 + [{"forward": 2.0}]
