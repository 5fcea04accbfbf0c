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


def test_chunked_cpu_training_mlp_matches_the_plain_path_forward_and_backward():
    torch.manual_seed(0)
    # float64: the comparison checks the chunked algebra, not the order of fp32 sums over 3000 rows.
    mlp, norm = Mlp(16, 64).double().train(), torch.nn.LayerNorm(16).double()
    mlp.chunk_above_bytes, mlp.chunk_bytes = 0, 64 * 8 * 300  # 300-row chunks, the last one shorter
    x = torch.randn(3, 1000, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 1000, 16, dtype=torch.float64)
    leaves = [x, *mlp.parameters(), *norm.parameters()]

    def run(**kwargs):
        out = mlp.residual(x, norm, torch.nn.Identity()) if kwargs else mlp(x)
        return out, torch.autograd.grad((out * weight).sum(), leaves, allow_unused=True)

    assert mlp._use_training_chunks(x)
    chunked, chunked_residual = run(), run(residual=True)
    mlp.chunk_above_bytes = 1 << 40
    assert not mlp._use_training_chunks(x)
    plain, plain_residual = run(), run(residual=True)

    for (out, grads), (ref_out, ref_grads) in ((chunked, plain), (chunked_residual, plain_residual)):
        torch.testing.assert_close(out, ref_out, atol=1e-6, rtol=0)
        for got, want in zip(grads, ref_grads, strict=True):
            if want is None:
                assert got is None
            else:
                torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_chunked_training_path_keeps_dropout_and_other_activations_on_the_plain_path():
    x = torch.randn(2, 500, 16, requires_grad=True)
    for mlp in (Mlp(16, 64, drop=0.1).train(), Mlp(16, 64, act_layer=torch.nn.ReLU).train()):
        mlp.chunk_above_bytes = 0
        assert not mlp._use_training_chunks(x)
