"""benchmarks/gpu_sweep.py runs on CPU with a tiny configuration and projects positive sweep times."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_sweep.py"


def test_gpu_sweep_runs_on_cpu_with_a_tiny_configuration(capsys) -> None:
    spec = importlib.util.spec_from_file_location("gpu_sweep", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.main(
        [
            "--tiny",
            "--device",
            "cpu",
            "--dtype",
            "float32",
            "--prompts",
            "2",
            "--prompt-tokens",
            "12",
            "--new-tokens",
            "3",
            "--batch",
            "2",
            "--mc-tokens",
            "8",
        ]
    )
    printed = capsys.readouterr().out
    assert "projected GSM8K 8-shot CoT layer sweep" in printed and "projected MMLU 3-protocol" in printed
    for key in ("HF generate (eager)", "depthprobe hook-free (eager)", "depthprobe hook path", "batched conditions"):
        assert out[key] > 0
    assert out["layer_sweep_step_s"] > 0 and out["gsm8k_projected_s"] > 0 and out["mmlu_projected_s"] > 0
    assert module.LLAMA_31_8B["num_hidden_layers"] == 32 and module.LLAMA_31_8B["num_key_value_heads"] == 8
