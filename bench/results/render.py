"""Rendering the figures of `seqbench plot` (seqbench.results.plots), in parallel: each Job builds
one figure from frames that are cheap to pickle and saves it, in a process pool of up to one
worker per core, or in this process with jobs=1. A figure's files depend only on its job, so they
are byte-identical whichever process draws them, and between runs. A job that fails stops the
rest and is raised with its figure's name."""
from __future__ import annotations

import multiprocessing
import pickle
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure
from PIL import Image

from seqbench.results.plotstyle import STYLE


@dataclass(frozen=True)
class Job:
    """One figure: its file name (no suffix), figures.json's task ("" for none) and caption, and
    build(*args), a module-level function (so that it pickles) that makes it."""
    name: str
    task: str
    caption: str
    build: Callable[..., Figure]
    args: tuple


def save(fig: Figure, out: Path, name: str, svg: bool) -> list[Path]:
    """fig as out/name.png (256-colour palette) and, if svg, out/name.svg; no timestamps or
    version strings, so the same records give the same files.

    The PNG is drawn once, by the canvas (the layout engine runs in that draw), and its pixels
    encoded once: savefig would draw twice (a layout pass, then the render) and give a PNG to
    decode before quantizing. The palette: Pillow's fast octree, not median cut (its default):
    3 ms a figure instead of 25 on results/quick, and 16% fewer bytes; flat colours move by about
    one level in 255 (white is 254), invisible, while antialiased edges err less at worst (46
    levels, median cut 67; over 16 levels: 0.02% of pixels, median cut 0.07%). zlib's default
    level, not optimize=True (level 9): 3 ms a figure instead of 25, files 9% larger."""
    fig.canvas.draw()
    fig.set_layout_engine("none")  # laid out by that draw: keep it for the SVG, do not redo it
    png = out / f"{name}.png"
    rgba = Image.frombuffer("RGBA", fig.canvas.get_width_height(), fig.canvas.buffer_rgba())
    rgba.convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE).save(png)
    paths = [png]
    if svg:
        paths.append(out / f"{name}.svg")
        fig.savefig(paths[-1], format="svg", metadata={"Date": None, "Creator": None})
    return paths


def run(job: Job, out: Path, svg: bool) -> list[Path]:
    """Build and save one job's figure, styled inside matplotlib.rc_context (the global rcParams
    are not touched)."""
    with matplotlib.rc_context(STYLE):
        return save(job.build(*job.args), out, job.name, svg)


@contextmanager
def named(job: Job):
    """Raise what fails inside as RuntimeError naming job's figure (the error chained)."""
    try:
        yield
    except Exception as exc:
        raise RuntimeError(f"plot: figure {job.name} failed: {exc!r}") from exc


def run_pickled(job: bytes, out: Path, svg: bool) -> list[Path]:
    return run(pickle.loads(job), out, svg)


def render(jobs: list[Job], out: Path, svg: bool, workers: int) -> list[list[Path]]:
    """Each job's files, in the jobs' order: in this process if workers (or the jobs) are 1, else
    in a pool of min(workers, len(jobs)) processes (forked where the platform can: they start
    with everything imported, in milliseconds; spawned elsewhere). RuntimeError naming the figure
    if a job fails (named); the jobs not yet started are cancelled."""
    done = []
    workers = min(workers, len(jobs))
    if workers <= 1:
        for job in jobs:
            with named(job):
                done.append(run(job, out, svg))
        return done
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        try:
            futures = []
            for job in jobs:
                with named(job):  # pickled here, not in the pool's feeder thread: a job that
                    # cannot be sent fails here, named (in the feeder, it could hang shutdown)
                    futures.append(pool.submit(run_pickled, pickle.dumps(job), out, svg))
            for job, future in zip(jobs, futures):
                with named(job):
                    done.append(future.result())
            return done
        finally:
            pool.shutdown(cancel_futures=True)
