"""The datatrove path runs the same units as the builtin path and writes the same bytes."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.datatrove  # `make test-datatrove` installs the extra and runs these


@pytest.fixture(autouse=True)
def _needs_datatrove():
    # a fixture, not a module-level skip, so that the default suite (which deselects these) reports nothing
    pytest.importorskip(
        "datatrove", reason="the optional extra 'datatrove' is not installed: run `make test-datatrove`"
    )


def test_local_executor_matches_builtin(corpus, tokenizer_dir, tmp_path):
    from huginn.data.scaleout import tokenize_with_datatrove
    from huginn.data.tokenize import tokenize_parquet

    kw = dict(seq_len=31, rows_per_file=40, row_group_rows=16, unit_bytes=4000)
    ref = tokenize_parquet(corpus["files"], tokenizer_dir, tmp_path / "builtin", **kw)
    got = tokenize_with_datatrove(corpus["files"], tokenizer_dir, tmp_path / "dt", tasks=3, workers=2, **kw)
    assert [f["name"] for f in got["files"]] == [f["name"] for f in ref["files"]]
    for f in ref["files"]:
        assert (tmp_path / "dt" / f["name"]).read_bytes() == (tmp_path / "builtin" / f["name"]).read_bytes()
    assert {k: v for k, v in got.items() if k != "created"} == {k: v for k, v in ref.items() if k != "created"}
    # datatrove records its tasks; a rerun skips them and leaves the output as it is
    again = tokenize_with_datatrove(corpus["files"], tokenizer_dir, tmp_path / "dt", tasks=3, workers=2, **kw)
    assert again["files"] == got["files"]
    assert json.loads((tmp_path / "dt" / "manifest.json").read_text())["rows"] == ref["rows"]


def test_unknown_executor(corpus, tokenizer_dir, tmp_path):
    from huginn.data.scaleout import tokenize_with_datatrove
    from huginn.errors import HuginnError

    with pytest.raises(HuginnError, match="unknown datatrove executor 'k8s'"):
        tokenize_with_datatrove(corpus["files"], tokenizer_dir, tmp_path / "o", executor="k8s")
    assert not (tmp_path / "o").exists()
