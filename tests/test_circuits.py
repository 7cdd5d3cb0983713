"""Circuits (issue 17): DLA sums to the model's logit, ablation equals a hand-written hook, patching restores
exactly 1 and 0 at the ends, the same numbers through nnsight, head-role scores on a hand-built toy."""

from __future__ import annotations

import json

import pytest
import torch

from core.circuits import ablation as A
from core.circuits import dla as D
from core.circuits import graph as G
from core.circuits import head_roles as R
from core.circuits import patching as P
from core.circuits.components import forward_ids, layout, parse_heads, resolve_token
from core.cli import main
from core.models.capture import InputError, run_forward, tokenize_for_model

TEXT = "The Eiffel Tower is in the city of"
MODELS = ("embedded", "tiny-gpt2", "tiny-llama", "tiny-qwen2")
CLEAN, CORRUPT, TARGET, CONTRAST = P.PRESETS["Eiffel Tower / Colosseum"]


# ---------------------------------------------------------------- direct logit attribution


@pytest.mark.parametrize("source", MODELS)
@pytest.mark.parametrize("contrast", [None, " Rome"])
def test_dla_sums_to_the_models_logit(source, contrast, load):
    lm = load(source)
    a = D.direct_logit_attribution(lm, TEXT, target=" Paris" if contrast else None, contrast=contrast)
    lay = layout(lm)
    assert a.heads.shape == (lay.n_layers, lay.n_heads)
    cap = run_forward(lm, TEXT, attentions=False, hidden_states=False)
    t = a.target_id if contrast else int(cap.logits[-1].argmax())
    expected = cap.logits[-1, t] - (cap.logits[-1, resolve_token(lm, contrast)] if contrast else 0)
    assert a.target_id == t
    assert abs(a.logit - float(expected)) < 1e-5
    assert abs(a.total - a.logit) <= D.TOLERANCE * max(1.0, abs(a.logit))
    assert a.ok
    assert abs(float(a.cumulative()[-1]) - a.logit) <= 1e-4 * max(1.0, abs(a.logit))


def _frozen_readout(lm, x_last: torch.Tensor, v: torch.Tensor, t: int) -> float:
    """Written out independently: the target logit's share of v with the final norm's scale taken from x_last."""
    norm = lm.model.get_submodule(layout(lm).final_norm)
    g = norm.weight.detach().float()
    if isinstance(norm, torch.nn.LayerNorm):
        y = g * (v - v.mean()) / torch.sqrt(x_last.var(unbiased=False) + norm.eps)
    else:
        y = g * v / torch.sqrt(x_last.pow(2).mean() + norm.variance_epsilon)
    return float(lm.model.get_output_embeddings().weight[t].float() @ y)


