"""Issue 20, decimal number boxes: Streamlit's box with a min and a max turned red on -5, kept showing it, and the
page went on computing with the old value (the reason only on hover). `ui.inputs.decimal_number` takes what is
typed (3e-4, -5), states its range, and says on the page what is wrong while the work behind it waits. The same
for the whole-number boxes of Pre-training and Attention by hand (whose "1e1" was read as 1)."""

from __future__ import annotations

import pytest

from pagetest import assert_clean, run_page


def _box_app():
    import streamlit as st

    from ui.inputs import decimal_number

    value = decimal_number("Learning rate", 1e-3, 0.0, 1.0, "lr", help="AdamW's step size.")
    st.write(f"value={value!r}")


@pytest.mark.parametrize("typed, shown", [(3e-4, "value=0.0003"), (1.0, "value=1.0"), (0.0, "value=0.0"),
                                          (-5.0, "got -5"), (2.5, "got 2.5"), (1e30, "got 1e+30")])
def test_decimal_number_reads_what_is_typed_and_states_its_range(typed, shown):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_function(_box_app, default_timeout=120).run()
    box = at.number_input(key="lr")
    assert box.min is None and box.max is None  # no range in the browser: it would keep -5 and hand on the old value
    assert "Allowed: from 0 to 1." in box.help and box.help.startswith("AdamW's step size.")
    box.set_value(typed).run()
    assert_clean(at)
    written = " ".join(m.value for m in at.markdown)
    if shown.startswith("value="):
        assert shown in written and not at.error
    else:
        assert "value=None" in written  # what needs it waits
        assert [e.value for e in at.error] == [
            f"Learning rate: type a number from 0 to 1 ({shown}); what needs it waits until then."]


def test_decimal_number_takes_an_int_from_a_link_or_a_test():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_function(_box_app, default_timeout=120)
    at.session_state["lr"] = 0  # an int where the box holds floats: Streamlit would refuse the type
    at.run()
    assert_clean(at)
    assert "value=0.0" in " ".join(m.value for m in at.markdown)


def test_finetune_decimal_boxes():
    at = run_page("pages/11_Fine_tuning.py", "tiny-llama")
    assert_clean(at)
    at.number_input(key="ft_lr_lora").set_value(3e-4).run()
    at.number_input(key="ft_alpha").set_value(1e2).run()
    assert_clean(at)
    command = " ".join(c.value for c in at.code)
    assert "--lr 0.0003" in command and "--alpha 100" in command
    at.number_input(key="ft_dropout").set_value(-5.0).run()
    assert_clean(at)
    assert any("Dropout: type a number from 0 to 0.9 (got -5)" in e.value for e in at.error)
    assert not any(b.key == "ft_start" for b in at.button)  # nothing starts with the old value


def test_pretraining_number_boxes():
    at = run_page("pages/10_Pretraining.py", "tiny-llama")
    assert_clean(at)
    assert not at.button(key="pt_start").disabled
    at.number_input(key="pt_lr").set_value(3e-4).run()
    assert_clean(at)
    assert not at.error and not at.button(key="pt_start").disabled
    at.number_input(key="pt_dropout").set_value(-5.0).run()
    assert any("Dropout: type a number from 0 to 0.9 (got -5)" in e.value for e in at.error)
    assert at.button(key="pt_start").disabled
    at.number_input(key="pt_dropout").set_value(0.1).run()
    at.number_input(key="pt_iters").set_value(2.5).run()
    assert [e.value for e in at.error] == [
        "Steps: type a whole number from 1 to 100,000 (got 2.5); what needs it waits until then."]
    assert at.button(key="pt_start").disabled


def test_scaling_laws_boxes_refuse_a_negative_budget_on_the_page():
    at = run_page("pages/17_Scaling_laws.py", "tiny-llama")
    assert at.metric and any("Chinchilla-predicted loss" in m.value for m in at.markdown)
    at.number_input(key="sc_budget").set_value(-5.0).run()
    assert_clean(at)
    assert any("Training budget C (FLOPs): type a number of at least 0 (got -5)" in e.value for e in at.error)
    assert not at.metric  # no allocation from the old budget
    at.number_input(key="sc_d").set_value(-1.0).run()
    assert_clean(at)
    assert any("Training tokens D: type a number of at least 0 (got -1)" in e.value for e in at.error)
    assert not any("Chinchilla-predicted loss" in m.value for m in at.markdown)


def test_gpus_training_tokens_box():
    at = run_page("pages/15_GPUs.py", "tiny-llama")
    assert any("6ND = " in m.value for m in at.markdown)
    at.number_input(key="hw_tokens").set_value(-5.0).run()
    assert_clean(at)
    assert any("Training tokens D: type a number of at least 0 (got -5)" in e.value for e in at.error)
    assert not any("6ND = " in m.value for m in at.markdown)


def test_ppo_baseline_box():
    at = run_page("pages/12_RLHF.py", "tiny-llama", rlhf_step="3 · PPO")
    assert not at.button(key="rlhf_ppo_go").disabled
    at.number_input(key="rlhf_ppo_baseline").set_value(-9.0).run()
    assert_clean(at)
    assert any("Baseline V: type a number from -5 to 5 (got -9)" in e.value for e in at.error)
    assert at.button(key="rlhf_ppo_go").disabled


def test_attention_by_hand_layer_box_reads_1e1_as_ten():
    """The real head's layer and head boxes: "1e1" is 10 (Streamlit's integer box read it as 1 and showed layer 1
    without a word); tiny-qwen2 has 2 layers, so 10 is refused on the page and nothing is computed."""
    at = run_page("pages/19_Attention_by_hand.py", "tiny-qwen2", abh_tab="4 · A real head")
    assert_clean(at)
    at.number_input(key="abh_layer").set_value(1e1).run()
    assert_clean(at)
    assert any("Layer: type a whole number from 0 to 1 (got 10)" in e.value for e in at.error)
    assert not any(m.value.startswith("Tokens:") for m in at.markdown)
    at.number_input(key="abh_layer").set_value(1.0).run()
    assert not at.error and any("layer 1, head 0" in m.value for m in at.markdown)
    assert "--layer 1 --head 0" in " ".join(c.value for c in at.code)
