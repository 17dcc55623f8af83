"""``evaluate(..., chat=True, enable_thinking=...)``: generation tasks through the chat template."""

from pathlib import Path

import pytest

import depthprobe as dp
from depthprobe.evaluation.chat import apply_chat_template, generate_chat

from .test_generation import QWEN_LIKE_TEMPLATE


@pytest.fixture()
def chat_model(tiny_qwen3_dir: Path):
    model = dp.load_model(tiny_qwen3_dir)
    model.tokenizer.chat_template = QWEN_LIKE_TEMPLATE
    return model


class TestChatEvaluation:
    @pytest.mark.parametrize("thinking", [False, True])
    def test_equals_generate_chat_on_the_task_prompts(self, chat_model, thinking: bool) -> None:
        result = dp.evaluate(
            chat_model,
            "organism_reasoning",
            limit=3,
            num_fewshot=1,
            chat=True,
            enable_thinking=thinking,
            max_gen_toks=12,
            batch_size=2,
        )
        prompts = [i.prompt for i in dp.get_task("organism_reasoning").instances(limit=3, num_fewshot=1)]
        expected = generate_chat(
            chat_model,
            prompts,
            until=["Q:", "</s>", "<|im_end|>"],
            enable_thinking=thinking,
            max_gen_toks=12,
            batch_size=2,
        )
        assert list(result.samples["generation"]) == [g.text for g in expected]
        assert result.config["enable_thinking"] is thinking
        rendered = apply_chat_template(chat_model.tokenizer, prompts[0], enable_thinking=thinking)
        assert rendered.endswith("<|im_start|>assistant\n" + ("" if thinking else "<think>\n\n</think>\n\n"))

    def test_chat_on_a_loglikelihood_task_is_refused(self, chat_model) -> None:
        with pytest.raises(ValueError, match="apply to generation tasks only"):
            dp.evaluate(chat_model, "organism_knowledge", limit=2, chat=True)

    def test_thinking_without_chat_is_refused(self, chat_model) -> None:
        with pytest.raises(ValueError, match="enable_thinking needs chat=True"):
            dp.evaluate(chat_model, "organism_reasoning", limit=2, enable_thinking=True)
