"""Shortcut score: how well cheap learners with no sequential memory score on a task.

A sceptical reading of a sequence benchmark asks whether a task can be solved from local evidence,
without the long-range dependency it claims to test: a Dyck negative that holds a "(]" bigram
needs no stack. This module answers it per task and length, to be stored beside chance: a cell
whose shortcut score is near the solve threshold does not test long-range dependency.

Features, at every scored point (each scored step t of a per-step task; the last step of a final
task), with x the input and the steps before 0 holding a pad symbol:
- window: the last k tokens x_{t-k+1} .. x_t, k in 1..3;
- pooled: order-free counts over the prefix x_0 .. x_t: for a per-step task the count of each
  symbol; for a final task the bag of n-grams, n <= 3, of the whole input padded at its start, so
  that a local tell anywhere (a "(]" bigram, a closer first) is visible. An order n whose
  vocabulary exceeds MAX_NGRAMS is left out (none in the suite does: at most 17^3 trigrams).
Learners, fitted on sequences drawn from the task's own training stream:
- window family: an n-gram lookup table, the majority target of each window seen in training and
  the overall majority for an unseen one (ties: the smaller class);
- pooled family: naive Bayes (McCallum & Nigam 1998), categorical in each of the k window tokens
  and multinomial in the pooled counts, Laplace smoothing ALPHA: a linear classifier in the
  one-hot window and the counts, fitted in closed form (counting). Linear on purpose: parity of a
  count is not linearly separable, so counting alone does not solve parity.
Real-valued inputs (adding) use least squares instead: on the last k input vectors (window), plus
their sums over the prefix divided by the length (pooled).
The six variants (family x k) are scored with the task's own score on the validation batches; the
best one (ties: window family first, then the smaller k) is scored on the test batches. So is the
best of each family, so that "solvable from the last k tokens" (window_score) can be told from
"solvable from n-gram counts of the whole input" (pooled_score).

The score is a lower bound on what any learner given these features reaches: naive Bayes is
weaker than logistic regression on some tasks (0.36 against 0.45 on delay at length 4), stronger
on others (0.95 against 0.56 on induction at length 24, where logistic regression needs far more
samples); logistic regression costs several times the 2% of a quick cell allowed here.
Cost: train_samples sequences, cut so that tokens x classes <= MAX_WORK (never below
MIN_SEQUENCES); every fit is a count, every prediction a lookup.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tasks import Batch, Task

ORDERS = (1, 2, 3)  # window sizes k and n-gram orders n
MAX_NGRAMS = 2**16  # largest n-gram vocabulary of the pooled bag
MAX_WORK = 2**21  # training tokens x classes, at most (the cost of the naive Bayes fit)
MIN_SEQUENCES = 256  # training sequences, at least
ALPHA = 1.0  # Laplace smoothing of the naive Bayes counts


@dataclass(frozen=True)
class Points:
    """The scored points of a batch: sequence s[i], step t[i], target y[i]; `scoring` is the batch
    cut to the steps that hold points (per-step tasks) and `column` each point's step there."""

    batch: Batch
    s: torch.Tensor
    t: torch.Tensor
    y: torch.Tensor
    scoring: Batch
    column: torch.Tensor


def points(task: Task, batch: Batch) -> Points:
    if task.readout == "per_step":
        s, t = batch.mask.nonzero(as_tuple=True)
        steps, column = t.unique(return_inverse=True)
        scoring = Batch(batch.inputs[:, steps], batch.targets[:, steps], batch.mask[:, steps])
        return Points(batch, s, t, batch.targets[s, t], scoring, column)
    b, length = batch.inputs.shape[:2]
    s = torch.arange(b, device=batch.inputs.device)
    return Points(batch, s, torch.full_like(s, length - 1), batch.targets, batch,
                  torch.zeros_like(s))


def padded(x: torch.Tensor, pad: float) -> torch.Tensor:
    """x with max(ORDERS) - 1 pad steps in front: step t of x is step t + 2 here."""
    front = x.new_full((x.shape[0], max(ORDERS) - 1, *x.shape[2:]), pad)
    return torch.cat([front, x], 1)


