"""Model loading: aliases, defaults, the unprocessed bridge equals Hugging Face, clear errors offline."""

from pathlib import Path

import pytest
import torch
import transformers
from packaging.version import Version

import depthprobe as dp
from depthprobe.models import MODEL_ALIASES, ModelNotFoundError, resolve_model

from . import surgery


class TestAliases:
    def test_the_studys_models(self) -> None:
        models = dp.list_models()
        assert models["llama-3.1-8b"] == "meta-llama/Llama-3.1-8B"
        assert models["qwen3-8b"] == "Qwen/Qwen3-8B"
        assert models["llama-1-7b"] == "huggyllama/llama-7b"
        assert models["r1-distill-llama-8b"] == "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"
        assert set(MODEL_ALIASES) <= set(models)

    def test_cli_lists_them(self, capsys: pytest.CaptureFixture[str]) -> None:
        from depthprobe.__main__ import main

        assert main(["models"]) == 0
        out = capsys.readouterr().out
        for alias, hub_id in MODEL_ALIASES.items():
            assert f"{alias}" in out and hub_id in out


class TestLoad:
    def test_cpu_defaults(self, tiny_llama_dir: Path) -> None:
        model = dp.load_model(tiny_llama_dir)
        assert next(model.parameters()).dtype == torch.float32
        assert not model.training
        assert not any(p.requires_grad for p in model.parameters())

    def test_dtype_by_name(self, tiny_llama_dir: Path) -> None:
        model = dp.load_model(tiny_llama_dir, dtype="bfloat16")
        assert next(model.parameters()).dtype == torch.bfloat16

    def test_logits_equal_hugging_face_exactly(self, model_dir: Path) -> None:
        """No weight processing: the bridge's logits are the checkpoint's, bit for bit."""
        model = dp.load_model(model_dir)
        ids = model.tokenizer(["Once upon a time, there was"], return_tensors="pt").input_ids
        with torch.no_grad():
            assert torch.equal(model(ids), surgery.hf_copy(model_dir)(ids).logits)

    def test_dims(self, stories_dir: Path) -> None:
        dims = dp.model_dims(dp.load_model(stories_dir))
        assert (dims.n_layers, dims.n_heads, dims.n_kv_heads, dims.d_head, dims.group_size) == (5, 8, 4, 8, 2)


class TestKVCacheShim:
    def test_installed_on_transformers_that_renamed_the_cache_argument(self) -> None:
        from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

        dp.models.install_kv_cache_shim()
        shimmed = getattr(AttentionBridge._update_kv_cache, "_depthprobe_cache_kwarg_shim", False)
        assert shimmed
        assert Version(transformers.__version__) < Version("5.25"), "re-verify the shim on newer transformers"


class TestErrors:
    def test_uncached_hub_id_offline(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        with pytest.raises(ModelNotFoundError) as err:
            dp.load_model("depthprobe-tests/no-such-model")
        message = str(err.value)
        assert "\n" not in message
        assert "'depthprobe-tests/no-such-model' is not in the local Hugging Face cache" in message
        assert "pass a local directory" in message

    def test_alias_offline_names_the_hub_id(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        with pytest.raises(ModelNotFoundError, match="'meta-llama/Llama-3.1-8B' is not in the local"):
            resolve_model("llama-3.1-8b")

    def test_missing_directory(self, tmp_path: Path) -> None:
        with pytest.raises(ModelNotFoundError, match="does not exist"):
            dp.load_model(tmp_path / "nowhere")

    def test_directory_without_config(self, tmp_path: Path) -> None:
        with pytest.raises(ModelNotFoundError, match="holds no config.json"):
            dp.load_model(tmp_path)

    def test_unknown_dtype(self, tiny_llama_dir: Path) -> None:
        with pytest.raises(ValueError, match="unknown dtype 'float8'; valid: float32"):
            dp.load_model(tiny_llama_dir, dtype="float8")
