"""Model cost that does not depend on the machine: parameters and multiply-accumulates.

Every model is counted by the same counter, PyTorch's own ``torch.utils.flop_counter.FlopCounterMode``,
which sees matrix products, convolutions and ``scaled_dot_product_attention`` (the only operations with
more than linear cost in these models). It reports FLOPs of multiply-adds as two; we report MACs, half
of that, the unit of the papers' tables. Normalisations, activations and softmax are not counted, as
in fvcore and the papers.
"""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

__all__ = ["MAC_COUNTER", "count_macs", "count_parameters"]

#: Named in every output so that figures from different tools are not mixed up.
MAC_COUNTER = "torch.utils.flop_counter.FlopCounterMode / 2 (matmul, conv, SDPA; norms and activations not counted)"


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _attention_formulas() -> dict:
    """Formulas for the CPU kernels of ``scaled_dot_product_attention``, which some torch releases' counter does
    not know (it then counts no attention at all on a CPU): the count must not depend on the torch release."""
    ops = [getattr(torch.ops.aten, name) for name in ("_scaled_dot_product_flash_attention_for_cpu",)
           if hasattr(torch.ops.aten, name)]
    return {op: _sdpa_flops for op in ops}


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: torch.nn.Module, img_size: int, in_chans: int = 3) -> int:
    """Multiply-accumulates of one forward pass of one ``img_size`` × ``img_size`` image (eval mode, fp32).

    The model is run on its own device in eval mode and put back into the mode it was in. Autograd stays
    on: the counter's module tracking hooks into it and fails on parameters used directly (meta tokens)
    under ``no_grad``.
    """
    device = next(model.parameters(), torch.empty(0)).device
    x = torch.randn(1, in_chans, img_size, img_size, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad(), FlopCounterMode(display=False, custom_mapping=_attention_formulas()) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2
