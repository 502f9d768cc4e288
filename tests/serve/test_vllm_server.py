"""`huginn serve` over real HTTP (`make test-vllm`, in .venv-vllm): it starts through the plugin's
entry point (vLLM spawns its engine process, which finds the plugin only that way), answers
/v1/completions and /v1/chat/completions with huginn generate's greedy text, streams the same
text, and stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, run_huginn

from .serve_helpers import VLLM_ENV, tiny_checkpoint

pytest.importorskip("vllm", reason="vLLM is not installed here: `make test-vllm` runs these tests in .venv-vllm")
pytestmark = pytest.mark.vllm

STEPS = 3
MAX_NEW = 8
PROMPT = "The cat sat"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read())


def _stream(url: str, body: dict) -> list[str]:
    req = urllib.request.Request(
        url, json.dumps({**body, "stream": True}).encode(), {"Content-Type": "application/json"}
    )
    pieces = []
    with urllib.request.urlopen(req, timeout=120) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if line.startswith("data: ") and line != "data: [DONE]":
                pieces.append(json.loads(line[6:])["choices"][0]["text"])
    return pieces


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("served"))


@pytest.fixture(scope="module")
def server(checkpoint):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"}
    env.update({k: v for k, v in VLLM_ENV.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"})
    env["PYTHONPATH"] = str(REPO / "src")
    cmd = [sys.executable, "-m", "huginn", "serve", str(checkpoint), "--num-steps", str(STEPS), "--port", str(port)]
    cmd += ["--dtype", "float32", "--enforce-eager", "--max-num-seqs", "8"]  # passed through to vLLM
    log = open(checkpoint.parent / "server.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            log.close()
            pytest.fail(
                f"huginn serve exited with {proc.returncode}: {(checkpoint.parent / 'server.log').read_text()[-3000:]}"
            )
        try:
            with urllib.request.urlopen(base + "/health", timeout=2):
                break
        except OSError:
            time.sleep(1)
    else:
        _stop(proc)
        log.close()
        pytest.fail("huginn serve did not come up within 300 s")
    yield proc, base, str(checkpoint)
    _stop(proc)
    log.close()


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL for the server and every process it started (none may outlive the test)."""
    import psutil

    if proc.poll() is not None:
        return
    kids = psutil.Process(proc.pid).children(recursive=True)
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    _, alive = psutil.wait_procs(kids, timeout=30)
    for kid in alive:
        kid.kill()


@torch.no_grad()
def _huginn_ids(checkpoint: str, ids: list[int]) -> list[int]:
    from huginn.checkpoint import load_checkpoint

    model = load_checkpoint(checkpoint).eval()
    out = model.generate(torch.tensor([ids]), num_steps=STEPS, init_scale=0.0, max_new_tokens=MAX_NEW, do_sample=False)
    return out[0, len(ids) :].tolist()


def test_completions_equal_huginn_generate(server):
    _, base, checkpoint = server
    body = {"model": checkpoint, "prompt": PROMPT, "max_tokens": MAX_NEW, "temperature": 0, "return_token_ids": True}
    got = _post(base + "/v1/completions", body)["choices"][0]
    cli = run_huginn(
        "generate", checkpoint, PROMPT, "--num-steps", str(STEPS), "--init-scale", "0", "--max-new-tokens", str(MAX_NEW)
    )
    assert cli.stdout.rstrip("\n") == PROMPT + got["text"]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(checkpoint)
    want = _huginn_ids(checkpoint, tok(PROMPT, add_special_tokens=False)["input_ids"])
    assert got["token_ids"] == want
    # streamed: the same text, in several pieces
    pieces = _stream(base + "/v1/completions", body)
    assert len(pieces) > 1 and "".join(pieces) == got["text"]


def test_chat_completions_equal_huginn_generate(server):
    _, base, checkpoint = server
    messages = [{"role": "user", "content": "hello there"}]
    body = {"model": checkpoint, "messages": messages, "max_tokens": MAX_NEW, "temperature": 0}
    got = _post(base + "/v1/chat/completions", body)["choices"][0]["message"]["content"]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(checkpoint)
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    want = _huginn_ids(checkpoint, tok(text, add_special_tokens=False)["input_ids"])
    assert got == tok.decode(want, skip_special_tokens=True)


def test_sigterm_stops_the_server_and_its_engine(server):
    import psutil

    proc, base, _ = server
    children = psutil.Process(proc.pid).children(recursive=True)
    assert children  # vLLM's engine core runs in its own process
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive
    with pytest.raises(OSError):
        urllib.request.urlopen(base + "/health", timeout=2)
