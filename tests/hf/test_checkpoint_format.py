"""Loading and saving the published Huginn-0125 format: round trips, variants, and bad checkpoints."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM

import huginn  # noqa: F401
from huginn import HuginnError, RavenConfig, RavenForCausalLM, RecurrentLM, named_shape
from tests.conftest import tiny_model


def _logits(model, ids, steps=4):
    with torch.no_grad():
        return model(ids, num_steps=steps, init_scale=0.0).logits


def test_fixture_config_maps_to_tiny_shape(fixture_dir):
    cfg = AutoConfig.from_pretrained(str(fixture_dir))
    assert isinstance(cfg, RavenConfig)
    mc = cfg.to_model_config()
    assert mc == named_shape("tiny")


def test_save_writes_published_keys_and_fields(reference_model, fixture_dir, tmp_path):
    reference_model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    published = json.loads((fixture_dir / "config.json").read_text())
    skip = {"auto_map", "transformers_version"}
    assert set(saved) - skip == set(published) - skip
    for key in set(published) - skip:
        assert saved[key] == published[key], key
    assert set(load_file(str(tmp_path / "model.safetensors"))) == set(load_file(str(fixture_dir / "model.safetensors")))


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"n_embd": 96, "n_heads": 6, "intermediate_size": 160},
        {"n_layers_in_prelude": 1, "n_layers_in_coda": 3},
        {"tie_embeddings": False},
        {"injection_type": "add", "qk_bias": False},
    ],
)
def test_round_trip_any_shape(tmp_path, overrides):
    model = tiny_model(seed=3, **overrides)
    ids = torch.randint(0, 256, (2, 12))
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    assert type(loaded) is RavenForCausalLM
    torch.testing.assert_close(_logits(loaded, ids), _logits(model, ids), atol=0, rtol=0)


def test_published_names_map_to_one_name_each(fixture_dir):
    """config.json's names are read and written at the RavenConfig boundary only."""
    published = json.loads((fixture_dir / "config.json").read_text())
    mc = AutoConfig.from_pretrained(str(fixture_dir)).to_model_config()
    assert mc.n_kv_heads == published["num_key_value_heads"] and mc.head_dim == published["head_dim"]
    assert mc.embed_scale == published["init_values"]["embed_scale"]
    assert mc.init_std == published["init_values"]["std"]
    # a shape off Huginn's derived values writes our extension keys next to the published ones
    gqa = named_shape("tiny", n_kv_heads=2, qk_bias=False, embed_scale=1.0, init_std=0.02)
    written = RavenConfig.from_model_config(gqa).to_diff_dict()
    assert (written["num_key_value_heads"], written["embed_scale"], written["init_std"]) == (2, 1.0, 0.02)
    assert written["init_values"]["std"] == 0.02 and written["init_values"]["embed_scale"] == 1.0
    assert not {"n_kv_heads", "kv_heads", "dim_head", "emb_scale"} & set(written)
    assert RavenConfig(**written).to_model_config() == gqa


def test_hf_wrapper_equals_core_model():
    model = tiny_model(seed=1)
    core = RecurrentLM(model.model_config).eval()
    core.load_state_dict(model.state_dict())
    ids = torch.randint(0, 256, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(core(ids, 6, init_scale=0.0).logits, _logits(model, ids, 6), atol=0, rtol=0)


def test_sharded_checkpoint_loads(reference_model, tmp_path):
    reference_model.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    ids = torch.randint(0, 256, (1, 9))
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path))
    torch.testing.assert_close(_logits(loaded, ids), _logits(reference_model, ids), atol=0, rtol=0)


def test_bf16_checkpoint_loads(fixture_dir, reference_model, tmp_path):
    AutoModelForCausalLM.from_pretrained(str(fixture_dir), dtype=torch.bfloat16).save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path))
    assert loaded.transformer.wte.weight.dtype == torch.bfloat16
    ids = torch.randint(0, 256, (1, 9))
    # bf16 weights and activations: close to fp32, not equal
    torch.testing.assert_close(_logits(loaded, ids).float(), _logits(reference_model, ids), atol=0.1, rtol=0.05)
    as_fp32 = AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32)
    assert as_fp32.transformer.wte.weight.dtype == torch.float32


def test_checkpoint_with_duplicated_lm_head_loads(fixture_dir, reference_model, tmp_path):
    # the real huginn-0125 upload stores both transformer.wte.weight and lm_head.weight
    shutil.copytree(fixture_dir, tmp_path / "ckpt")
    tensors = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    tensors["lm_head.weight"] = tensors["transformer.wte.weight"].clone()
    save_file(tensors, str(tmp_path / "ckpt" / "model.safetensors"), metadata={"format": "pt"})
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "ckpt"))
    assert loaded.lm_head.weight.data_ptr() == loaded.transformer.wte.weight.data_ptr()
    ids = torch.randint(0, 256, (1, 9))
    torch.testing.assert_close(_logits(loaded, ids), _logits(reference_model, ids), atol=0, rtol=0)


def test_checkpoint_without_freqs_cis_loads(fixture_dir, reference_model, tmp_path):
    shutil.copytree(fixture_dir, tmp_path / "ckpt")
    tensors = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    del tensors["freqs_cis"]
    save_file(tensors, str(tmp_path / "ckpt" / "model.safetensors"), metadata={"format": "pt"})
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "ckpt"))
    ids = torch.randint(0, 256, (1, 9))
    torch.testing.assert_close(_logits(loaded, ids), _logits(reference_model, ids), atol=1e-5, rtol=0)


@pytest.mark.parametrize("change", ["missing", "unexpected", "shape"])
def test_bad_weights_are_named(fixture_dir, tmp_path, change):
    shutil.copytree(fixture_dir, tmp_path / "ckpt")
    path = str(tmp_path / "ckpt" / "model.safetensors")
    tensors = load_file(path)
    if change == "missing":
        del tensors["transformer.core_block.2.mlp.fc.weight"]
        needle = "missing weights transformer.core_block.2.mlp.fc.weight"
    elif change == "unexpected":
        tensors["transformer.core_block.9.attn.proj.weight"] = torch.zeros(64, 64)
        needle = "unexpected weights transformer.core_block.9.attn.proj.weight"
    else:
        tensors["transformer.adapter.weight"] = torch.zeros(64, 64)
        needle = "transformer.adapter.weight"
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises((HuginnError, RuntimeError), match=needle.replace(".", r"\.")):
        AutoModelForCausalLM.from_pretrained(str(tmp_path / "ckpt"))
