"""AWQ (converters/gguf/awq.py): scales folded into the model leave its float function unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

CALIB = Path(__file__).read_text() * 3


@pytest.mark.parametrize("arch", ["llama", pytest.param("qwen2", marks=pytest.mark.slow),
                                  pytest.param("phi3", marks=pytest.mark.slow)])
def test_folded_float_model_equals_original(tiny_models, tmp_path, arch):
    """Walk the model layer by layer, search and fold AWQ scales into every layer (norms, v->o, up->down),
    load the folded weights into transformers: the logits equal the original's to 1e-5."""
    import torch
    from conftest import hf_logits, prompt_tokens

    from edgekit.converters.gguf import awq
    from edgekit.converters.layerwise import walk
    from edgekit.io.hf import load_model
    from edgekit.io.text import text_windows

    src = tiny_models[arch]
    (tmp_path / "calib.txt").write_text(CALIB)
    folded: dict[str, torch.Tensor] = {}
    seen: list[tuple[str, ...]] = []

    def on_layer(layer) -> None:
        for prev, names in awq.groups(layer.module):
            st = layer.stats[names[0]]
            ws = [layer.module.get_submodule(n).weight.detach().numpy() for n in names]
            s = awq.search(ws, [QT.Q4_K] * len(names), st.hessian, st.abs_mean, n_grid=5)
            assert s.shape == (ws[0].shape[1],)
            awq.fold(layer.module, prev, names, s)
            seen.append((prev, *names))
        folded.update({layer.prefix + k: v.detach().clone() for k, v in layer.module.state_dict().items()})

    windows = text_windows(src, [tmp_path / "calib.txt"], 64, 4)
    walk(src, windows, on_layer, progress=False)
    model = load_model(src)
    tokens = prompt_tokens(src)
    want = hf_logits(model, tokens)
    changed = sum(not torch.equal(model.state_dict()[k], v) for k, v in folded.items())
    assert changed >= 6  # the scales really moved weights
    model.load_state_dict(folded, strict=False)
    got = hf_logits(model, tokens)
    assert np.abs(got - want).max() < 1e-5 * max(1.0, np.abs(want).max())
    kinds = {g[0] for g in seen}
    assert {"input_layernorm", "post_attention_layernorm"} <= kinds
    if arch != "phi3":
        assert "mlp.up_proj" in kinds  # up -> down (v -> o needs as many kv heads as heads)


def test_search_never_worse_than_plain_rounding():
    from edgekit.converters.gguf import awq

    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, 256)) * np.exp(rng.normal(0, 1.0, 256))
    h = x.T @ x
    w = (rng.standard_normal((64, 256)) * 0.05).astype(np.float32)
    s = awq.search([w], [QT.Q4_K], h, np.abs(x).mean(0))
    plain = awq.output_error(w, h, QT.Q4_K)
    scaled = awq.output_error((w * s).astype(np.float32), h / np.outer(s, s), QT.Q4_K)
    print(f"AWQ output error / RTN: {scaled / plain:.3f}")
    assert scaled <= plain