@pytest.mark.parametrize("source", MODELS)
def test_each_head_equals_an_independent_hook(source, load):
    """Head (l, h): run the model with every other head's slice (and the bias) removed from one out_proj's output,
    read that output at the last position and push it through the frozen norm and the unembedding by hand."""
    lm = load(source)
    lay = layout(lm)
    a = D.direct_logit_attribution(lm, TEXT)
    cap = run_forward(lm, TEXT, attentions=False, hook_modules=(lay.final_norm,))
    x_last = cap.module_inputs[lay.final_norm][-1]
    for layer, head in [(0, 0), (lay.n_layers - 1, lay.n_heads - 1), (lay.n_layers // 2, 1)]:
        proj = lm.model.get_submodule(lay.out_proj[layer])
        seen = {}

        def hook(module, args):
            z = torch.zeros_like(args[0])
            z[..., lay.head_slice(head)] = args[0][..., lay.head_slice(head)]
            out = module.forward(z)
            seen["v"] = (out[0, -1] - (module.bias if module.bias is not None else 0)).float()

        h = proj.register_forward_pre_hook(hook)
        try:
            run_forward(lm, TEXT, attentions=False, hidden_states=False)
        finally:
            h.remove()
        by_hand = _frozen_readout(lm, x_last, seen["v"], a.target_id)
        assert abs(by_hand - float(a.heads[layer, head])) < 1e-4 * max(1.0, abs(by_hand)), (layer, head)


def test_dla_with_biases_gpt2():
    """GPT-2's LayerNorm and c_proj biases (zero at init) made non-zero: the bias terms keep the sum exact."""
    from core.models.loading import load_model

    lm = load_model("tiny-gpt2")  # a private copy: its weights are changed below
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in lm.model.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    a = D.direct_logit_attribution(lm, TEXT, contrast=" Rome")
    assert "final_norm.bias" in a.components and "L1.attn_bias" in a.components
    assert abs(a.components["final_norm.bias"]) > 1e-3
    assert a.relative_error <= D.TOLERANCE


def test_dla_bad_input(load):
    lm = load("tiny-llama")
    with pytest.raises(InputError, match="contrast token is the target"):
        D.direct_logit_attribution(lm, TEXT, target=" Paris", contrast=" Paris")
    with pytest.raises(InputError, match="outside"):
        D.direct_logit_attribution(lm, TEXT, position=99)
    with pytest.raises(InputError, match="empty"):
        D.direct_logit_attribution(lm, "  ")
    one = D.direct_logit_attribution(lm, "Hello")  # one token: embedding + heads attending to itself
    assert one.ok
    long = D.direct_logit_attribution(lm, "word " * 5000, max_tokens=256)
    assert long.ok and long.position == 255


# ---------------------------------------------------------------- ablation


@pytest.mark.parametrize("source", MODELS)
def test_zero_ablation_equals_a_hand_written_pre_hook(source, load):
    lm = load(source)
    lay = layout(lm)
    layer, head = lay.n_layers - 1, 1
    result = A.ablate(lm, TEXT, A.Ablation(heads=((layer, head),)))
    ours = A.run_ablated(lm, TEXT, A.Ablation(heads=((layer, head),)), 512).logits[-1]

    d = lay.head_dim

    def zero_head(_module, args):
        z = args[0].clone()
        z[:, :, head * d:(head + 1) * d] = 0.0
        return (z,)

    h = lm.model.get_submodule(lay.out_proj[layer]).register_forward_pre_hook(zero_head)
    try:
        theirs = run_forward(lm, TEXT, attentions=False, hidden_states=False).logits[-1]
    finally:
        h.remove()
    assert float((ours - theirs).abs().max()) <= 1e-5
    assert abs(result.logit_after - float(theirs[result.target_id])) <= 1e-5
    assert result.kl >= 0 and result.top_k_before[0]["id"] == result.target_id


def test_ablation_modes_and_every_head(load):
    lm = load("tiny-llama")  # o_proj has no bias: all heads zeroed == the attention layer zeroed
    lay = layout(lm)
    every = tuple((l, h) for l in range(lay.n_layers) for h in range(lay.n_heads))
    by_heads = A.ablate(lm, TEXT, A.Ablation(heads=every))
    by_layers = A.ablate(lm, TEXT, A.Ablation(attn_layers=tuple(range(lay.n_layers))))
    assert by_heads.all_heads and abs(by_heads.logit_after - by_layers.logit_after) < 1e-5
    zero = A.ablate(lm, TEXT, A.Ablation(heads=((1, 0),), mode="zero"))
    mean = A.ablate(lm, TEXT, A.Ablation(heads=((1, 0),), mode="mean"))
    assert zero.logit_before == mean.logit_before and zero.logit_after != mean.logit_after
    nothing = A.ablate(lm, TEXT, A.Ablation())
    assert nothing.kl < 1e-9 and nothing.logit_after == nothing.logit_before
    with pytest.raises(InputError, match="does not exist"):
        A.ablate(lm, TEXT, A.Ablation(heads=((5, 0),)))
    assert A.kl_divergence(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 1.0])) == 0.0


# ---------------------------------------------------------------- activation patching


