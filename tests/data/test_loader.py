"""PackedLoader: disjoint gap-free shards across ranks and workers, determinism, exact resume."""

from __future__ import annotations

import json

import pytest
import torch
from packed_helpers import make_packed, row_ids

from huginn.data.loader import PackedLoader
from huginn.errors import HuginnError

N = 101  # rows; prime, so no batch geometry divides it


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_packed(tmp_path_factory.mktemp("ds") / "d", N)


def take(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_shapes_and_attributes(data):
    ld = PackedLoader(data, 4)
    b = next(iter(ld))
    assert b.dtype == torch.long and b.shape == (4, 5)
    assert ld.seq_len == 4 and ld.num_rows == N and ld.batches_per_epoch == 25
    assert (b == b[:, :1]).all()  # rows read intact


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("world,batch", [(1, 4), (3, 2), (4, 5)])
def test_ranks_cover_epoch_without_overlap(data, world, batch, shuffle):
    seen = []
    per_rank = []
    for r in range(world):
        batches = list(PackedLoader(data, batch, rank=r, world_size=world, seed=7, shuffle=shuffle, loop=False))
        per_rank.append(len(batches))
        seen += [i for b in batches for i in row_ids(b)]
    steps = N // (batch * world)
    assert per_rank == [steps] * world  # same number of steps on every rank
    assert len(seen) == len(set(seen)) == steps * batch * world  # no overlap
    if not shuffle:
        assert sorted(seen) == list(range(steps * batch * world))  # no gap
    # looping: the stream covers every row once per epoch, across ranks, with no gap
    stream = {}
    for r in range(world):
        for k, b in enumerate(
            take(PackedLoader(data, batch, rank=r, world_size=world, seed=7, shuffle=shuffle), 3 * N)
        ):
            for j, i in enumerate(row_ids(b)):
                stream[(k * world + r) * batch + j] = i
    for e in range(2):
        assert sorted(stream[p] for p in range(e * N, (e + 1) * N)) == list(range(N))


def test_workers_match_in_process_order(data):
    plain = take(PackedLoader(data, 3, rank=1, world_size=2, seed=3), 40)
    ld = PackedLoader(data, 3, rank=1, world_size=2, seed=3, num_workers=2)
    with_workers = take(ld, 40)
    assert all(torch.equal(a, b) for a, b in zip(plain, with_workers))
    assert ld.state_dict()["next_batch"] == 40
    # workers of all ranks together: still disjoint and gap-free per epoch
    rows = [
        i
        for r in range(2)
        for b in list(PackedLoader(data, 5, rank=r, world_size=2, num_workers=2, loop=False))
        for i in row_ids(b)
    ]
    assert len(rows) == len(set(rows)) == 100


def test_deterministic_and_seeded(data):
    a, b = take(PackedLoader(data, 4, seed=1), 60), take(PackedLoader(data, 4, seed=1), 60)
    c = take(PackedLoader(data, 4, seed=2), 60)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    # epochs are reshuffled
    e0 = [i for x in a[:25] for i in row_ids(x)]
    e1 = [i for x in a[25:50] for i in row_ids(x)]
    assert e0 != e1


@pytest.mark.parametrize("stop", [0, 7, 26, 51])
def test_resume_is_exact(data, stop):
    full = take(PackedLoader(data, 4, rank=0, world_size=1, seed=5), 80)
    ld = PackedLoader(data, 4, seed=5)
    take(ld, stop)
    state = json.loads(json.dumps(ld.state_dict()))  # plain JSON
    resumed = PackedLoader(data, 4, seed=5)
    resumed.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(full[stop:], take(resumed, 80 - stop)))


def test_resume_with_other_world_size(data):
    single = take(PackedLoader(data, 4, seed=9), 40)  # stream rows 0..159
    ld = PackedLoader(data, 4, seed=9)
    take(ld, 10)
    state = ld.state_dict()
    ranks = [PackedLoader(data, 2, rank=r, world_size=2, seed=9) for r in range(2)]
    for r in ranks:
        r.load_state_dict(state)
    nxt = [take(r, 1)[0] for r in ranks]
    assert torch.equal(torch.cat(nxt), single[10])
    with pytest.raises(HuginnError, match="do not split"):
        PackedLoader(data, 3, seed=9).load_state_dict(PackedLoader(data, 4, seed=9).state_dict() | {"rows_consumed": 4})


def test_state_from_other_data_or_seed_is_refused(data, tmp_path):
    state = PackedLoader(data, 4, seed=1).state_dict()
    with pytest.raises(HuginnError, match="another seed"):
        PackedLoader(data, 4, seed=2).load_state_dict(state)
    other = make_packed(tmp_path / "o", N, tag=1, rows_per_file=(50, 51))
    with pytest.raises(HuginnError, match="another fingerprint"):
        PackedLoader(other, 4, seed=1).load_state_dict(state)


def test_several_paths_and_bad_paths(data, tmp_path):
    other = make_packed(tmp_path / "o", 20, tag=1)
    ld = PackedLoader([data, other], 11, loop=False, shuffle=False)
    rows = [i for b in ld for i in row_ids(b)]
    assert ld.num_rows == N + 20 and rows[:N] == list(range(N)) and rows[N:] == [1_000_000 + i for i in range(20)]
    with pytest.raises(HuginnError, match="no manifest.json"):
        PackedLoader(tmp_path, 2)
    with pytest.raises(HuginnError, match="outside world_size"):
        PackedLoader(data, 2, rank=2, world_size=2)


def test_reads_tokenized_output(corpus, tokenizer_dir, tmp_path):
    from huginn.data.tokenize import tokenize_parquet

    m = tokenize_parquet(
        corpus["files"][1:], tokenizer_dir, tmp_path / "p", seq_len=15, rows_per_file=30, row_group_rows=8
    )
    ld = PackedLoader(tmp_path / "p", 4, loop=False, shuffle=False)
    rows = torch.cat(list(ld))
    assert ld.seq_len == 15 and ld.num_rows == m["rows"] and rows.shape == (m["rows"] // 4 * 4, 16)
    assert int(rows[0, 0]) == m["tokenizer"]["bos"]
