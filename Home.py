"""LLM Anatomy Lab: entry point. Builds the navigation; the Home page itself is `home()` below."""

from __future__ import annotations

import streamlit as st

from ui.navigation import available_pages

st.set_page_config(page_title="LLM Anatomy Lab", page_icon="🧠", layout="wide")


def home() -> None:
    from core.inspect.architecture import detect_family
    from core.models.loading import LoadedModel
    from core.units import format_bytes
    from ui.explain import how_computed
    from ui.models import model_picker
    from ui.state import share_link

    st.title("🧠 LLM Anatomy Lab")
    st.markdown(
        "Open up a real language model and watch it work: its architecture, its parameters, its "
        "attention, its weights, and a forward pass from your text to next-token probabilities; then train "
        "one, fine-tune and align it, decode with it, and measure the hardware it runs on. "
        "Every number here is computed from a real model, dataset or measurement — nothing is simulated.\n\n"
        "- **Students and teachers**: move a slider in class and the model answers live.\n"
        "- **Developers**: see what the model you call through an API is made of.\n"
        "- **Researchers**: inspect hidden states, heads and weights of any Hugging Face causal LM.")

    lm = model_picker(causal=False)  # the card describes any model; the other pages say what they need
    card = lm.card()
    family = detect_family(lm.config)
    st.subheader(f"Loaded model: {card['name']}")
    st.caption(f"{card['architecture']} · {family.kind}, {family.name}: {family.description}")
    c = st.columns(4)
    c[0].metric("Parameters", f"{card['parameters'] / 1e6:,.1f} M",
                help="Tied input/output embeddings are counted once." if card["tied_embeddings"] else None)
    c[1].metric("Layers", card["layers"])
    c[2].metric("Hidden size", card["hidden_size"])
    c[3].metric("Heads / KV heads", f"{card['heads']} / {card['kv_heads']}")
    c = st.columns(4)
    c[0].metric("Vocabulary", f"{card['vocab_size']:,}")
    c[1].metric("Context length", f"{card['context_length']:,}" if card["context_length"] else "—")
    c[2].metric("Memory", format_bytes(card["memory_bytes"]))
    c[3].metric("Load time", f"{card['load_seconds']:.1f} s")
    st.caption(f"precision **{lm.precision}** · device **{card['device']}** · quantization "
               f"**{card['quantization']}** · tied embeddings **{card['tied_embeddings']}** · "
               f"loaded from **{card['loaded_from']}** · Hub id `{card['hub_id']}`")

    if lm.kind != "causal":  # every other page needs a causal LM and says so; point to the one that fits
        st.info(f"This is an {lm.kind} model: the **Encoder attention** page shows its heads; the other pages "
                "need a causal language model.", icon="🔀")
    share_link()

    pages = available_pages()
    if pages:
        st.subheader("Explore")
        sections: dict[str, list] = {}
        for p in pages:
            sections.setdefault(p.section, []).append(p)
        per_row = 3  # five sections side by side cut page titles ("RLHF and preferenc…") at laptop widths
        groups = list(sections.items())
        for start in range(0, len(groups), per_row):
            for col, (section, items) in zip(st.columns(per_row), groups[start:start + per_row]):
                with col:
                    st.markdown(f"**{section}**")
                    for p in items:
                        st.page_link(p.path, label=p.title, icon=p.icon)
                        st.caption(p.blurb)

    how_computed(LoadedModel.card, command=f"python -m core info {lm.spec.cli()}")


# Every page runs through here: the browser's owner cookie (its jobs survive a reload; a second tab is the
# same person), and once per server process the start-up sweep and the list of interrupted runs.
from ui.jobs import remember_owner, startup  # noqa: E402

startup()
remember_owner()

sections: dict[str, list] = {"": [st.Page(home, title="Home", icon="🏠", default=True)]}
for info in available_pages():
    sections.setdefault(info.section, []).append(st.Page(info.path, title=info.title, icon=info.icon,
                                                          url_path=info.url_path))
st.navigation(sections).run()
