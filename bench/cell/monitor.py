"""Gradient monitoring over an evaluation window, kept on the device (no per-step host sync) and
read once per window by TrainStep.window().

Per optimiser update (one per training step; under truncated BPTT with per-chunk updates, one
per chunk) it records, and over the window reports:
- the global gradient norm before clipping, ||g||_2 over every parameter's gradient (what
  torch.nn.utils.clip_grad_norm_ returns; under fp16 after unscaling): `grad_norm` is its mean
  over the window's updates, `grad_norm_max` its maximum;
- whether the update was clipped, torch's own condition clip / (||g|| + 1e-6) < 1 (the
  coefficient clip_grad_norm_ scales by is then below 1): `clipped` is the fraction of updates
  (0 when clipping is off);
- for a core that names its first layer (first_layer(): the recurrent families and the LRU), the
  layer ratio ||g_first||_2 / ||g_head||_2: the gradient norm of the core's first recurrent
  layer's parameters (torch's weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0 and their
  _reverse; the peephole layer's; the first LRU block's recurrence: nu, theta, gamma, B, C, D)
  over that of the output head's weight and bias: how much of the gradient reaches the bottom
  of the network relative to its top (clipping scales both alike, so it is unchanged by it).
  `layer_ratio` is its mean over the window's updates; absent for other families.

Under fp16 a GradScaler skips an update whose gradients overflowed (a non-finite norm, expected
while the scale calibrates): such updates are left out of the figures above and counted in
`skipped`, the fraction of the window's updates skipped (fp16 cells only). In fp32 and bf16 a
non-finite norm ends training (status diverged), so no window reports one.

Cost, measured alone on one CPU thread (20K-parameter models): 20-27 us an update for rnn, lstm
and the LRU (the per-tensor norms of the layer ratio), 3 us for the others; a few small kernels
on a GPU, none of them a synchronisation.
"""
from __future__ import annotations

import torch
from torch import nn

TINY = 1e-30  # floor of the head's gradient norm in the layer ratio (a zero would give inf)
ROWS = 256  # updates the buffer holds at first (it doubles when a window has more)


class GradMonitor:
    """The gradient figures of one window (module docstring). Each update writes one row of a
    preallocated device buffer: the global norm, then (for a core with a first layer) the norm
    of each gradient tensor of the first layer and of the head (one foreach kernel and one
    stack); read() reduces the window's rows."""

    def __init__(self, model: nn.Module, clip: float, device, scaled: bool):
        first = getattr(getattr(model, "core", None), "first_layer", None)
        self.first = first() if first is not None else []
        self.tracked = self.first + list(model.head.parameters()) if self.first else []
        self.clip, self.scaled = clip, scaled
        self.device = torch.device(device)
        self._zero = torch.zeros((), device=self.device)  # the norm of a missing gradient
        self._rows = torch.empty(ROWS, 1 + len(self.tracked), device=self.device)
        self.updates = 0  # a host count: no synchronisation

    def reset(self) -> None:
        self.updates = 0

    def update(self, norm: torch.Tensor) -> None:
        """Add one update whose global gradient norm before clipping was `norm`."""
        if self.updates == len(self._rows):  # a host-side size: grow by doubling
            self._rows = torch.cat([self._rows, torch.empty_like(self._rows)])
        row = self._rows[self.updates]
        if self.tracked:
            grads = [self._zero if p.grad is None else p.grad for p in self.tracked]
            torch.stack([norm.float(), *torch._foreach_norm(grads)], out=row)
        else:
            row[0].copy_(norm)
        self.updates += 1

    def read(self) -> dict[str, float | None]:
        """The window's figures (one synchronisation), then reset."""
        rows = self._rows[: self.updates]
        norm = rows[:, 0]
        finite = torch.isfinite(norm)
        value = torch.where(finite, norm, 0.0)
        figures = [value.sum(), value.max() if self.updates else self._zero, finite.sum(),
                   (finite & (self.clip / (norm + 1e-6) < 1)).sum() if self.clip > 0
                   else self._zero]
        if self.tracked:
            squares = rows[:, 1:].square()
            k = len(self.first)
            ratio = (squares[:, :k].sum(1).sqrt()
                     / squares[:, k:].sum(1).sqrt().clamp_min(TINY))
            figures.append(torch.where(finite, ratio, 0.0).sum())
        total, top, n, clipped, *ratio_sum = torch.stack(figures).tolist()
        out = {"grad_norm": total / n if n else None, "grad_norm_max": top if n else None,
               "clipped": clipped / n if n else None}
        if self.tracked:
            out["layer_ratio"] = ratio_sum[0] / n if n else None
        if self.scaled:
            out["skipped"] = (self.updates - n) / self.updates if self.updates else None
        self.reset()
        return out
