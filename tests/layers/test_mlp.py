"""The MLP sub-block: the chunked CPU inference path computes what the plain one does."""
from __future__ import annotations

import torch

from lemevit.layers.mlp import Mlp


def test_chunked_cpu_inference_mlp_matches_the_plain_path():
    mlp, norm = Mlp(16, 64).eval(), torch.nn.LayerNorm(16)
    x = torch.randn(3, 5000, 16)
    with torch.no_grad():
        plain = mlp._plain(x)
        plain_residual = x + mlp._plain(norm(x))
        mlp.chunk_above_bytes, mlp.chunk_bytes = 0, 64 * 4 * 300
        assert mlp._use_chunks(x)
        torch.testing.assert_close(mlp(x), plain)
        torch.testing.assert_close(mlp.residual(x, norm, torch.nn.Identity()), plain_residual)
    assert not mlp._use_chunks(x)  # autograd on: the plain path
