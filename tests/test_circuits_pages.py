"""AppTest for the Circuits pages: they run on each family, keep their numbers tied to core, and answer bad input
with a message."""

from __future__ import annotations

import pytest
from pagetest import assert_clean, run_page

from core.circuits import dla as D
from core.circuits import head_roles as R

DLA = "pages/20_Logit_attribution.py"
ABL = "pages/21_Ablation_and_patching.py"
GRAPH = "pages/22_Contribution_graph.py"
ROLES = "pages/23_Head_roles.py"
MODELS = ("tiny-gpt2", "tiny-llama", "tiny-qwen2")


def _metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


@pytest.mark.parametrize("model", MODELS)
def test_dla_page_sum_check(model, load):
    at = run_page(DLA, model)
    assert_clean(at)
    m = _metrics(at)
    assert float(m["Relative error"]) <= D.TOLERANCE
    a = D.direct_logit_attribution(load(model), "The Eiffel Tower is in the city of", max_tokens=256)
    assert m["The model's value"] == f"{a.logit:.4f}"
    assert len(at.get("vega_lite_chart")) == 3  # heads, MLPs, cumulative
    top = next(x.value for x in at.markdown if x.value.startswith("1. "))
    assert "Attention?" in top or "`embed`" in top or "mlp" in top
    assert any(c.value.startswith("python -m core dla") for c in at.code)


def test_dla_page_bad_input():
    at = run_page(DLA, "tiny-llama")
    at.text_input(key="dla_target").set_value(" Paris").run()
    at.text_input(key="dla_contrast").set_value(" Paris").run()
    assert_clean(at)
    assert any("contrast token is the target" in e.value for e in at.info)
    at.text_input(key="dla_contrast").set_value("").run()
    at.text_area(key="dla_text").set_value("   ").run()
    assert_clean(at)
    assert any("empty" in e.value for e in at.info)
    at.text_area(key="dla_text").set_value("Hi").run()
    assert_clean(at)
    assert float(_metrics(at)["Relative error"]) <= D.TOLERANCE
    at.text_area(key="dla_text").set_value("word " * 5000).run()
    assert_clean(at)
    assert any("only the first 256" in e.value for e in at.warning)
    assert at.selectbox(key="dla_pos").value == -1  # the last of the 256 tokens used
    at.selectbox(key="dla_pos").set_value(3).run()
    assert_clean(at)
    assert any("--position 3" in c.value for c in at.code)


def test_ablation_page_and_every_head():
    at = run_page(ABL, "tiny-qwen2")
    assert_clean(at)
    assert any("Choose heads" in e.value for e in at.info)
    at.multiselect(key="abl_heads").set_value(["L1.H2"]).run()
    assert_clean(at)
    assert float(_metrics(at)["KL(before ‖ after)"].split()[0]) >= 0
    at.toggle(key="abl_all").set_value(True).run()
    assert_clean(at)
    assert any("Every attention head is switched off" in e.value for e in at.warning)


def test_patching_page_inline_and_bad_input():
    at = run_page(ABL, "tiny-llama")
    at.radio(key="pt_what").set_value("heads").run()
    at.button(key="pt_run").click().run()
    assert_clean(at)
    m = _metrics(at)
    assert m["patched runs"] == str(2 * 4)
    at.text_input(key="pt_corrupt").set_value("Rome").run()
    assert_clean(at)
    assert any("same number of tokens" in e.value for e in at.info)
    at.text_input(key="pt_corrupt").set_value("The Colosseum is in the city of").run()
    at.text_input(key="pt_contrast").set_value(" Paris").run()
    at.button(key="pt_run").click().run()
    assert_clean(at)
    assert any("same token" in e.value for e in at.info)
    at.selectbox(key="ap_preset").set_value("Names (IOI)").run()
    assert at.text_input(key="pt_target").value == " Mary"


def test_patching_page_job_on_the_embedded_model():
    """Big enough to go to a background job: the button starts one and puts its id in the URL."""
    at = run_page(ABL, "embedded", timeout=300)
    at.radio(key="pt_what").set_value("mlp").run()
    at.button(key="pt_run").click().run()
    assert_clean(at)
    job_id = at.query_params.get("patch")
    assert job_id
    from core.jobs import REGISTRY

    snap = REGISTRY.get(job_id[0] if isinstance(job_id, list) else job_id).wait(timeout=240)
    assert snap.status == "finished" and snap.result.restored.shape == (30, 1)
    at.run()
    assert_clean(at)
    assert _metrics(at)["patched runs"] == "30"


@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-qwen2"])
def test_graph_page(model):
    at = run_page(GRAPH, model)
    assert_clean(at)
    assert len(at.get("vega_lite_chart")) == 1
    at.slider(key="cg_thr").set_value(0.5).run()
    assert_clean(at)
    at.text_area(key="cg_text").set_value("").run()
    assert any("empty" in e.value for e in at.info)


def test_head_roles_page(load):
    at = run_page(ROLES, "tiny-llama")
    assert_clean(at)
    assert len(at.get("vega_lite_chart")) == 2
    roles = R.head_roles(load("tiny-llama"), "induction", R.DEFAULT_LENGTH, 0)
    l, h, s = roles.top(1)[0]
    top = next(x.value for x in at.markdown if x.value.startswith("1. "))
    assert f"L{l}.H{h}" in top and f"{s:.3f}" in top and "attn_layer=" in top
    at.radio(key="hr_role").set_value("duplicate").run()
    at.number_input(key="hr_len").set_value(127).run()  # the longest that fits tiny-llama's 256 positions
    assert_clean(at)
    assert any(c.value.startswith("python -m core heads") and "--length 127" in c.value for c in at.code)


def test_pages_in_the_circuits_section():
    from ui.navigation import PAGES

    sections = list(dict.fromkeys(p.section for p in PAGES))
    assert sections.index("Circuits") == sections.index("Attention & weights") + 1
    assert {p.path for p in PAGES if p.section == "Circuits"} == {DLA, ABL, GRAPH, ROLES, "pages/24_Encoder_attention.py"}
