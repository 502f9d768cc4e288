"""The shipped offline tasks: the parity data is what its generator writes, the GSM8K YAML is lm-eval's
gsm8k_cot protocol on a local file (chat template, system prompt, 8-shot as multiturn, strict and
flexible match), and users' own YAMLs load through --include-path from local JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

from huginn.eval import TASKS_DIR
from tests.conftest import tiny_model
from tests.eval.eval_helpers import char_tokenizer

SYSTEM = "You are a helpful assistant that can assist users with mathematical reasoning."


def test_parity_data_is_what_the_generator_writes():
    from huginn.eval.tasks.make_data import problems, render
    from huginn.train.tasks import Parity

    text = (TASKS_DIR / "data" / "parity.jsonl").read_text()
    assert text == render(problems())
    rows = [json.loads(line) for line in text.splitlines()]
    assert {r["difficulty"] for r in rows} >= {1, 16, 64}
    for r in rows:
        assert r["answer"] == str(r["bits"].count("1") % 2) == str(r["label"])
        assert len(r["bits"]) == r["difficulty"]
        v = int(r["bits"][::-1], 2)  # bit i of v is the i-th character
        assert not Parity().holds_out(r["difficulty"]) or Parity().held_out(r["difficulty"], v)


def test_gsm8k_yaml_is_lm_evals_gsm8k_cot_protocol():
    import lm_eval
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))
    ours = yaml.load((TASKS_DIR / "huginn_gsm8k_cot.yaml").read_text(), Loader=Loader)
    theirs = yaml.load(
        (Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k-cot.yaml").read_text(), Loader=Loader
    )
    assert ours.pop("custom_dataset") == "loaders.gsm8k"
    assert ours.pop("task") == "huginn_gsm8k_cot"
    for key in ("task", "tag", "dataset_path", "dataset_name"):
        theirs.pop(key, None)
    assert ours == theirs
    assert len(ours["fewshot_config"]["samples"]) == ours["num_fewshot"] == 8
    assert {f["name"] for f in ours["filter_list"]} == {"strict-match", "flexible-extract"}


def _gsm8k_file(tmp_path) -> Path:
    rows = [
        {"question": "Ann has 3 apples and buys 4 more. How many apples does she have?", "answer": "3 + 4 = 7\n#### 7"},
        {"question": "A box holds 12 eggs. How many eggs are in 2 boxes?", "answer": "12 * 2 = 24\n#### 24"},
        {"question": "Bo had 10 coins and lost 6. How many are left?", "answer": "10 - 6 = 4\n#### 4"},
    ]
    path = tmp_path / "gsm8k_test.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_gsm8k_protocol_on_a_local_file(tmp_path):
    """The requests carry the chat template, the system prompt and 8 few-shot turns; strict-match
    needs "The answer is N.", flexible-extract takes the last number."""
    from lm_eval import simple_evaluate

    from huginn.eval.lm import HuginnLM
    from huginn.eval.sweep import task_manager

    lm = HuginnLM(pretrained=tiny_model(), tokenizer=char_tokenizer(), num_steps=1)
    seen = []
    replies = ["So she has 7. The answer is 7.", "Two boxes hold 24 eggs", "It is 5."]

    def fake_generate(requests, disable_tqdm=False):
        seen.extend(r.args for r in requests)
        return [replies[r.doc_id] for r in requests]

    lm.generate_until = fake_generate  # the protocol is under test here, not the model
    results = simple_evaluate(
        model=lm,
        tasks=["huginn_gsm8k_cot"],
        task_manager=task_manager(["huginn_gsm8k_cot"], metadata={"path": str(_gsm8k_file(tmp_path))}),
        apply_chat_template=True,
        fewshot_as_multiturn=True,
        system_instruction=SYSTEM,
        log_samples=False,
    )
    res = results["results"]["huginn_gsm8k_cot"]
    assert res["exact_match,strict-match"] == pytest.approx(1 / 3)
    assert res["exact_match,flexible-extract"] == pytest.approx(2 / 3)
    prompt, gen_kwargs = seen[0]
    assert prompt.startswith(f"<|system|>{SYSTEM}\n<|user|>Q: There are 15 trees")
    assert prompt.count("<|user|>") == 9 and prompt.count("<|assistant|>") == 9
    assert prompt.endswith("<|assistant|>") and "Q: Ann has 3 apples" in prompt
    assert "Q:" in gen_kwargs["until"] and gen_kwargs["do_sample"] is False


def test_gsm8k_sample_file_loads():
    from huginn.eval.tasks.loaders import gsm8k

    rows = gsm8k()["test"]
    assert len(rows) >= 3 and all("####" in r["answer"] for r in rows)


def test_own_yaml_from_include_path_reads_local_json(tmp_path):
    from lm_eval import simple_evaluate

    from huginn.eval.lm import HuginnLM
    from huginn.eval.sweep import task_manager

    data = tmp_path / "items.jsonl"
    data.write_text("".join(json.dumps({"q": f"{i}+{i}=", "a": str(2 * i)}) + "\n" for i in range(4)))
    (tmp_path / "mine.yaml").write_text(
        "task: my_sums\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\noutput_type: loglikelihood\ndoc_to_text: '{{q}}'\ndoc_to_target: '{{a}}'\n"
        "target_delimiter: ''\nmetric_list:\n  - metric: acc\n"
    )
    lm = HuginnLM(pretrained=tiny_model(), tokenizer=char_tokenizer(), num_steps=2)
    out = simple_evaluate(model=lm, tasks=["my_sums"], task_manager=task_manager(["my_sums"], [tmp_path]))
    assert out["results"]["my_sums"]["sample_len"] == 4
    assert 0.0 <= out["results"]["my_sums"]["acc,none"] <= 1.0
