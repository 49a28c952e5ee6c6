"""What ``rnnc train`` shows while it runs: a rich progress bar, or one line per epoch."""

from __future__ import annotations

import math
import sys
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from rnnc.train.sampling import sample_heading


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value == 0 or 1e-3 <= abs(value) < 1e6 or math.isinf(value):
            return f"{value:.4f}"
        return f"{value:.2e}"  # 1.23e-05, 6.48e+30 (not 31 digits)
    return str(value)


def epoch_line(record: dict[str, Any], epochs: int, keys: list[str]) -> str:
    """``epoch 3/10  step 150  train_loss 0.2134  val_loss 0.2011  ...  12.3s``."""
    parts = [f"epoch {record['epoch']}/{epochs}", f"step {record['step']}",
             f"train_loss {fmt(record['train_loss'])}"]
    parts += [f"{k} {fmt(record[k])}" for k in keys if k in record]
    parts.append(f"{record['time']:.1f}s")
    return "  ".join(parts)


class QuietReporter:
    """``--quiet``: one line per epoch on stdout, nothing else."""

    shows_samples = False

    def __init__(self, out=None):
        self.keys: list[str] = []
        self.headline = ""
        self.out = out or sys.stdout
        self.epochs = 0

    def start(self, epochs: int, n_batches: int, keys: list[str], headline: str) -> None:
        """Training begins: ``keys`` are the validation values each epoch line shows."""
        self.epochs, self.keys, self.headline = epochs, keys, headline

    def epoch_start(self, epoch: int, done: int) -> None:
        pass

    def step(self, state, metrics: dict[str, float]) -> None:
        pass

    def sample(self, step: int, prime: str, text: str) -> None:
        """A sample drawn at ``step``: ``text`` is what followed ``prime``."""

    def epoch_end(self, record: dict[str, Any], rule, improved: bool,
                  finished: str | None) -> None:
        line = epoch_line(record, self.epochs, self.keys)
        if finished == "early_stop":
            line += f"  (early stop on {rule.key})"
        print(line, file=self.out, flush=True)

    def note(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def eval_start(self, split: str, total: int) -> None:
        """An evaluation of ``split`` begins: ``total`` batches (windows of a text)."""

    def eval_step(self) -> None:
        """One batch of the evaluation done."""

    def eval_end(self) -> None:
        """The evaluation is over (or was stopped)."""

    def stop(self) -> None:
        pass


class RichReporter(QuietReporter):
    """A progress bar per epoch (step, loss, validation metric, tokens/s) on stderr, the
    epoch lines above it, and a text sample every ``sample.every`` steps."""

    shows_samples = True

    def __init__(self):
        super().__init__()
        self.console = Console(stderr=True, highlight=False)
        self.progress: Progress | None = None
        self.task = None
        self.eval_task = None
        self.own_progress = False  # the bar was started for an evaluation alone
        self.n_batches = 0
        self.last_metric = ""
        self.last_step = "-"

    def _bar(self) -> Progress:
        # a task's description is its label ("epoch 3/10", "val", "test"), its `info`
        # what follows the count (step, loss, metric and tokens/s while training)
        return Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )

    def start(self, epochs: int, n_batches: int, keys: list[str], headline: str) -> None:
        super().start(epochs, n_batches, keys, headline)
        self.n_batches = n_batches
        if not self.console.is_terminal:
            return  # no bar in a log file (rich would leave an empty line there)
        self.progress = self._bar()
        self.progress.start()

    def _train_info(self, loss: str = "-", tps: str = "-") -> str:
        return "  ".join(p for p in (f"step {self.last_step}", f"loss {loss}",
                                     self.last_metric, f"{tps} tok/s") if p)

    def epoch_start(self, epoch: int, done: int) -> None:
        if self.progress is None:
            return
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.last_step = "-"
        self.task = self.progress.add_task(
            f"epoch {epoch + 1}/{self.epochs}", total=self.n_batches, completed=done,
            info=self._train_info())

    def step(self, state, metrics: dict[str, float]) -> None:
        if self.progress is None or self.task is None:
            return
        self.last_step = str(state.step)
        self.progress.update(self.task, advance=1, info=self._train_info(
            fmt(metrics["loss"]), f"{metrics['tokens_per_s']:.0f}"))

    def eval_start(self, split: str, total: int) -> None:
        """A bar for the evaluation: in place of the epoch's while training, else its own
        (the final test evaluation, `rnnc eval`)."""
        if not self.console.is_terminal:
            return
        self.own_progress = self.progress is None
        if self.own_progress:
            self.progress = self._bar()
            self.progress.start()
        if self.task is not None:
            self.progress.update(self.task, visible=False)
        self.eval_task = self.progress.add_task(f"evaluating {split}", total=total, info="")

    def eval_step(self) -> None:
        if self.progress is not None and self.eval_task is not None:
            self.progress.advance(self.eval_task)

    def eval_end(self) -> None:
        if self.progress is None or self.eval_task is None:
            return
        self.progress.remove_task(self.eval_task)
        self.eval_task = None
        if self.task is not None:
            self.progress.update(self.task, visible=True)
        if self.own_progress:
            self.stop()

    def sample(self, step: int, prime: str, text: str) -> None:
        """The prime and what followed it, as `rnnc sample` prints them, under a line that
        names the prime (on a terminal the prime is also dim)."""
        heading = sample_heading(step, prime, len(text))
        self.console.print(Text(heading, style="dim"))
        self.console.print(Text.assemble((prime, "dim"), text))

    def epoch_end(self, record: dict[str, Any], rule, improved: bool,
                  finished: str | None) -> None:
        key = f"val_{self.headline}"
        if key in record:
            self.last_metric = f"{key} {fmt(record[key])}"
        line = epoch_line(record, self.epochs, self.keys)
        if improved:
            line += "  *"
        if finished == "early_stop":
            line += f"  (early stop on {rule.key})"
        self.console.print(line, markup=False, soft_wrap=True)

    def note(self, text: str) -> None:
        self.console.print(text, markup=False)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
            self.task = None
            self.eval_task = None
            self.own_progress = False
