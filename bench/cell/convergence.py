"""Did a cell's training converge, or did its step budget cut it short? Torch-free.

A score read at a fixed step budget is a finding about the architecture only if more steps would
not change it; otherwise it is a finding about the budget (an LSTM's cycle-navigation score rose
from 0.61 to 0.78-0.90 between 1,500 and 6,000 steps). The criterion reads the evaluation history
(seqbench.cell.train evaluates the validation set every eval_every steps; for a
length-generalisation cell it is the validation set at the training length N, in distribution):

- "solved": the cell reached its solve threshold on validation (status `solved`);
- "plateau": of the m >= MIN_EVALUATIONS evaluations, the best validation loss of the last third
  (the last ceil(m / 3)) improved on the best of the ones before by at most a relative
  PLATEAU_TOLERANCE: min(late) >= (1 - 0.01) min(early); or the earlier best was already below
  LOSS_FLOOR (1e-4: cross-entropy of a fit that gives the right class probability 0.9999, or
  the MSE of errors of about 0.01 on adding, whose tolerance is 0.04), where relative changes
  are rounding noise (an even-pairs TCN went from 1e-4 to 2e-7 at a constant score);
- "still improving": it improved by more, so more steps would probably lower the loss further;
- "too few evaluations": fewer than MIN_EVALUATIONS, nothing to compare.

A cell converged when solved or on a plateau. A failed cell (diverged, oom, error) gets no
verdict (None); a timed-out one is judged on the evaluations it made. A plateau is judged on the
loss, not the score: a model stuck at chance with a flat loss has converged (more steps at this
budget would not help), and one whose loss still falls at a flat score has not.
"""
from __future__ import annotations

import math

PLATEAU_TOLERANCE = 0.01  # relative improvement of the best validation loss that still counts as flat
LOSS_FLOOR = 1e-4  # a best validation loss below this is an essentially perfect fit
MIN_EVALUATIONS = 3
VERDICTS = ("solved", "plateau", "still improving", "too few evaluations")


def plateaued(losses: list[float]) -> bool:
    """Whether the best of the last third of `losses` (>= MIN_EVALUATIONS of them) improved on
    the best before it by at most PLATEAU_TOLERANCE, relatively, or that best was below
    LOSS_FLOOR already."""
    late = math.ceil(len(losses) / 3)
    early, recent = min(losses[:-late]), min(losses[-late:])
    return early < LOSS_FLOOR or recent >= (1 - PLATEAU_TOLERANCE) * early


def convergence(status: str, history: list[dict]) -> str | None:
    """The verdict (one of VERDICTS) for a cell's status and evaluation history (entries with a
    `val_loss`), or None for a failed cell."""
    if status == "solved":
        return "solved"
    if status not in ("budget", "timeout"):
        return None
    losses = [h["val_loss"] for h in history]
    if len(losses) < MIN_EVALUATIONS:
        return "too few evaluations"
    if not all(math.isfinite(x) for x in losses):
        return "still improving"  # a non-finite validation loss is no plateau
    return "plateau" if plateaued(losses) else "still improving"


def converged(verdict: str | None) -> bool:
    return verdict in ("solved", "plateau")
