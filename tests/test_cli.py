"""`python -m core` in a real subprocess, as a teacher's script would call it."""

import json
import subprocess
import sys

from core.cli import main
from core.data import reference_configs
from tests_paths import ROOT


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_params_from_config_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(reference_configs()["gpt2"]))
    out = run_cli("params", "--config", str(path))
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["total"] == 124_439_808
    assert report["tied_embeddings"] is True
    assert len(report["per_layer"]) == 12
    assert {"embeddings", "attention_q", "mlp", "norms"} <= set(report["by_component"])


def test_info_prints_the_card():
    out = run_cli("info", "--model", "tiny-qwen2")
    assert out.returncode == 0, out.stderr
    card = json.loads(out.stdout)
    assert card["architecture"] == "Qwen2ForCausalLM"
    assert (card["heads"], card["kv_heads"], card["tied_embeddings"]) == (4, 1, False)


def test_bad_input_exits_2_with_a_message(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["params", "--config", str(bad)]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main(["info", "--model", "no such id!"]) == 2
    assert "not a valid" in capsys.readouterr().err
