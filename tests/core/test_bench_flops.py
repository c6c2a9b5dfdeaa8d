"""The bench's FLOP counting outside ComfyUI: shapes-only equals real, PyTorch attention is counted."""

from __future__ import annotations

import torch
from torch.nn import functional

from hidiff.bench import flops


class Block(torch.nn.Module):
    """A conv, a linear layer and PyTorch's attention: one op of each kind the bench sorts."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(8, 16, 3, padding=1)
        self.proj = torch.nn.Linear(16, 48)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        batch, channels, height, width = h.shape
        tokens = h.flatten(2).transpose(1, 2).contiguous()
        q, k, v = self.proj(tokens).view(batch, height * width, 3, 2, 8).permute(2, 0, 3, 1, 4)
        return functional.scaled_dot_product_attention(q, k, v).sum()


def test_shapes_only_counts_what_a_real_call_counts_and_pytorch_attention_is_in_it():
    block, x = Block(), torch.randn(2, 8, 9, 7)
    with torch.inference_mode():
        real = flops.counted(lambda: block(x), shapes_only=False)
        fast = flops.counted(lambda: block(x), shapes_only=True)
    assert fast == real
    tokens, heads, head_dim = 9 * 7, 2, 8
    assert flops.flops_of(real, "attention") == 4 * 2 * heads * tokens * tokens * head_dim
    assert flops.flops_of(real, "conv") == 2 * 2 * 16 * 8 * 9 * 63
    assert flops.flops_of(real, "linear") == 2 * 2 * 63 * 16 * 48


def test_small_tensors_still_run_for_real_under_shapes_only():
    sigma = torch.tensor([3.5])
    with flops.ShapesOnly():
        assert float(sigma.max().cpu()) == 3.5
        big = torch.ones(4, flops.LARGE) * 2
    assert big.shape == (4, flops.LARGE)