@pytest.mark.parametrize("source", ["tiny-gpt2", "tiny-qwen2", "embedded"])
def test_patching_ends_restore_one_and_zero(source, load):
    lm = load(source)
    r = P.activation_patching(lm, CLEAN, CORRUPT, TARGET, CONTRAST, "resid")
    lay = layout(lm)
    assert r.restored.shape == (lay.n_layers + 1, len(r.tokens_clean))
    assert abs(float(r.restored[-1, -1]) - 1.0) < 1e-5  # the whole clean residual before the final norm
    # positions where both prompts have the same token, patched at the embeddings: nothing changes
    same = [i for i, (a, b) in enumerate(zip(r.tokens_clean, r.tokens_corrupt)) if a == b]
    assert same and float(r.restored[0, same].abs().max()) < 1e-5
    ids_clean, ids_corrupt = P.prompt_ids(lm, CLEAN, CORRUPT, 512)
    with P.patched(lm, [None]):  # patching nothing: the corrupted run
        logits, _ = forward_ids(lm, torch.tensor([ids_corrupt]))
    assert abs(float(P.logit_diff(logits, r.target_id, r.contrast_id)[0]) - r.corrupt_diff) < 1e-4


@pytest.mark.parametrize("what", P.WHAT)
def test_patching_batched_equals_one_by_one(what, load):
    lm = load("tiny-llama")
    batched = P.activation_patching(lm, CLEAN, CORRUPT, TARGET, CONTRAST, what, batch_size=32)
    single = P.activation_patching(lm, CLEAN, CORRUPT, TARGET, CONTRAST, what, batch_size=1)
    assert float((batched.restored - single.restored).abs().max()) < 1e-4
    shape = {"resid": (3, len(batched.tokens_clean)), "heads": (2, 4), "mlp": (2, 1)}[what]
    assert tuple(batched.restored.shape) == shape


def test_patching_bad_input(load):
    lm = load("tiny-llama")
    n1, n2 = len(tokenize_for_model(lm, "a b")[0]), len(tokenize_for_model(lm, "a b c")[0])
    with pytest.raises(InputError, match=f"{n1} tokens and the corrupted one {n2}"):
        P.activation_patching(lm, "a b", "a b c", " x", " y")
    with pytest.raises(InputError, match="same token"):
        P.activation_patching(lm, CLEAN, CORRUPT, " Paris", " Paris")
    with pytest.raises(InputError, match="nothing to"):
        P.activation_patching(lm, CLEAN, CLEAN, " Paris", " Rome")


# ---------------------------------------------------------------- the same numbers through nnsight


def test_nnsight_peer_ablation_and_patching(load):
    nnsight = pytest.importorskip("nnsight")
    lm = load("embedded")
    lay = layout(lm)
    peer = nnsight.NNsight(lm.model)
    ids = torch.tensor([tokenize_for_model(lm, TEXT)[0]])
    layer, head = 20, 3
    sl = lay.head_slice(head)
    with peer.trace(ids):
        o_proj = peer.model.layers[layer].self_attn.o_proj
        o_proj.input[:, :, sl] = 0.0
        theirs = peer.lm_head.output[0, -1].save()
    ours = A.run_ablated(lm, TEXT, A.Ablation(heads=((layer, head),)), 512).logits[-1]
    assert float((ours - theirs.float()).abs().max()) <= 1e-5

    clean, corrupt = (torch.tensor([x]) for x in P.prompt_ids(lm, CLEAN, CORRUPT, 512))
    with peer.trace(clean):
        z = peer.model.layers[layer].self_attn.o_proj.input[:, :, sl].save()
    with peer.trace(corrupt):
        peer.model.layers[layer].self_attn.o_proj.input[:, :, sl] = z
        theirs = peer.lm_head.output[0, -1].save()
    r = P.activation_patching(lm, CLEAN, CORRUPT, TARGET, CONTRAST, "heads")
    t, c = r.target_id, r.contrast_id
    restored = (float(theirs[t] - theirs[c]) - r.corrupt_diff) / (r.clean_diff - r.corrupt_diff)
    assert abs(restored - float(r.restored[layer, head])) <= 1e-5 * max(1.0, abs(r.clean_diff - r.corrupt_diff))


# ---------------------------------------------------------------- head roles


