"""Circuits: which parts of the model made a prediction.

  components   where each head's and MLP's output enters the residual stream (module names, head slices)
  dla          direct logit attribution: every head's and MLP's share of one logit, the final norm frozen
  ablation     switch heads, attention layers or MLPs off (zero or mean) and compare the predictions
  patching     activation patching: a corrupted run with clean activations, batched
  head_roles   induction, previous-token and duplicate-token scores for every head
  graph        a contribution graph over layers x positions (Ferrando & Voita 2024)
  encoder_attention   encoder (BERT style) and encoder-decoder (T5 style) self- and cross-attention

Everything runs the real model with hooks on its own modules (the layouts `core.inspect.anatomy` knows:
GPT-2 style and Llama style, grouped-query attention included) and is checked against its own outputs.
"""
