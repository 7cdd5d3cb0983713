from pagetest import assert_clean, run_page


def test_home_runs_on_tiny_model():
    at = run_page("Home.py", "tiny-gpt2")
    assert_clean(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Layers"] == "2"
    assert metrics["Heads / KV heads"] == "4 / 4"
