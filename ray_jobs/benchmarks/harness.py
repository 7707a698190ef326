"""What the KNIFE and KARD benchmarks share: their `<out>` folder, the task graph that keeps both CPU slots busy,
`--resume` from the runs' logs, and the parts of the report that are not about any one method.

Each benchmark keeps what is its own: which `trainer.train` runs it makes (its tasks) and its tables.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

PARALLEL = 2  # one training process per CPU core
REPORT_FILES = ("results.md", "results.json", "accuracy.png")

Final = dict[str, Any]  # the JSON line `trainer.train` prints last: global_step, metrics, mlflow_run_id, model_uri...


@dataclass
class Task:
    """One process to run once its dependencies produced their results."""

    name: str
    run: Callable[[dict[str, Final]], Final]  # gets the results of the tasks done so far, its `needs` among them
    log: Path  # trainer.train's output; its last line is the run's final JSON once the process succeeded
    needs: tuple[str, ...] = ()

    def finished_result(self) -> Final | None:
        """What an earlier, interrupted invocation's process of this task printed last, if it finished."""
        if not self.log.is_file():
            return None
        lines = [line for line in self.log.read_text().splitlines() if line.strip()]
        try:
            final = json.loads(lines[-1]) if lines else None
        except json.JSONDecodeError:
            return None
        return final if isinstance(final, dict) and "mlflow_run_id" in final else None


def finished_results(tasks: Sequence[Task]) -> dict[str, Final]:
    """`--resume`: the tasks whose log shows a finished process, with what it printed, by task name."""
    return {task.name: result for task in tasks if (result := task.finished_result()) is not None}


def run_tasks(tasks: Sequence[Task], done: Mapping[str, Final] | None = None) -> dict[str, Final]:
    """Run tasks PARALLEL at a time, each as soon as the tasks it needs are done, earlier tasks first (a seed's
    evaluations before the next seed's trainings); tasks already in `done` are not run. Any failure stops everything."""
    done = dict(done or {})
    names = {task.name for task in tasks}
    if unknown := sorted({n for task in tasks for n in task.needs if n not in names and n not in done}):
        raise ValueError(f"tasks need {unknown}, which no task produces")
    waiting = [t for t in tasks if t.name not in done]
    with ThreadPoolExecutor(PARALLEL) as pool:
        running: dict[Future[Final], str] = {}
        try:
            while waiting or running:
                for task in [t for t in waiting if all(n in done for n in t.needs)][: PARALLEL - len(running)]:
                    waiting.remove(task)
                    running[pool.submit(task.run, done)] = task.name
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    done[running.pop(future)] = future.result()
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
    return done


def tracking_uri(out: Path) -> str:
    """Every run of one benchmark logs to `<out>/mlflow.db`."""
    return f"sqlite:///{out / 'mlflow.db'}"


def add_out_arguments(parser: argparse.ArgumentParser, default_out: Path) -> None:
    """`--out` and `--resume`, the same for every benchmark."""
    parser.add_argument("--out", type=Path, default=default_out)
    parser.add_argument(
        "--resume", action="store_true",
        help="keep <out>'s store and the runs an earlier, interrupted invocation finished; run only the rest",
    )  # fmt: skip


def prepare_out(out: Path, artifacts: Sequence[str], resume: bool) -> None:
    """The benchmark owns `<out>`: its own earlier artifacts go first (unless resuming), so a report never mixes
    two invocations. The SQLite schema is made once here: concurrent first runs would race on its migrations."""
    out.mkdir(parents=True, exist_ok=True)
    for name in () if resume else artifacts:
        target = out / name
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    MlflowClient(tracking_uri(out)).search_experiments()


def timing_line(wall_s: float, reused: int, detail: str = "") -> str:
    """The report's first line: when, how long, how many at a time, and how many runs came from `--resume`."""
    return (
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, total wall time {wall_s / 60:.1f} min, {PARALLEL} runs at a time"
        + detail
        + (f"; {reused} runs finished by an earlier, interrupted invocation (`--resume`)." if reused else ".")
    )


def write_results(
    out: Path, markdown: list[str], experiment: str, wall_s: float, budget: dict[str, Any], fields: dict[str, Any]
) -> dict[str, Any]:
    """results.md, and results.json: where the runs are, how long they took and their budget, then `fields`."""
    (out / "results.md").write_text("\n".join(markdown))
    summary = {
        "experiment": experiment,
        "tracking_uri": tracking_uri(out),
        "wall_time_s": wall_s,
        "budget": budget,
        **fields,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    return summary


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


@contextmanager
def plot_grid(path: Path, rows: int, columns: int, panel_size: tuple[float, float]) -> Iterator[Any]:
    """A rows x columns grid of axes, saved to `path` when the block ends; matplotlib loads only here."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width, height = panel_size
    fig, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False)
    try:
        yield axes
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)


def accuracy_bars(ax: Any, accuracies: Mapping[str, Sequence[float]], majority: float, rotation: int) -> None:
    """One bar per method (mean ± std over seeds, each seed a dot) against the majority-class floor."""
    methods = list(accuracies)
    for x, method in enumerate(methods):
        values = accuracies[method]
        if values:
            mean, std = mean_std(values)
            ax.bar(x, mean, yerr=std or 0.0, capsize=4, color=f"C{x}", alpha=0.7)
            ax.scatter([x] * len(values), values, color="black", s=12, zorder=3)
    ax.axhline(majority, color="grey", linestyle="--", label="majority class")
    ax.set_xticks(range(len(methods)), methods, rotation=rotation, ha="right")
    ax.set_ylim(0, 1)
    ax.legend(loc="lower right")


def print_report(out: Path, wall_s: float) -> None:
    print((out / "results.md").read_text())
    print(f"wrote {', '.join(str(out / name) for name in REPORT_FILES)} in {wall_s / 60:.1f} min")
