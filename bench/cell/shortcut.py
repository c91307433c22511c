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
  and multinomial in the pooled counts of the n-grams up to order n, Laplace smoothing alpha: a
  linear classifier in the one-hot window and the counts, fitted in closed form (counting). Linear
  on purpose: parity of a count is not linearly separable, so counting alone does not solve
  parity (an MLP on the counts does, at any length).
Real-valued inputs (adding) use least squares instead: on the last k input vectors (window), plus
their sums over the prefix divided by the length (pooled).
Every variant (family, k in 1..3, and for naive Bayes n in 1..3 and alpha in ALPHAS) is scored with
the task's own score on the validation batches; the best one is scored on the test batches (ties:
the window family, then larger alpha, smaller n, smaller k). So is the best variant of each family,
so that "solvable from the last k tokens" (window_score) can be told from "solvable from n-gram
counts of the whole input" (pooled_score).

The score is a lower bound on what a learner given these features reaches: naive Bayes is weaker
than logistic regression on some tasks (0.36 against 0.45 on delay at length 4), stronger on
others (0.97 against 0.56 on induction at length 24, where logistic regression needs far more
samples), and logistic regression costs several times the 2% of a quick cell's training time that
this module is allowed.
Cost: train_samples sequences, cut so that tokens x classes <= MAX_WORK (never below
MIN_SEQUENCES); every fit is a count, every prediction a lookup.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from seqbench.tasks import Batch, Task

ORDERS = (1, 2, 3)  # window sizes k and n-gram orders n
MAX_NGRAMS = 2**16  # largest n-gram vocabulary of the pooled bag
MAX_WORK = 2**20  # training tokens x classes, at most (the cost of the naive Bayes fit)
MIN_SEQUENCES = 256  # training sequences, at least
ALPHAS = (1.0, 0.1)  # Laplace smoothing of the naive Bayes counts, chosen on validation


@dataclass(frozen=True)
class Variant:
    """One learner with its settings: window size k, largest n-gram order, smoothing."""

    family: str  # "window" or "pooled"
    learner: str
    k: int
    ngrams: int | None = None
    alpha: float | None = None


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
    """Majority target per window; the overall majority for a window not seen in training."""

    def __init__(self, train: Points, vocab: int, classes: int):
        self.vocab = vocab
        x_pad = padded(train.batch.inputs, vocab)
        self.tables = []
        for k in ORDERS:
            keys, inverse = codes(x_pad, vocab, k)[train.s, train.t].unique(return_inverse=True)
            table = torch.bincount(inverse * classes + train.y, minlength=len(keys) * classes)
            self.tables.append((keys, table.view(-1, classes).argmax(1)))  # ties: first class
        self.default = torch.bincount(train.y, minlength=classes).argmax()

    def __call__(self, p: Points) -> dict[Variant, torch.Tensor]:
        x_pad = padded(p.batch.inputs, self.vocab)
        out = {}
        for k, (keys, majority) in zip(ORDERS, self.tables, strict=True):
            code = codes(x_pad, self.vocab, k)[p.s, p.t]
            i = torch.searchsorted(keys, code).clamp_(max=len(keys) - 1)
            out[Variant("window", "lookup", k)] = torch.where(keys[i] == code, majority[i],
                                                              self.default)
        return out


# --- pooled family: naive Bayes, linear in the one-hot window and the counts ---------------------


class NaiveBayes:
    """Naive Bayes, categorical in each of the last k tokens and multinomial in the counts of the
    n-grams of the prefix up to order n, for every k, n and smoothing alpha: log-linear scores."""

    def __init__(self, task: Task, train: Points, vocab: int, classes: int):
        self.vocab = vocab
        orders = (1,) if task.readout == "per_step" else ORDERS
        self.orders = [n for n in orders if (vocab + 1) ** n <= MAX_NGRAMS]
        x_pad = padded(train.batch.inputs, vocab)
        onehot = F.one_hot(train.y, classes).float()
        self.classes = onehot.sum(0)
        # per sequence and step: how many of its points of each class lie at or after the step
        at = torch.zeros(*train.batch.inputs.shape[:2], classes, device=onehot.device)
        at.index_put_((train.s, train.t), onehot, accumulate=True)
        after = (at - at.cumsum(1) + at.sum(1, keepdim=True)).flatten(0, 1)
        self.window = [count(window_code(train, x_pad, m), onehot, vocab + 1)
                       for m in range(max(ORDERS))]
        self.pooled = [count(codes(x_pad, vocab, n).flatten(), after, (vocab + 1) ** n)
                       for n in self.orders]

    def __call__(self, p: Points) -> dict[Variant, torch.Tensor]:
        x_pad = padded(p.batch.inputs, self.vocab)
        out = {}
        for alpha in ALPHAS:
            window = [log_theta(c, alpha)[window_code(p, x_pad, m)]
                      for m, c in enumerate(self.window)]
            score = (self.classes + alpha).log().expand(len(p.s), -1)
            for n, c in zip(self.orders, self.pooled, strict=True):
                score = score + log_theta(c, alpha)[codes(x_pad, self.vocab, n)].cumsum(1)[p.s, p.t]
                for k in ORDERS:
                    out[Variant("pooled", "naive_bayes", k, n, alpha)] = (
                        score + sum(window[:k])).argmax(1)
        return out


def window_code(p: Points, x_pad: torch.Tensor, m: int) -> torch.Tensor:
    """The token m steps before each point."""
    return x_pad[p.s, p.t + max(ORDERS) - 1 - m]


def count(keys: torch.Tensor, weight: torch.Tensor, size: int) -> torch.Tensor:
    """(size, classes) sums of the weight rows of each key."""
    return torch.zeros(size, weight.shape[1], device=weight.device).index_add_(0, keys, weight)