def codes(x_pad: torch.Tensor, vocab: int, k: int) -> torch.Tensor:
    """(S, T) code of the k tokens ending at every step of the padded tokens, base vocab + 1."""
    length = x_pad.shape[1] - max(ORDERS) + 1
    out = torch.zeros_like(x_pad[:, :length])
    for m in range(k):
        start = max(ORDERS) - 1 - m
        out = out * (vocab + 1) + x_pad[:, start : start + length]
    return out


# --- window family: lookup table ---------------------------------------------------------------


class Lookup:
    """Majority target per context code; the overall majority for unseen codes."""

    def __init__(self, keys: torch.Tensor, y: torch.Tensor, classes: int):
        self.keys, inverse = keys.unique(return_inverse=True)
        table = torch.bincount(inverse * classes + y, minlength=len(self.keys) * classes)
        self.majority = table.view(-1, classes).argmax(1)  # argmax: the first of tied classes
        self.default = torch.bincount(y, minlength=classes).argmax()

    def __call__(self, keys: torch.Tensor) -> torch.Tensor:
        i = torch.searchsorted(self.keys, keys).clamp_(max=len(self.keys) - 1)
        return torch.where(self.keys[i] == keys, self.majority[i], self.default)


# --- pooled family: naive Bayes, linear in the one-hot window and the counts ---------------------


class NaiveBayes:
    """Log-linear scores of one naive Bayes model per window size k: categorical in each of the
    last k tokens, multinomial in the n-gram counts of the prefix, Laplace smoothing ALPHA."""

    def __init__(self, task: Task, train: Points, vocab: int, classes: int):
        self.vocab, self.classes = vocab, classes
        orders = (1,) if task.readout == "per_step" else ORDERS
        self.orders = [n for n in orders if (vocab + 1) ** n <= MAX_NGRAMS]
        x_pad = padded(train.batch.inputs, vocab)
        onehot = F.one_hot(train.y, classes).float()
        self.prior = (onehot.sum(0) + ALPHA).log()
        # per sequence and step: how many of its points of each class lie at or after the step
        at = torch.zeros(*train.batch.inputs.shape[:2], classes, device=onehot.device)
        at.index_put_((train.s, train.t), onehot, accumulate=True)
        after = at - at.cumsum(1) + at.sum(1, keepdim=True)
        self.window = [self.log_theta(self.window_codes(train, x_pad, m), onehot, vocab + 1)
                       for m in range(max(ORDERS))]
        self.pooled = [self.log_theta(codes(x_pad, vocab, n).flatten(), after.flatten(0, 1),
                                      (vocab + 1) ** n) for n in self.orders]

    @staticmethod
    def log_theta(keys: torch.Tensor, weight: torch.Tensor, size: int) -> torch.Tensor:
        counts = torch.full((size, weight.shape[1]), ALPHA, device=weight.device)
        counts.index_add_(0, keys, weight)
        return (counts / counts.sum(0)).log()

    def window_codes(self, p: Points, x_pad: torch.Tensor, m: int) -> torch.Tensor:
        return x_pad[p.s, p.t + max(ORDERS) - 1 - m]

    def __call__(self, p: Points) -> list[torch.Tensor]:
        """Predicted classes at the points, one tensor per k in ORDERS."""
        x_pad = padded(p.batch.inputs, self.vocab)
        score = self.prior.expand(len(p.s), -1)
        for n, table in zip(self.orders, self.pooled, strict=True):
            score = score + table[codes(x_pad, self.vocab, n)].cumsum(1)[p.s, p.t]
        out = []
        for m in range(max(ORDERS)):
            score = score + self.window[m][self.window_codes(p, x_pad, m)]
            out.append(score.argmax(1))
        return out


# --- real-valued inputs: least squares -----------------------------------------------------------


def design(p: Points, k: int, pooled: bool) -> torch.Tensor:
    """(N, features) rows: bias, the last k input vectors, and (pooled) their prefix sums."""
    x = p.batch.inputs
    x_pad = padded(x, 0.0)
    cols = [torch.ones(len(p.s), 1, device=x.device)]
    cols += [x_pad[p.s, p.t + max(ORDERS) - 1 - m] for m in range(k)]
    if pooled:
        cols.append(x.cumsum(1)[p.s, p.t] / x.shape[1])
    return torch.cat(cols, 1)