def _toy_attention(tokens: list[int], vocab: int, scale: float = 30.0) -> torch.Tensor:
    """A hand-built 2-layer attention-only transformer that performs induction; its patterns [2, 2, seq, seq].

    Residual = [token one-hot (vocab) | position one-hot (seq) | previous token one-hot (vocab)].
    L0 H0: previous-token head (query position i matches key position i - 1), its OV copies the key's token into
    the 'previous token' block.  L1 H0: induction head (query token matches the key's previous token).
    L0 H1 and L1 H1 score every key alike (uniform over the causal prefix)."""
    seq = len(tokens)
    tok = torch.nn.functional.one_hot(torch.tensor(tokens), vocab).float()
    pos = torch.eye(seq)
    x = torch.cat([tok, pos, torch.zeros(seq, vocab)], -1)  # [seq, d]
    mask = torch.triu(torch.ones(seq, seq, dtype=torch.bool), 1)

    def softmax(scores):
        return torch.softmax(scores.masked_fill(mask, float("-inf")), -1)

    shift = torch.diag(torch.ones(seq - 1), -1)  # W_Q of the position block: e_i -> e_(i-1)
    p = x[:, vocab:vocab + seq]
    prev = softmax(scale * (p @ shift) @ p.T)  # score[i, j] = scale * [j == i - 1]
    flat = softmax(torch.zeros(seq, seq))
    copied = prev @ tok  # OV: the key's token into the 'previous token' block...
    copied[0] = 0.0  # ...except at position 0, which has no previous token (it can only attend to itself)
    x = x + torch.cat([torch.zeros(seq, vocab + seq), copied], -1)
    induction = softmax(scale * (x[:, :vocab] @ x[:, vocab + seq:].T))  # token(i) == previous token(j)
    return torch.stack([torch.stack([prev, flat]), torch.stack([induction, flat])])


def test_role_scores_on_a_hand_built_induction_toy():
    vocab, n = 10, 7
    r = torch.randperm(vocab, generator=torch.Generator().manual_seed(0))[:n].tolist()
    attn = _toy_attention(r + r, vocab)
    induction = R.role_scores(attn, "induction", n)
    previous = R.role_scores(attn, "previous", n)
    duplicate = R.role_scores(attn, "duplicate", n)
    assert float(induction[1, 0]) > 0.99 and float(induction.flatten()[[0, 1, 3]].max()) < 0.3
    assert float(previous[0, 0]) > 0.99 and float(previous.flatten()[[1, 2, 3]].max()) < 0.5
    assert float(duplicate.max()) < 0.3  # no head here looks at the earlier occurrence itself
    # a BOS in front shifts every index by one
    shifted = _toy_attention([vocab] + r + r, vocab + 1)  # a BOS id no random token has
    assert float(R.role_scores(shifted, "induction", n, offset=1)[1, 0]) > 0.99


def test_head_roles_on_the_embedded_model(load):
    lm = load("embedded")
    roles = R.head_roles(lm, "induction", length=25, seed=0)
    assert roles.scores.shape == (30, 9) and len(roles.ids) == 50
    assert roles.ids[:25] == roles.ids[25:]
    layer, head, score = roles.top(1)[0]
    assert score > 0.5  # a trained model has induction heads; a random one (below) does not
    assert float(R.head_roles(load("tiny-llama"), "induction", 25).scores.max()) < 0.3
    with pytest.raises(ValueError, match="context"):
        R.head_roles(load("tiny-llama"), "induction", 200)


# ---------------------------------------------------------------- contribution graph


def test_proximity_shares_known_math():
    y = torch.tensor([[1.0, 2.0], [0.0, 0.0]])  # one term is everything, the other nothing
    assert torch.allclose(G.proximity_shares(y), torch.tensor([1.0, 0.0]))
    opposite = torch.tensor([[3.0, 0.0], [-1.0, 0.0]])  # y = [2, 0]: the term pulling against it gets no share
    assert torch.allclose(G.proximity_shares(opposite), torch.tensor([1.0, 0.0]))
    halves = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    assert torch.allclose(G.proximity_shares(halves), torch.tensor([0.5, 0.5]))


@pytest.mark.parametrize("source", MODELS)
def test_graph_splits_attention_exactly(source, load):
    """sum_j A W_O v_j (+ b_O) rebuilds the model's attention output: GQA value sharing and Conv1D handled."""
    g = G.contribution_graph(load(source), TEXT)
    assert g.reconstruction_error < 1e-4
    seq = len(g.tokens)
    assert torch.allclose(g.attn_share.sum(-1), torch.ones(g.n_layers, seq), atol=1e-5)
    assert float(torch.triu(g.attn_share, 1).abs().max()) == 0.0  # causal: no route from a later token
    edges = g.edges(0.0)
    assert any(l == g.n_layers - 1 and i == seq - 1 for l, _, i, _ in edges)
    assert len(g.edges(0.9)) <= len(g.edges(0.1)) <= len(edges)


