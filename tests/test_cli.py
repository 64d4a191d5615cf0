"""The `auto-hookpoint` command: the README's main job."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hf_models import minilm_path

from auto_hookpoint.cli import main


def test_default_run_prints_the_site_table_and_a_demonstration(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "37 hook sites, 37 fired" in out
    assert "model.layers.0.mlp.hook_point" in out and "LlamaMLP" in out
    assert "model.norm.weight.hook_point" in out and "parameter" in out
    assert "cache['model.layers.1.hook_point']: shape [1, " in out
    assert "output changed by mean |d|" in out


def test_local_pretrained_folder(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([minilm_path(), "--text", "A man is eating food."]) == 0
    out = capsys.readouterr().out
    assert "BertModel from" in out and "encoder.layer.5.output.LayerNorm.hook_point" in out
    assert "(not called)" in out  # attention dropout modules unused by SDPA, said so


def test_console_script_runs_offline() -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "auto_hookpoint.cli"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "hook sites" in done.stdout


def test_split_command_finishes_in_a_second_process(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["split", "--layer", "0"]) == 0
    out = capsys.readouterr().out
    assert "split after 'model.layers.0.hook_point'" in out
    assert "bit-identical to the un-split forward" in out


def test_split_command_on_a_local_model_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from auto_hookpoint.demo import demo_model, demo_tokenizer

    demo_model(num_layers=3).save_pretrained(tmp_path)
    demo_tokenizer().save_pretrained(tmp_path)
    assert main(["split", str(tmp_path), "--layer", "1"]) == 0
    out = capsys.readouterr().out
    assert f"LlamaForCausalLM from {tmp_path}" in out and "bit-identical" in out
    assert main([str(tmp_path)]) == 0  # and the sites table on the same folder
    assert "model.layers.2.mlp.hook_point" in capsys.readouterr().out


@pytest.mark.sae_lens
def test_train_sae_command_trains_and_saves_in_sae_lens_format(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sae"
    assert main(["train-sae", "--steps", "150", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    variance = float(printed.split("explained variance ")[1].split(",")[0])
    assert variance > 0.5


def test_observer_commands_write_their_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["trace", "--out", str(tmp_path / "t.json")]) == 0
    assert "traceEvents" in (tmp_path / "t.json").read_text()
    assert main(["memory", "--out", str(tmp_path / "m.png")]) == 0
    assert (tmp_path / "m.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["nonfinite", "--poison", "model.layers.0.mlp.up_proj"]) == 0
    out = capsys.readouterr().out
    assert "module calls over generate" in out and "peak resident" in out
    assert "first forward producer: model.layers.0.mlp.up_proj (Linear, call 1)" in out
