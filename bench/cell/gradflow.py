"""Gradient flow through time: how strongly the loss at one scored step still reacts to each input.

Why: a vanilla (tanh) RNN fails at long range because the gradient of the loss with respect to an
input d steps back is a product of d Jacobians and, with contracting weights, shrinks roughly
geometrically in d (Bengio et al. 1994; Pascanu et al. 2013): the loss can no longer 'see' the
input it would have to remember, so training cannot learn to keep it. Gated recurrences, a TCN
within its receptive field and attention (which reaches every earlier position in one hop) keep
this gradient from vanishing. The curve measured here shows that picture directly.

What is measured, exactly:

* Tokens are discrete, so there is no gradient with respect to an input token. The gradient is
  taken with respect to the embedded input instead: the encoder output e_t (a d-vector per step;
  for real-valued features the encoder's linear projection), made a leaf of the graph, then run
  through the core and the head explicitly (encoder -> core -> head, as SequenceModel.forward).
* The loss is the task's loss as Task.loss defines it (cross-entropy on the class logits, or MSE
  on output 0 for regression) restricted to a single scored position p: the last step for a
  'final' readout; for a 'per_step' task the first scored position of the mask (copy memory: the
  first recall step). Each sample's gradient is that of its own loss (the losses are summed, not
  averaged; samples do not interact in eval mode), so the figure does not depend on the batch
  size.
* For every step t <= p the L2 norm over the d embedding channels of d loss_b / d e_{b,t} is
  averaged over the batch b, and reported against the distance p - t (0 = the scored step itself).
  The norm at distance d is how much the loss at p can still 'see' (be changed by) the input d
  steps back. Steps after p get exactly zero from a causal model and are not reported
  (step_gradient_norms returns them, which is how causality can be checked).
* The model runs in eval mode (no dropout); its mode is restored afterwards. Only the gradient
  with respect to the embedded input is computed (torch.autograd.grad): parameter .grad fields are
  left untouched.

For long sequences at most max_points distances are kept, log-spaced between 1 and the largest
distance p, always with 0 and p.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from seqbench.tasks.base import Batch, Task


def scored_position(task: Task, batch: Batch) -> int:
    """The step whose loss is differentiated: the last step for a 'final' readout, else the first
    scored position of the mask (the same in every sample of the batch)."""
    length = batch.inputs.shape[1]
    if task.readout == "final":
        return length - 1
    mask = batch.mask
    if mask is None or not mask.any(1).all():
        raise ValueError(f"task {task.name!r}: every sample needs a scored position in its mask")
    first = mask.int().argmax(1)  # index of the first True per sample
    if not (first == first[0]).all():
        raise ValueError(
            f"task {task.name!r}: the first scored position differs across the batch; "
            "gradient flow needs one common position"
        )
    return int(first[0])


def position_loss(task: Task, outputs: torch.Tensor, batch: Batch, pos: int) -> torch.Tensor:
    """The sum over the batch of each sample's loss at step pos alone, as Task.loss defines it
    there (outputs: (B, L, output_size)): MSE on output 0 for regression, else cross-entropy."""
    out = outputs[:, pos].float()
    targets = batch.targets if task.readout == "final" else batch.targets[:, pos]
    if task.target == "regression":
        return F.mse_loss(out[:, 0], targets, reduction="sum")
    return F.cross_entropy(out, targets, reduction="sum")


def step_gradient_norms(model, task: Task, batch: Batch) -> tuple[torch.Tensor, int]:
    """Per-step gradient norms and the scored position p.

    Returns (norms, p): norms (L,) float, norms[t] the batch mean of the L2 norm of the gradient of
    each sample's loss at step p with respect to its embedded input at step t, for every t
    (including t > p, which a causal model leaves at exactly zero). See the module docstring.
    """
    pos = scored_position(task, batch)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            embedded = model.encoder(batch.inputs).detach().requires_grad_(True)
            outputs = model.head(model.core(embedded))
            loss = position_loss(task, outputs, batch, pos)
            (grad,) = torch.autograd.grad(loss, embedded)
    finally:
        model.train(was_training)
    norms = grad.detach().float().norm(dim=-1).mean(0)  # (B, L, d) -> (L,)
    return norms, pos


def log_spaced(largest: int, max_points: int) -> list[int]:
    """Sorted distinct integers 0..largest, at most max_points of them, always 0 and largest:
    all of them when they fit, else 0 plus as many log-spaced points in [1, largest] as fit."""
    if max_points < 2:
        raise ValueError(f"max_points must be >= 2 (0 and the largest distance), got {max_points}")
    if largest + 1 <= max_points:
        return list(range(largest + 1))

    def points(k: int) -> list[int]:  # 0 plus k log-spaced values in [1, largest], rounded
        logs = {round(largest ** (i / (k - 1))) for i in range(k)} if k > 1 else set()
        return sorted(logs | {0, largest})

    k = max_points - 1  # k log-spaced values give at most k distinct ones, plus 0
    best = points(k)
    while len(points(k + 1)) <= max_points:  # rounding merges small values: fill the room left
        k += 1
        best = points(k)
    return best


def gradient_flow(model, task: Task, batch: Batch, max_points: int = 64) -> dict:
    """{"distance": [...], "norm": [...]}: the gradient norm of the loss at the scored step with
    respect to the embedded input d steps earlier, for d = 0 .. p (log-spaced down to at most
    max_points distances): distances as ints, norms as plain Python floats. The module docstring
    says exactly what is measured."""
    norms, pos = step_gradient_norms(model, task, batch)
    distances = log_spaced(pos, max_points)
    values = norms[[pos - d for d in distances]].tolist()
    return {"distance": distances, "norm": [float(v) for v in values]}