# ---------------------------------------------------------------- command line


def test_cli_commands(capsys, load):
    lm = load("tiny-gpt2")
    lay = layout(lm)
    assert main(["dla", "--model", "tiny-gpt2", "--text", TEXT, "--contrast", " Rome"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"target_id", "logit", "components", "sum"}
    heads = [k for k in out["components"] if ".H" in k]
    assert len(heads) == lay.n_layers * lay.n_heads and "embed" in out["components"] and "L1.mlp" in out["components"]
    assert abs(out["sum"] - out["logit"]) <= 1e-4 * max(1, abs(out["logit"]))

    assert main(["ablate", "--model", "tiny-llama", "--text", TEXT, "--heads", "0.1,1.3", "--mode", "mean"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"target_id", "target_logit_before", "target_logit_after", "kl", "top_k_before", "top_k_after"}
    assert set(out["top_k_after"][0]) == {"id", "token", "prob"}

    assert main(["patch", "--model", "tiny-qwen2", "--clean", CLEAN, "--corrupt", CORRUPT, "--target", TARGET,
                 "--contrast", CONTRAST, "--what", "mlp"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"what", "clean_diff", "corrupt_diff", "restored"} and len(out["restored"]) == 2

    assert main(["heads", "--model", "tiny-llama", "--role", "previous", "--length", "10"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["role"] == "previous" and len(out["scores"]) == 2 and len(out["scores"][0]) == 4

    assert main(["patch", "--model", "tiny-qwen2", "--clean", "a b", "--corrupt", "a b c", "--target", "1",
                 "--contrast", "2"]) == 2
    assert "same number of tokens" in capsys.readouterr().err
    assert main(["ablate", "--model", "tiny-llama", "--text", TEXT, "--heads", "x"]) == 2
    assert parse_heads("3.1, 5.0") == [(3, 1), (5, 0)]


# ---------------------------------------------------------------- a trained lab run


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_every_part_on_a_trained_lab_run(style, tmp_path):
    """A Pre-training run (character tokenizer) exported to its stock class and opened by the lab's loader:
    DLA sums to its logit, all heads off equals all attention layers off, patching ends restore 1,
    head-role scores and the contribution graph have its shape."""
    from dataclasses import replace

    from core.models.loading import ModelSpec, load_model
    from core.train.config import TrainConfig
    from core.train.export import export_run
    from core.train.pretrain import Trainer, make_accelerator, prepare_data

    switches = {"norm": "rmsnorm", "position": "rope", "mlp": "swiglu"} if style == "llama" else {}
    config = replace(TrainConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=8, max_iters=30,
                                 max_chars=30_000, sample_interval=0), **switches)
    trainer = Trainer(config, prepare_data(config), make_accelerator())
    for _ in range(30):
        trainer.train_step()
    export_run(trainer.raw, trainer.data, tmp_path / "model")
    lm = load_model(ModelSpec(str(tmp_path / "model")))
    text = "First Citizen:\nBefore we proceed"
    a = D.direct_logit_attribution(lm, text)
    assert a.heads.shape == (2, 2) and a.ok
    every = tuple((l, h) for l in range(2) for h in range(2))
    by_heads, by_layers = (A.ablate(lm, text, A.Ablation(heads=every)),
                           A.ablate(lm, text, A.Ablation(attn_layers=(0, 1))))
    if style == "llama":  # no o_proj bias: every head off is every attention layer off
        assert abs(by_heads.logit_after - by_layers.logit_after) < 1e-5
    assert by_heads.kl > 0
    r = P.activation_patching(lm, "First Citizen:", "Second Citizen", ":", "\n", "resid")
    assert abs(float(r.restored[-1, -1]) - 1.0) < 1e-5
    assert R.head_roles(lm, "induction", length=12, seed=0).scores.shape == (2, 2)
    assert G.contribution_graph(lm, text).reconstruction_error < 1e-4
