"""FLOP counting for one UNet call: torch's FlopCounterMode, run on shapes only, checked by hand.

* The count is ``torch.utils.flop_counter.FlopCounterMode``'s: matrix products and
  convolutions, 2 FLOPs per multiply-add; norms, softmax, GELU and resampling are not
  counted (the usual convention, and the one of the issues' reference figures).
* :class:`ShapesOnly` lets the counted call skip the arithmetic: every op on activations
  runs its meta kernel, and an uninitialised tensor of that shape stands in for the
  result. The count depends only on shapes, the call takes seconds even at 2048², and a
  test checks that it equals a real call's count op by op.
* :class:`AttentionRecorder` notes the token grid of every attention call, from which
  :meth:`AttentionRecorder.expected_flops` counts attention by hand; a kernel the counter
  missed, or windowing that did not happen, shows up as a mismatch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

aten = torch.ops.aten

KINDS = ("conv", "linear", "attention", "other")


def op_kind(op: str) -> str:
    """Which part of the network a counted aten op belongs to.

    ComfyUI's linear layers reach aten as mm/addmm and its attention kernels (sub-quadratic,
    split, basic, or PyTorch SDPA) as bmm/baddbmm/SDPA; the hand count confirms that
    nothing else lands in the attention bucket.
    """
    parts = str(op).split(".")
    name = parts[1] if parts[0] == "aten" and len(parts) > 1 else parts[-1]
    if name.startswith("convolution"):
        return "conv"
    if name in ("mm", "addmm"):
        return "linear"
    if name in ("bmm", "baddbmm") or "scaled_dot_product" in name:
        return "attention"
    return "other"


def _cpu_sdpa_flop(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kwargs: Any) -> int:
    """PyTorch's CPU flash attention, which FlopCounterMode has no formula for."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


EXTRA_FORMULAS = {aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flop}
"""Passed to FlopCounterMode as ``custom_mapping`` (torch's own registry is left alone)."""


def _heavy_ops() -> frozenset[Any]:
    packets = [
        aten.convolution,
        aten.mm,
        aten.addmm,
        aten.bmm,
        aten.baddbmm,
        aten._scaled_dot_product_flash_attention_for_cpu,
        aten._scaled_dot_product_flash_attention,
        aten._scaled_dot_product_efficient_attention,
        aten._scaled_dot_product_cudnn_attention,
    ]
    return frozenset(packets)


LARGE = 1 << 16
"""Inputs with more elements than this are activations: their values never steer the UNet."""


class ShapesOnly(TorchDispatchMode):
    """Run the UNet on shapes: every op on activations is replaced by its meta kernel.

    Enter it *outside* FlopCounterMode, so the counter sees every op first. Heavy ops
    (convolutions, matrix products, attention kernels) and any op with a large input get
    an uninitialised tensor of the shape and strides their meta kernel computes, so no
    activation is ever computed or even touched. Ops on small tensors (sigmas, timesteps,
    shapes) run for real, because the pack's patches read the current sigma to decide what
    to do. An op without a meta kernel runs for real. The count depends only on shapes;
    a test checks it equals a real call's count op by op.
    """

    HEAVY = _heavy_ops()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        tensors = [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)]
        tensors += [t for a in args if isinstance(a, list | tuple) for t in a if isinstance(t, torch.Tensor)]
        if not tensors or (func.overloadpacket not in self.HEAVY and max(t.numel() for t in tensors) <= LARGE):
            return func(*args, **kwargs)
        try:
            meta = func(*tree_map(_to_meta, args), **tree_map(_to_meta, kwargs))
        except (NotImplementedError, RuntimeError):  # no meta kernel for this op
            return func(*args, **kwargs)
        # A CPU scalar may sit beside GPU activations; the result lives with the activations.
        device = next((t.device for t in tensors if t.device.type != "cpu"), tensors[0].device)
        return tree_map(lambda t: _uninitialised_like(t, device), meta)


def _to_meta(value: Any) -> Any:
    return value.to("meta") if isinstance(value, torch.Tensor) else value


def _uninitialised_like(value: Any, device: torch.device) -> Any:
    if not isinstance(value, torch.Tensor):
        return value
    return torch.empty_strided(value.shape, value.stride(), dtype=value.dtype, device=device)


def counted(call: Any, *, shapes_only: bool = True) -> dict[str, int]:
    """FLOPs by aten op of ``call()``; with ``shapes_only`` the heavy ops are not computed."""
    counter = FlopCounterMode(display=False, custom_mapping=EXTRA_FORMULAS)
    if shapes_only:
        with ShapesOnly(), counter:
            call()
    else:
        with counter:
            call()
    return {str(op): int(v) for op, v in counter.get_flop_counts().get("Global", {}).items()}