def least_squares(train: Points, k: int, pooled: bool):
    a = design(train, k, pooled)
    gram = a.T @ a + 1e-6 * torch.eye(a.shape[1], device=a.device)
    w = torch.linalg.solve(gram, a.T @ train.y)
    return lambda p: design(p, k, pooled) @ w


# --- scoring -------------------------------------------------------------------------------------


def total_score(task: Task, p: Points, pred: torch.Tensor) -> float:
    """Sum over the batch of the task's own per-sample score of predictions pred at the points
    (outputs one-hot at the predicted class, on the scored steps only)."""
    b, steps = len(p.batch.inputs), int(p.column.max()) + 1
    if task.target == "regression":
        out = torch.zeros(b, steps, 1, device=pred.device)
        out[p.s, p.column, 0] = pred
    else:
        out = torch.zeros(b, steps, task.io.output_size, device=pred.device)
        out[p.s, p.column, pred] = 1.0
    return task.score(out, p.scoring).sum().item()


def variants(task: Task, train: Points):
    """(family, learner, k, predict) for every variant, in tie-breaking order."""
    if task.io.input_kind == "features":
        return [(family, "least_squares", k, least_squares(train, k, family == "pooled"))
                for family in ("window", "pooled") for k in ORDERS]
    vocab, classes = task.io.input_size, task.io.output_size
    x_pad = padded(train.batch.inputs, vocab)
    out = []
    for k in ORDERS:
        table = Lookup(codes(x_pad, vocab, k)[train.s, train.t], train.y, classes)
        out.append(("window", "lookup", k, lambda p, k=k, table=table: table(
            codes(padded(p.batch.inputs, vocab), vocab, k)[p.s, p.t])))
    bayes = NaiveBayes(task, train, vocab, classes)
    return out + [("pooled", "naive_bayes", k, lambda p, i=i: bayes(p)[i])
                  for i, k in enumerate(ORDERS)]


@torch.no_grad()
def evaluate(task: Task, predict, batches: list[Points]) -> float:
    total = sum(len(p.batch.inputs) for p in batches)
    return sum(total_score(task, p, predict(p)) for p in batches) / total


def train_size(task: Task, length: int, train_samples: int) -> int:
    """Training sequences: train_samples, cut to MAX_WORK tokens x classes, never below
    MIN_SEQUENCES."""
    work = task.seq_len(length) * task.io.output_size
    return min(train_samples, max(MIN_SEQUENCES, MAX_WORK // work))


def shortcut_score(task: Task, length: int, train_gen: torch.Generator,
                   val_batches: list[Batch] | None, test_batches: list[Batch], device,
                   *, train_samples: int = 2048, val_samples: int = 512) -> dict:
    """Fit the shortcut learners on the task's training stream, choose on validation, score on
    the test batches (the held-out set the models are scored on).

    train_gen: the generator the training sequences are drawn from (a stream of its own, so the
    models' training batches do not change). val_batches: None draws val_samples sequences from
    train_gen after the training ones. Returns {"score", "family", "learner", "k", "val_score",
    "window_score", "pooled_score", "train_samples"}.
    """
    n = train_size(task, length, train_samples)
    train = points(task, task.sample(length, n, train_gen, device))
    if val_batches is None:
        val_batches = [task.sample(length, val_samples, train_gen, device)]
    val = [points(task, b) for b in val_batches]
    test = [points(task, b) for b in test_batches]
    scored = [(evaluate(task, predict, val), family, learner, k, predict)
              for family, learner, k, predict in variants(task, train)]
    best = {family: max((v for v in scored if v[1] == family), key=lambda v: v[0])
            for family in ("window", "pooled")}  # max keeps the first of ties
    val_score, family, learner, k, _ = max(best.values(), key=lambda v: v[0])
    test_scores = {f: evaluate(task, v[4], test) for f, v in best.items()}
    return {"score": test_scores[family], "family": family, "learner": learner, "k": k,
            "val_score": val_score, "window_score": test_scores["window"],
            "pooled_score": test_scores["pooled"], "train_samples": n}


__all__ = ["shortcut_score"]