def log_theta(counts: torch.Tensor, alpha: float) -> torch.Tensor:
    smoothed = counts + alpha
    return (smoothed / smoothed.sum(0)).log()


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


class LeastSquares:
    """Linear least squares on the window (window family) and on window + prefix sums (pooled),
    solved in float64 with a small ridge: columns can be collinear (at adding L=2 both markers
    are always 1, as is the bias), where float32 loses the ridge and the solve fails."""

    def __init__(self, train: Points):
        self.weights = {}
        for family in ("window", "pooled"):
            for k in ORDERS:
                a = design(train, k, family == "pooled").double()
                gram = a.T @ a + 1e-6 * torch.eye(a.shape[1], device=a.device, dtype=a.dtype)
                self.weights[Variant(family, "least_squares", k)] = torch.linalg.solve(
                    gram, a.T @ train.y.double()).float()

    def __call__(self, p: Points) -> dict[Variant, torch.Tensor]:
        return {v: design(p, v.k, v.family == "pooled") @ w for v, w in self.weights.items()}


# --- scoring and choice --------------------------------------------------------------------------


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


@torch.no_grad()
def evaluate(task: Task, learners, batches: list[Points]) -> dict[Variant, float]:
    """Mean score of every variant of every learner on the batches, in the learners' order."""
    totals: dict[Variant, float] = {}
    for p in batches:
        for learner in learners:
            for variant, pred in learner(p).items():
                totals[variant] = totals.get(variant, 0.0) + total_score(task, p, pred)
    n = sum(len(p.batch.inputs) for p in batches)
    return {variant: total / n for variant, total in totals.items()}


def learners(task: Task, train: Points) -> list:
    if task.io.input_kind == "features":
        return [LeastSquares(train)]
    vocab, classes = task.io.input_size, task.io.output_size
    return [Lookup(train, vocab, classes), NaiveBayes(task, train, vocab, classes)]


def train_size(task: Task, length: int, train_samples: int) -> int:
    """Training sequences: train_samples, cut to MAX_WORK tokens x classes, never below
    MIN_SEQUENCES."""
    work = task.seq_len(length) * task.io.output_size
    return min(train_samples, max(MIN_SEQUENCES, MAX_WORK // work))


def fit(task: Task, length: int, train_gen: torch.Generator, device, train_samples: int = 2048,
        keep: Callable[[Batch], Batch] | None = None) -> tuple[list, int]:
    """The fitted learners and the number of training sequences they saw: train_size(...)
    sequences drawn from train_gen, less those keep leaves out (the cell's held-out sequences
    where its training excludes them, seqbench.cell.seen)."""
    batch = task.sample(length, train_size(task, length, train_samples), train_gen, device)
    if keep is not None:
        batch = keep(batch)
    return learners(task, points(task, batch)), len(batch.inputs)


def choose(task: Task, fitted: list, val_batches: list[Batch]) -> tuple[Variant, dict, dict]:
    """The variant best on the validation batches, the best of each family, and every variant's
    validation score (max keeps the first of ties: the order of the learners and ALPHAS)."""
    val = evaluate(task, fitted, [points(task, b) for b in val_batches])
    best = {family: max((v for v in val if v.family == family), key=val.__getitem__)
            for family in ("window", "pooled")}
    return max(best.values(), key=val.__getitem__), best, val


def describe(variant: Variant) -> dict:
    return {"family": variant.family, "learner": variant.learner, "k": variant.k,
            "ngrams": variant.ngrams, "alpha": variant.alpha}


def shortcut_score(task: Task, length: int, train_gen: torch.Generator,
                   val_batches: list[Batch] | None, test_batches: list[Batch], device,
                   *, train_samples: int = 2048, val_samples: int = 512,
                   keep: Callable[[Batch], Batch] | None = None,
                   ood: tuple[list[list[Batch]], list[list[Batch]]] | None = None) -> dict:
    """Fit the shortcut learners on the task's training stream, choose on validation, score on
    the test batches (the held-out set the models are scored on).

    train_gen: the generator the training sequences are drawn from (a stream of its own, so the
    models' training batches do not change). val_batches: None draws val_samples sequences from
    train_gen after the training ones. keep: see fit. Returns the test score of the variant best
    on validation ("score"), its settings ("family", "learner", "k", "ngrams", "alpha"; None where
    they do not apply) and validation score, the test score of each family's best variant on
    validation ("window_score", "pooled_score") and the number of training sequences
    ("train_samples").

    ood: (validation, test) batches at each test length of a length-generalisation cell. The
    learners fitted at `length` are then also chosen on all the validation batches together (the
    mean over the test lengths, each with as many samples) and scored at each test length:
    "ood_scores", their mean "ood_score", "ood_val_score" and the variant, "ood_choice".
    """
    fitted, n = fit(task, length, train_gen, device, train_samples, keep)
    if val_batches is None:
        val_batches = [task.sample(length, val_samples, train_gen, device)]
    chosen, best, val = choose(task, fitted, val_batches)
    test = evaluate(task, fitted, [points(task, b) for b in test_batches])  # after the choice
    out = {"score": test[chosen], **describe(chosen), "val_score": val[chosen],
           "window_score": test[best["window"]], "pooled_score": test[best["pooled"]],
           "train_samples": n}
    if ood is not None:
        ood_val, ood_test = ood
        chosen, _, val = choose(task, fitted, [b for batches in ood_val for b in batches])
        scores = [evaluate(task, fitted, [points(task, b) for b in batches])[chosen]
                  for batches in ood_test]
        out |= {"ood_score": sum(scores) / len(scores), "ood_scores": scores,
                "ood_val_score": val[chosen], "ood_choice": describe(chosen)}
    return out


__all__ = ["shortcut_score"]
