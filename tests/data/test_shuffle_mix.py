"""Global shuffle (a deterministic permutation across files) and weighted mixing with a split."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest
from packed_helpers import make_packed

from huginn.data.mixing import Source, load_mix_config, mix_sources, parse_source_spec
from huginn.data.packing import table_to_rows
from huginn.data.shuffle import shuffle_datasets
from huginn.errors import HuginnError


def all_rows(d) -> np.ndarray:
    m = json.loads((d / "manifest.json").read_text())
    return np.concatenate([table_to_rows(pq.read_table(d / f["name"])) for f in m["files"]])


def test_shuffle_is_a_deterministic_permutation(tmp_path):
    a = make_packed(tmp_path / "a", 57)
    b = make_packed(tmp_path / "b", 30, tag=1)
    kw = dict(seed=3, rows_per_file=20, row_group_rows=6, buffer_bytes=200)  # tiny buffer: many spills
    m = shuffle_datasets([a, b], tmp_path / "s1", **kw)
    shuffle_datasets([a, b], tmp_path / "s2", **kw)
    shuffle_datasets([a, b], tmp_path / "s3", **{**kw, "seed": 4})
    rows = all_rows(tmp_path / "s1")
    ids = rows[:, 0].tolist()
    assert sorted(ids) == sorted(list(range(57)) + [1_000_000 + i for i in range(30)])  # every row once
    assert (rows[:, 1:] == rows[:, :1] % 1_000_000).all()  # rows moved whole
    assert ids != sorted(ids)  # the order changed, across files
    assert [f["rows"] for f in m["files"]] == [20, 20, 20, 20, 7] and m["rows"] == 87
    for f in m["files"]:
        assert (tmp_path / "s1" / f["name"]).read_bytes() == (tmp_path / "s2" / f["name"]).read_bytes()
    assert all_rows(tmp_path / "s3")[:, 0].tolist() != ids
    assert not (tmp_path / "s1" / ".tmp").exists()


def test_shuffle_refuses_mixed_row_lengths(tmp_path):
    a = make_packed(tmp_path / "a", 10)
    b = make_packed(tmp_path / "b", 10, row_len=7)
    with pytest.raises(HuginnError, match="same --seq-len"):
        shuffle_datasets([a, b], tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_mix_weights_and_split(tmp_path):
    a = make_packed(tmp_path / "a", 100)
    b = make_packed(tmp_path / "b", 80, tag=1)
    res = mix_sources(
        [Source("a", str(a), 2.0), Source("b", str(b), 0.5)],
        tmp_path / "mix",
        val_fraction=0.1,
        seed=1,
        rows_per_file=50,
    )
    train = Counter(all_rows(tmp_path / "mix" / "train")[:, 0].tolist())
    val = Counter(all_rows(tmp_path / "mix" / "val")[:, 0].tolist())
    a_train = {i for i in train if i < 1_000_000}
    a_val = {i for i in val if i < 1_000_000}
    assert len(a_val) == 10 and len(a_train) == 90 and not a_train & a_val  # split before upsampling
    assert all(train[i] == 2 for i in a_train) and all(val[i] == 2 for i in a_val)
    b_train = [i for i in train if i >= 1_000_000]
    assert len(b_train) == 36 and all(train[i] == 1 for i in b_train)  # round(0.5 * 72)
    assert res["train"]["sources"]["a"]["rows"] == 180 and res["train"]["rows"] == 216
    plan = json.loads((tmp_path / "mix" / "mix.json").read_text())
    assert [s["train_rows"] for s in plan["sources"]] == [180, 36]
    # same seed, same mix
    mix_sources(
        [Source("a", str(a), 2.0), Source("b", str(b), 0.5)],
        tmp_path / "mix2",
        val_fraction=0.1,
        seed=1,
        rows_per_file=50,
    )
    assert (all_rows(tmp_path / "mix2" / "train") == all_rows(tmp_path / "mix" / "train")).all()


def test_mix_config_and_specs(tmp_path):
    make_packed(tmp_path / "a", 10)
    (tmp_path / "sources.yaml").write_text(
        "sources:\n  wiki: {path: a, weight: 4, license: x}\nval_fraction: 0.2\nseed: 3\n"
    )
    cfg = load_mix_config(tmp_path / "sources.yaml")
    assert cfg["sources"] == [Source("wiki", str(tmp_path / "a"), 4.0)] and cfg["val_fraction"] == 0.2
    assert parse_source_spec("web=/d/x:1.5") == Source("web", "/d/x", 1.5)
    assert parse_source_spec("/d/x") == Source("x", "/d/x", 1.0)
    with pytest.raises(HuginnError, match=">= 0"):
        parse_source_spec("x:-1")
    with pytest.raises(HuginnError, match="names repeat"):
        mix_sources([Source("a", str(tmp_path / "a")), Source("a", str(tmp_path / "a"))], tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_cli_mix_shuffle_stats(corpus, tokenizer_dir, tmp_path, capsys):
    from huginn.cli import main
    from huginn.data.stats import dataset_stats

    main(
        [
            "data",
            "tokenize",
            "--tokenizer",
            tokenizer_dir,
            "--input",
            corpus["files"][0],
            "--seq-len",
            "31",
            "--out",
            str(tmp_path / "p"),
            "--rows-per-file",
            "64",
        ]
    )
    main(["data", "shuffle", "--input", str(tmp_path / "p"), "--out", str(tmp_path / "s"), "--seed", "1"])
    main(["data", "mix", "--source", f"{tmp_path / 'p'}:1.5", "--out", str(tmp_path / "m"), "--val-fraction", "0.1"])
    capsys.readouterr()
    main(["data", "stats", str(tmp_path / "s"), "--tokenizer", tokenizer_dir, "--json"])
    s = json.loads(capsys.readouterr().out)[0]
    p = dataset_stats(tmp_path / "p")
    assert s["matches_manifest"] and s["documents"] == 300 == p["documents"] and s["tokens"] == p["tokens"]
    assert s["pad"] == p["pad"] and s["top"][0]["token"]
    m = dataset_stats(tmp_path / "m" / "train")
    assert m["matches_manifest"] and m["rows"] == round(1.5 * (p["rows"] - round(0.1 * p["rows"])))