def flops_of(flops_by_op: dict[str, int], kind: str) -> int:
    """FLOPs of one kind of operation (see :data:`KINDS`)."""
    return sum(v for op, v in flops_by_op.items() if op_kind(op) == kind)


class AttentionRecorder:
    """Pass-through attn1/attn2 patches that note the token grid of every attention call.

    Added only to the FLOP-counted call (through that call's model_options), never to a
    timed call. They return their inputs unchanged and run no tensor ops, so they change
    neither the result nor the count.
    """

    def __init__(self, windowed_blocks: frozenset[tuple[str, int]], grid_of: GridOf | None = None) -> None:
        self.windowed_blocks = windowed_blocks
        self.grid_of = grid_of or (lambda key, height, width: (2, 2))
        self.self_calls: list[dict[str, Any]] = []
        self.cross_calls: list[dict[str, Any]] = []

    def attn1(self, n: Any, context: Any, value: Any, extra: dict) -> tuple[Any, Any, Any]:
        shape = extra.get("activations_shape") or [n.shape[0], 0, 0, 0]
        block = extra.get("block") or ("?", -1)
        self.self_calls.append(
            {
                "key": (block[0], int(block[1])),
                "batch": int(n.shape[0]),
                "tokens": int(n.shape[1]),
                "context_tokens": int(context.shape[1]),
                "height": int(shape[2]),
                "width": int(shape[3]),
                "inner": int(extra["n_heads"] * extra["dim_head"]),
            }
        )
        return n, context, value

    def attn2(self, n: Any, context: Any, value: Any, extra: dict) -> tuple[Any, Any, Any]:
        self.cross_calls.append(
            {
                "batch": int(n.shape[0]),
                "tokens": int(n.shape[1]),
                "context_tokens": int(context.shape[1]),
                "inner": int(extra["n_heads"] * extra["dim_head"]),
            }
        )
        return n, context, value

    def windowed(self, call: dict[str, Any]) -> bool:
        """Whether MSW-MSA windows this self-attention call (it does whenever it can)."""
        return (
            call["key"] in self.windowed_blocks
            and call["tokens"] == call["height"] * call["width"] == call["context_tokens"]
        )

    def expected_flops(self) -> int:
        """Attention FLOPs by hand: QK^T and AV are 2 * B * Nq * Nk * inner each.

        A windowed call attends inside R x C windows of ceil(H/R) x ceil(W/C) tokens (2x2
        unless ``grid_of`` says otherwise; the last windows take the rest of a side), so its
        cost is the sum over windows.
        """
        total = 0
        for call in self.self_calls:
            if self.windowed(call):
                rows, cols = self.grid_of(call["key"], call["height"], call["width"])
                pairs = sum((r * c) ** 2 for r in _pieces(call["height"], rows) for c in _pieces(call["width"], cols))
            else:
                pairs = call["tokens"] * call["context_tokens"]
            total += 4 * call["batch"] * pairs * call["inner"]
        for call in self.cross_calls:
            total += 4 * call["batch"] * call["tokens"] * call["context_tokens"] * call["inner"]
        return total

    def grids(self) -> list[dict[str, Any]]:
        """Self-attention token grids in call order, grouped: what each level really ran at."""
        counts: Counter[tuple[int, int, bool]] = Counter()
        for call in self.self_calls:
            counts[(call["height"], call["width"], self.windowed(call))] += 1
        return [{"height": h, "width": w, "windowed": win, "blocks": n} for (h, w, win), n in counts.items()]

    def install(self, model_options: dict) -> dict:
        """A copy of ``model_options`` with the recording patches appended (run last)."""
        import comfy.model_patcher

        options = comfy.model_patcher.create_model_options_clone(model_options)
        patches = options.setdefault("transformer_options", {}).setdefault("patches", {})
        patches["attn1_patch"] = [*patches.get("attn1_patch", []), self.attn1]
        patches["attn2_patch"] = [*patches.get("attn2_patch", []), self.attn2]
        return options


def _pieces(side: int, count: int) -> tuple[int, ...]:
    """The window sides along one side of ``count`` windows of ceil(side / count) tokens."""
    piece = -(-side // count)
    return tuple(min(piece, side - start) for start in range(0, side, piece))


GridOf = Callable[[tuple[str, int], int, int], tuple[int, int]]
"""(block, height, width) -> the rows and columns of windows MSW-MSA uses there."""


def window_grid_of(patcher: Any) -> GridOf | None:
    """The grid of windows of the MSW-MSA patch on ``patcher`` (its own ``grid_for``), if any."""
    replaces = patcher.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn1", {})
    for patch in replaces.values():
        if hasattr(patch, "grid_for"):
            return patch.grid_for
    return None
