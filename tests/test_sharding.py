"""map_examples: one process calls straight through; two gloo ranks each compute a shard and all get every row."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from maxmargin.evaluate import AttackSpec, plan_evaluation
from maxmargin.sharding import map_examples


def _double_and_count(x, extra=None, *, offset=0):
    # rows depend on their own example only; the second output is None when extra is
    return x * 2 + offset, None if extra is None else extra.sum(1)


def test_one_process_calls_through_with_none_passing():
    x = torch.arange(10.0).reshape(5, 2)
    a, b = map_examples(_double_and_count, x, None, offset=1)
    assert torch.equal(a, x * 2 + 1) and b is None
    single = map_examples(lambda t: t + 1, x)
    assert torch.equal(single, x + 1)


def test_disagreeing_example_counts_are_refused():
    with pytest.raises(ValueError, match="number of examples"):
        map_examples(lambda a, b: a, torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="at least one"):
        map_examples(lambda a: a, None)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        x = torch.arange(14.0).reshape(7, 2)          # 7 rows: shards of 4 and 3
        flags = torch.tensor([True, False, True, True, False, False, True])
        seen = []

        def fn(x, flags):
            seen.append(x.shape[0])
            return x * 2, flags & (x[:, 0] > 4)

        doubled, picked = map_examples(fn, x, flags)
        torch.save({"doubled": doubled, "picked": picked, "seen": seen}, f"{out}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_each_compute_a_shard_and_get_all_rows_in_order(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    x = torch.arange(14.0).reshape(7, 2)
    flags = torch.tensor([True, False, True, True, False, False, True])
    for rank, size in ((0, 4), (1, 3)):
        got = torch.load(tmp_path / f"{rank}.pt", weights_only=True)
        assert got["seen"] == [size], "each rank computes only its own shard"
        assert torch.equal(got["doubled"], x * 2)
        assert got["picked"].dtype == torch.bool and torch.equal(got["picked"], flags & (x[:, 0] > 4))


class _Scripted(torch.nn.Module):
    def forward(self, x):
        return 10 * x[:, :4]


def _scripted_attack(breaks_every: int) -> AttackSpec:
    """Deterministic: flips the examples whose id (last coordinate) is a multiple of ``breaks_every``."""
    def run(x, y, eps):
        ids = (x[:, -1] * 1000).round().long()
        flip = ids % breaks_every == 0
        x_adv = x.clone()
        r = torch.arange(len(y))
        x_adv[r[flip], y[flip]] -= eps[flip]
        x_adv[r[flip], (y[flip] + 1) % 4] += eps[flip]
        return x_adv
    return AttackSpec(f"every-{breaks_every}", 1, 1, "white-box", run)


def test_attack_stage_is_per_example_so_shards_recombine_exactly(monkeypatch):
    import maxmargin.evaluate as ev

    n = 12
    y = torch.arange(n) % 4
    x = torch.full((n, 5), 0.5)
    x[torch.arange(n), y] = 0.6
    x[:, -1] = torch.arange(n) / 1000
    x[5, (y[5] + 1) % 4] = 0.7            # one misclassified example
    monkeypatch.setattr(ev, "build_protocol", lambda *a, **k: [_scripted_attack(3), _scripted_attack(2)])
    monkeypatch.setattr(ev, "masking_flags", lambda *a, **k: [])
    margins = torch.linspace(0.01, 0.3, n)      # ids 1..3 within 0.1, 1..7 within 0.2
    plan = plan_evaluation(_Scripted(), (5,), eps=[0.0, 0.1, 0.2], margin_attack=True)
    whole, _ = plan.attack(x, y, margins)
    parts = [plan.attack(x[i::3], y[i::3], margins[i::3])[0] for i in range(3)]
    joined = torch.empty_like(whole)
    for i, part in enumerate(parts):
        joined[i::3] = part
    assert torch.equal(joined, whole)
    r = plan.result(x, y, whole, margins)
    assert r.robust.shape == (3, n) and r.clean_accuracy == pytest.approx(11 / 12)
    # ε = 0: nothing attacked; ε > 0: ids 0, 3, 6, 9 fall to the first attack, then 2, 4, 8, 10 to the second,
    # then the margin search takes id 1 (and id 7 at 0.2); id 5 was never correct
    assert [r.robust_accuracy[e] for e in (0.0, 0.1, 0.2)] == pytest.approx([11 / 12, 2 / 12, 1 / 12])
    newly = {(row["attack"], row["eps"]): row["newly_broken"] for row in r.attacks}
    assert [newly[(a, 0.1)] for a in ("every-3", "every-2", "margin-search")] == [4, 4, 1]
    assert newly[("margin-search", 0.2)] == 2
    assert [r.by_attack[a][0.1] for a in ("every-3", "every-2", "margin-search")] == pytest.approx([7 / 12, 3 / 12,
                                                                                                   2 / 12])
