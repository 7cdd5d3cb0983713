"""The formulas and one-line explanations each kind of block carries (LaTeX)."""

from __future__ import annotations


NORM_FORMULA = {
    "LayerNorm": r"y = \frac{x - \mu}{\sqrt{\sigma^2 + \varepsilon}} \odot \gamma + \beta",
    "RMSNorm": r"y = \frac{x}{\sqrt{\tfrac{1}{d}\sum_i x_i^2 + \varepsilon}} \odot \gamma",
}
NORM_TEXT = {
    "pre": "{kind} before the sublayer (pre-norm): the sublayer sees a normalised copy, the residual stream is left untouched",
    "post": "{kind} after the residual add (post-norm, as in the original Transformer and BERT)",
    "sandwich": "{kind} on the sublayer's output before it is added to the residual stream",
}
PROJ_FORMULA = {
    "q": r"Q = x\,W_Q{b},\quad W_Q \in \mathbb{{R}}^{{d \times h\,d_h}}",
    "k": r"K = x\,W_K{b},\quad W_K \in \mathbb{{R}}^{{d \times h_{{kv}}\,d_h}}",
    "v": r"V = x\,W_V{b},\quad W_V \in \mathbb{{R}}^{{d \times h_{{kv}}\,d_h}}",
    "o": r"y = [\,\mathrm{{head}}_1;\dots;\mathrm{{head}}_h\,]\,W_O{b}",
}
ATTN_FORMULA = r"\mathrm{head}_i = \mathrm{softmax}\!\left(\frac{Q_i K_{g(i)}^{\top}}{\sqrt{d_h}} + M\right) V_{g(i)}"
ACT_FORMULA = {
    "GELU": r"a = u\,\Phi(u)",
    "GELU (tanh)": r"a = \tfrac{1}{2}u\left(1 + \tanh\!\left[\sqrt{2/\pi}\,(u + 0.044715\,u^3)\right]\right)",
    "ReLU": r"a = \max(0, u)",
    "SiLU": r"a = u\,\sigma(u)",
}
