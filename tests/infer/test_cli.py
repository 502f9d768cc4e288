"""`huginn generate` and `huginn chat` on the reference fixture with a tiny byte-level tokenizer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import huginn
from huginn.cli import cli
from huginn.errors import HuginnError

TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"


def _byte_tokenizer(folder, chat_template=None):
    """256 byte symbols, no merges: exactly the fixture's vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok)
    if chat_template:
        fast.chat_template = chat_template
    fast.save_pretrained(str(folder))
    return fast


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bytetok")
    _byte_tokenizer(folder, TEMPLATE)
    return folder


def _run(args):
    return CliRunner().invoke(cli, args, catch_exceptions=True)


@pytest.mark.parametrize(
    "extra",
    [
        (),
        pytest.param(("--compile",), marks=pytest.mark.compile),
        pytest.param(("--freeze",), marks=pytest.mark.compile),
    ],
)
def test_generate_prints_the_greedy_continuation(fixture_dir, tokenizer_dir, reference_model, extra):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    prompt = "The raven"
    ids = torch.tensor([tok(prompt)["input_ids"]])
    want = reference_model.generate(ids, max_new_tokens=8, num_steps=4, init_scale=0.0)
    res = _run(
        [
            "generate",
            str(fixture_dir),
            prompt,
            "--tokenizer",
            str(tokenizer_dir),
            "--num-steps",
            "4",
            "--max-new-tokens",
            "8",
            "--init-scale",
            "0",
            *extra,
        ]
    )
    assert res.exit_code == 0, res.output
    assert res.stdout.rstrip("\n") == prompt + tok.decode(want[0, ids.shape[1] :])
    assert "core steps/token mean 4.0" in res.stderr


def test_generate_stream_with_exit_and_cache(fixture_dir, tokenizer_dir):
    res = _run(
        [
            "generate",
            str(fixture_dir),
            "Hello",
            "--tokenizer",
            str(tokenizer_dir),
            "--num-steps",
            "16",
            "--exit",
            "kl:1e-3",
            "--cache",
            "latest-m4-compress-s8",
            "--stream",
            "--max-new-tokens",
            "6",
            "--init-scale",
            "0",
        ]
    )
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("Hello")
    assert ("core steps/token" in res.stderr and "max 16" in res.stderr) or "min" in res.stderr


def test_generate_speculative_and_sampling(fixture_dir, tokenizer_dir):
    spec = _run(
        [
            "generate",
            str(fixture_dir),
            "Hi",
            "--tokenizer",
            str(tokenizer_dir),
            "--num-steps",
            "4",
            "--draft-steps",
            "2",
            "--max-new-tokens",
            "6",
            "--init-scale",
            "0",
        ]
    )
    greedy = _run(
        [
            "generate",
            str(fixture_dir),
            "Hi",
            "--tokenizer",
            str(tokenizer_dir),
            "--num-steps",
            "4",
            "--max-new-tokens",
            "6",
            "--init-scale",
            "0",
        ]
    )
    assert spec.exit_code == 0 and spec.stdout == greedy.stdout and "draft acceptance" in spec.stderr
    sampled = [
        "generate",
        str(fixture_dir),
        "Hi",
        "--tokenizer",
        str(tokenizer_dir),
        "--temperature",
        "0.9",
        "--top-p",
        "0.9",
        "--seed",
        "3",
        "--max-new-tokens",
        "5",
        "--num-steps",
        "2",
    ]
    a, b = _run(sampled), _run(sampled)  # the same seed twice: the same sample
    assert a.exit_code == 0 and a.stdout == b.stdout


def test_chat_uses_the_template_and_shows_steps(fixture_dir, tokenizer_dir):
    res = CliRunner().invoke(
        cli,
        [
            "chat",
            str(fixture_dir),
            "--tokenizer",
            str(tokenizer_dir),
            "--num-steps",
            "8",
            "--exit",
            "latent-diff",
            "--max-new-tokens",
            "5",
            "--init-scale",
            "0",
        ],
        input="hello there\nand again\n/exit\n",
    )
    assert res.exit_code == 0, res.output
    assert res.stderr.count("core steps/token") == 2
    assert res.stderr.count("you> ") == 3


def test_chat_needs_a_chat_template(fixture_dir, tmp_path):
    _byte_tokenizer(tmp_path)
    res = _run(["chat", str(fixture_dir), "--tokenizer", str(tmp_path)])
    assert isinstance(res.exception, HuginnError) and "chat template" in str(res.exception)


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--exit", "fastest"], "unknown exit criterion 'fastest'"),
        (["--cache", "compress-q3"], "unknown cache lookup strategy"),
        (["--max-new-tokens", "500"], "exceeds the block size"),
    ],
)
def test_bad_options_are_one_line_errors(fixture_dir, tokenizer_dir, extra, match):
    res = _run(["generate", str(fixture_dir), "Hi", "--tokenizer", str(tokenizer_dir), *extra])
    assert isinstance(res.exception, HuginnError), res.output
    assert match in str(res.exception)


def test_missing_tokenizer_is_reported(fixture_dir):
    res = _run(["generate", str(fixture_dir), "Hi"])
    assert isinstance(res.exception, HuginnError) and "--tokenizer" in str(res.exception)


def test_error_reaches_the_terminal_as_one_line(fixture_dir, tokenizer_dir):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "huginn",
            "generate",
            str(fixture_dir),
            "Hi",
            "--tokenizer",
            str(tokenizer_dir),
            "--exit",
            "nope",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(huginn.__file__).parents[1])},
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.strip().startswith("huginn: error: unknown exit criterion") and proc.stderr.strip().count("\n") == 0
    )
    assert proc.stdout == ""
