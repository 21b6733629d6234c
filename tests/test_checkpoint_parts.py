"""The checkpoint manager composes named stateful parts: a part declared once round-trips
through a step directory (per-rank ones in rank_<r>.pt, shared ones in trainer_state.json),
and a checkpoint that lacks a declared part fails naming the part and the file. The engine
here is a small stand-in that writes one file where DeepSpeed writes its shards; the real
engine goes through the same calls in the durability and ZeRO-3 tests."""
from __future__ import annotations

import json
import random

import pytest
import torch


class FakeEngine:
    """save_checkpoint/load_checkpoint as the manager calls DeepSpeed's engine."""

    def __init__(self, value: float):
        self.weight = torch.tensor([value])

    def save_checkpoint(self, root, tag, client_state, save_latest):
        torch.save(self.weight, f"{root}/{tag}/zero_pp_rank_0_mp_rank_00_model_states.pt")

    def load_checkpoint(self, root, tag, load_optimizer_states, load_lr_scheduler_states):
        self.weight = torch.load(f"{root}/{tag}/zero_pp_rank_0_mp_rank_00_model_states.pt", weights_only=True)
        return f"{root}/{tag}", {}


class Counter:
    def __init__(self, n: int = 0):
        self.n = n

    def state_dict(self) -> dict:
        return {"n": self.n}

    def load_state_dict(self, state: dict) -> None:
        self.n = state["n"]


def _manager(root, engine, tokenizer, per_rank: dict, shared: dict):
    from delia_dist.checkpoint.manager import CheckpointManager
    from delia_dist.checkpoint.parts import RNG, Parts
    mgr = CheckpointManager(root, keep_last=2)
    mgr.compose(engine, tokenizer, Parts(per_rank={"rng": RNG(), **per_rank}, shared=shared,
                                         records={"config": lambda: {"note": "written for readers"}}))
    return mgr


def test_a_declared_part_round_trips_with_the_engine_and_rng(tmp_path, tiny_tokenizer):
    position, seen = Counter(7), Counter(11)
    mgr = _manager(tmp_path, FakeEngine(1.5), tiny_tokenizer, {"position": position}, {"seen": seen})
    random.seed(3)
    torch.manual_seed(3)
    path = mgr.save_step(5)
    expected = (random.random(), torch.rand(3))
    saved = json.loads((path / "trainer_state.json").read_text())
    assert saved["seen"] == {"n": 11} and saved["step"] == 5 and saved["world_size"] == 1
    assert torch.load(path / "rank_0.pt", weights_only=True)["position"] == {"n": 7}

    engine, position2, seen2 = FakeEngine(0.0), Counter(), Counter()
    mgr2 = _manager(tmp_path, engine, tiny_tokenizer, {"position": position2}, {"seen": seen2})
    random.seed(99)
    torch.manual_seed(99)
    state = mgr2.restore(mgr2.resolve("auto"))
    assert (position2.n, seen2.n, engine.weight.item()) == (7, 11, 1.5)
    assert state.step == 5 and state.part("config") == {"note": "written for readers"}
    assert random.random() == expected[0] and torch.equal(torch.rand(3), expected[1])


@pytest.mark.parametrize("kind,file", [("per_rank", "rank_0.pt"), ("shared", "trainer_state.json")])
def test_a_checkpoint_missing_a_declared_part_names_the_part_and_the_file(tmp_path, tiny_tokenizer, kind, file):
    from delia_dist.checkpoint import CheckpointError
    _manager(tmp_path, FakeEngine(1.0), tiny_tokenizer, {}, {}).save_step(2)
    added = {"per_rank": {}, "shared": {}}
    added[kind]["lora_state"] = Counter()
    mgr = _manager(tmp_path, FakeEngine(0.0), tiny_tokenizer, added["per_rank"], added["shared"])
    with pytest.raises(CheckpointError) as e:
        mgr.restore(tmp_path / "step_2")
    assert "'lora_state'" in str(e.value) and str(tmp_path / "step_2" / file) in str(e.value)
    assert "\n" not in str(e.value)


def test_trainer_state_reader_counts_ranks_of_an_old_file_and_names_a_missing_one(tmp_path):
    from delia_dist.checkpoint import CheckpointError, trainer_state
    step = tmp_path / "step_4"
    step.mkdir()
    with pytest.raises(CheckpointError, match=f"{step / 'trainer_state.json'}: missing"):
        trainer_state.read(step)
    (step / "trainer_state.json").write_text(json.dumps({"step": 4, "counters": {"step": 4}}))
    for r in range(3):
        (step / f"rank_{r}.pt").write_bytes(b"")
    state = trainer_state.read(step)  # written before world_size was recorded
    assert (state.step, state.world_size, state.part("counters")) == (4, 3, {"step": 4})
    (step / "trainer_state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="trainer_state.json: unreadable"):
        trainer_state.read(step)


def test_part_names_are_unique():
    from delia_dist.checkpoint.parts import Parts
    with pytest.raises(ValueError, match="unique"):
        Parts(per_rank={"x": Counter()}, shared={"x": Counter()})
