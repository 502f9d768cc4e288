"""The training loop: exact resume, atomic checkpoints, NaN stop, bad input, export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from train_helpers import TINY, losses

from huginn.cli import main
from huginn.errors import HuginnError
from huginn.train import checkpoint
from huginn.train.config import load_config
from huginn.train.loop import train


def cfg(*extra, steps=6):
    return load_config(None, [*TINY, *extra], **{"train.max_steps": steps})


def weights(run):
    from huginn.train.export import load_run_model

    return load_run_model(run)[0].state_dict()


def test_resumed_equals_uninterrupted(tmp_path):
    full = train(cfg(), tmp_path / "full")
    # interrupted twice, with a half-written checkpoint left behind by a "crash"
    train(cfg("train.stop_after=3"), tmp_path / "split")
    (tmp_path / "split" / "checkpoints" / ".step_0000005.tmp").mkdir()
    assert checkpoint.latest(tmp_path / "split").name == "step_0000003"
    train(cfg("train.stop_after=2"), tmp_path / "split")
    rest = train(cfg(), tmp_path / "split")
    assert rest.step == 6 and len(rest.losses) == 1
    assert losses(tmp_path / "split") == losses(tmp_path / "full")  # exact float equality
    assert len(losses(tmp_path / "full")) == 6 and full.scaling == rest.scaling
    a, b = weights(tmp_path / "full"), weights(tmp_path / "split")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "full" / "scaling.png").stat().st_size > 1000
    assert "| 1 |" in (tmp_path / "full" / "scaling.md").read_text()
    # only `keep` checkpoints remain
    assert sorted(p.name for p in (tmp_path / "full" / "checkpoints").glob("step_*")) == [
        "step_0000004",
        "step_0000006",
    ]


def test_resume_refuses_a_different_config(tmp_path):
    train(cfg("train.stop_after=1"), tmp_path / "r")
    with pytest.raises(HuginnError, match="optim.lr"):
        train(cfg("optim.lr=0.5"), tmp_path / "r")


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    import huginn.train.forward as fwd

    calls = {"n": 0}
    real = fwd.linear_cross_entropy

    def poisoned(*a, **k):
        calls["n"] += 1
        out = real(*a, **k)
        return out * float("nan") if calls["n"] == 4 else out

    monkeypatch.setattr(fwd, "linear_cross_entropy", poisoned)
    with pytest.raises(HuginnError, match=r"loss became nan at step 3; .*step_0000002 is kept"):
        train(cfg(), tmp_path / "r")
    assert checkpoint.latest(tmp_path / "r").name == "step_0000002"


@pytest.mark.parametrize(
    "args,message",
    [
        (["--set", "optim.lrr=1"], "unknown config key 'optim.lrr'; valid keys in section 'optim': name, lr"),
        (["--set", "optimizer.lr=1"], "unknown config key 'optimizer'; valid keys in the top level: model, data"),
        (["--set", "optim.name=sgd"], "valid: adamw, ellis-adam, muon"),
        (["--set", "data.kind=packed"], "needs data.path"),
        (
            ["--set", "data.kind=chat", "--set", "data.path=/nonexistent.jsonl", "--set", "data.tokenizer=/nope"],
            "tokenizer folder '/nope' does not exist",
        ),
        (["--set", "model.overrides={vocab_size: 20}"], "needs vocab_size >= 48"),
        (["--train.batch_size", "many"], "train.batch_size must be an integer"),
    ],
)
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        main(["train", "--out", str(out), "--max-steps", "2", *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_missing_config_file(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "r")])
    assert "does not exist" in capsys.readouterr().err


def test_export_loads_with_auto_classes(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import huginn  # noqa: F401
    from huginn.train.export import export_run, load_run_model

    train(cfg(steps=3), tmp_path / "r")
    export_run(tmp_path / "r", tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    ours = load_run_model(tmp_path / "r")[0].eval()
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    ids = torch.tensor([tok("a=3;b=a+4;b?")["input_ids"]])
    assert tok.decode(ids[0]) == "a=3;b=a+4;b?"
    with torch.no_grad():
        torch.testing.assert_close(hf(ids, num_steps=3, init_scale=0.0).logits, ours(ids, 3, init_scale=0.0).logits)
    with pytest.raises(HuginnError, match="not empty"):
        export_run(tmp_path / "r", tmp_path / "hf")


def test_config_overrides_parse():
    c = load_config(None, ["optim.lr=1e-3", "eval.scaling=[1, 3]", "train.precision=bf16", "optim.betas=[0.8, 0.9]"])
    assert (
        c.optim.lr == 1e-3 and c.eval.scaling == [1, 3] and c.train.precision == "bf16" and c.optim.betas == [0.8, 0.9]
    )
    assert json.loads(json.dumps(c.to_dict()))["train"]["max_steps"] == 1000


def test_default_yaml_is_the_builtin_default():
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "configs" / "default.yaml"
    from huginn.config import named_shape

    builtin = load_config(None).to_dict()
    shape = named_shape(builtin["model"]["shape"])  # depth None means the shape's own values
    builtin["depth"]["mean_recurrence"] = builtin["depth"]["mean_recurrence"] or shape.mean_recurrence
    builtin["depth"]["backprop_depth"] = builtin["depth"]["backprop_depth"] or shape.mean_backprop_depth
    assert load_config(path).to_dict() == builtin


def test_presets_load():
    from pathlib import Path

    presets = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
    assert len(presets) >= 4
    for p in presets:
        load_config(p)
    default = load_config(Path(__file__).resolve().parents[2] / "configs" / "default.yaml")
    assert default.to_dict() | {"depth": None, "model": None} == load_config(None).to_dict() | {
        "depth": None,
        "model": None,
    }


def _packed_for_tiny(tmp_path, vocab: int):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
    from packed_helpers import make_packed

    d = make_packed(tmp_path / "packed", 40, row_len=33, rows_per_file=(16, 24))
    m = json.loads((d / "manifest.json").read_text())
    m["tokenizer"]["vocab_size"] = vocab
    (d / "manifest.json").write_text(json.dumps(m))
    return d


def test_packed_data_trains_and_resumes_exactly(tmp_path):
    """`data.kind: packed` end to end through `huginn train`: a run stopped at step 3 and resumed
    gives the uninterrupted run's losses (the loader's position is in the checkpoint)."""
    data = _packed_for_tiny(tmp_path, 64)
    tiny = [t.replace("}", ", vocab_size: 64}") if t.startswith("model.overrides") else t for t in TINY]
    args = ["--set", "data.kind=packed", "--set", f"data.path={data}"]
    base = ["train", "--max-steps", "6", *[a for t in tiny for a in ("--set", t)], *args]
    main([*base, "--out", str(tmp_path / "full")])
    main([*base, "--out", str(tmp_path / "part"), "--set", "train.stop_after=3"])
    main([*base, "--out", str(tmp_path / "part")])
    full, part = losses(tmp_path / "full"), losses(tmp_path / "part")
    assert sorted(full) == list(range(1, 7)) and full == part
    assert full[6] < full[1]  # constant rows are learnable


def test_packed_data_with_a_larger_vocabulary_is_refused(tmp_path, capsys):
    data = _packed_for_tiny(tmp_path, 50_000)
    with pytest.raises(SystemExit):
        main(
            [
                "train",
                "--out",
                str(tmp_path / "r"),
                "--max-steps",
                "2",
                "--set",
                "data.kind=packed",
                "--set",
                f"data.path={data}",
            ]
        )
    err = capsys.readouterr().err
    assert "vocab mismatch" in err and "50000 tokens" in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


@pytest.mark.compile
def test_compiled_training_matches_eager(tmp_path):
    """`train.compile: true` (each block through torch.compile) gives the eager run's losses."""
    base = ["train", "--max-steps", "3", *[a for t in TINY for a in ("--set", t)], "--set", "eval.scaling=[]"]
    main([*base, "--out", str(tmp_path / "eager")])
    main([*base, "--out", str(tmp_path / "compiled"), "--set", "train.compile=true"])
    eager, compiled = losses(tmp_path / "eager"), losses(tmp_path / "compiled")
    assert sorted(eager) == [1, 2, 3]
    for step in eager:
        assert compiled[step] == pytest.approx(eager[step], rel=1e-4)
