"""Compare methods across an MLflow experiment: one row per (dataset, method), mean ± std over seeds.

    python -m trainer.tracking.compare --experiment knife-benchmark [--tracking-uri sqlite:////abs/mlflow.db]

Only finished runs that carry a `method` tag count: pipeline parent runs have none, and failed or
still-running runs would bias the mean. A run's `variant` tag (e.g. an ablation, `kd_in_only`) makes it a row of
its own, `method/variant`. Each row reports its method's headline metric (the run's `headline_metric` tag, which
the method declares: choice-scoring `dev/accuracy` for most, the vote over sampled rationales for a voting KARD
student, recall for the reranker; `dev/accuracy` for runs logged before the tag existed) and names it. Rows follow
the order methods are registered in (trainer.methods.registry). The greedy generation parsed into a choice
(`dev/generation_accuracy`) has a table beside it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import Run, ViewType
from mlflow.tracking import MlflowClient

from trainer.config.schema import TrackingConfig
from trainer.methods.registry import registered_methods
from trainer.tracking.mlflow_tracker import resolve_experiment, resolve_tracking_uri

ACCURACY = "dev/accuracy"  # the headline of runs logged without a `headline_metric` tag
GENERATION_ACCURACY = "dev/generation_accuracy"
_PAGE = 1000


class ExperimentNotFoundError(LookupError):
    """The named experiment is not in the tracking store."""


@dataclass(frozen=True)
class Row:
    dataset: str
    method: str  # the `method` tag, then `/variant` when the run has a `variant` tag
    metric: str  # the headline metric the row's values are
    n: int
    accuracy_mean: float
    accuracy_std: float | None  # sample std over runs; None with a single run
    accuracies: tuple[float, ...]
    generation_accuracies: tuple[float, ...]  # of the runs that logged it
    steps_mean: float
    wall_time_s_mean: float
    num_parameters: int
    order: int = 0  # the method's registration rank: where the row goes in tables


def _finished_method_runs(client: MlflowClient, experiment_id: str) -> Iterable[Run]:
    token: str | None = None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string="attributes.status = 'FINISHED'",
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=_PAGE,
            order_by=["attributes.start_time ASC"],
            page_token=token,
        )
        yield from (run for run in page if run.data.tags.get("method"))
        token = page.token
        if not token:
            return


def _experiment_id(client: MlflowClient, tracking_uri: str, experiment: str) -> str:
    found = client.get_experiment_by_name(experiment)
    if found is None:
        known = sorted(e.name for e in client.search_experiments(view_type=ViewType.ALL))
        raise ExperimentNotFoundError(
            f"experiment {experiment!r} not found in {tracking_uri}; known: {', '.join(known) or 'none'}"
        )
    return found.experiment_id


def headline(run: Run) -> str:
    return run.data.tags.get("headline_metric", ACCURACY)


def method_rank(run: Run, names: list[str]) -> int:
    """Registration order of the run's method among `names` (its `method.name` tag; older runs: a label equal to
    a name); methods not registered here go last."""
    name = run.data.tags.get("method.name", run.data.tags["method"])
    return names.index(name) if name in names else len(names)


def run_label(run: Run) -> str:
    """The row a run belongs to: its method, and its variant when it has one."""
    variant = run.data.tags.get("variant")
    return f"{run.data.tags['method']}/{variant}" if variant else run.data.tags["method"]


def mean_std(values: tuple[float, ...]) -> tuple[float | None, float | None]:
    """Mean and sample std; None where there are too few values."""
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def compare_runs(tracking_uri: str, experiment: str) -> list[Row]:
    """Group the experiment's finished method runs by (dataset, method), sorted by dataset then METHOD_ORDER."""
    # A missing SQLite file would otherwise be created empty by the client as a side effect.
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
        raise ExperimentNotFoundError(f"experiment {experiment!r} not found: no tracking store at {tracking_uri}")
    client = MlflowClient(tracking_uri)
    experiment_id = _experiment_id(client, tracking_uri, experiment)
    groups: dict[tuple[str, str, str], list[Run]] = defaultdict(list)
    rank: dict[str, int] = {}
    names = list(registered_methods())
    for run in _finished_method_runs(client, experiment_id):
        if headline(run) in run.data.metrics:
            groups[run.data.tags.get("dataset", "?"), run_label(run), headline(run)].append(run)
            rank[run_label(run)] = min(rank.get(run_label(run), len(names)), method_rank(run, names))
    rows = []
    for (dataset, method, metric), runs in groups.items():
        acc = tuple(run.data.metrics[metric] for run in runs)
        mean, std = mean_std(acc)
        assert mean is not None, "every group holds a run"
        rows.append(
            Row(
                dataset=dataset,
                method=method,
                metric=metric,
                n=len(runs),
                accuracy_mean=mean,
                accuracy_std=std,
                accuracies=acc,
                generation_accuracies=tuple(
                    run.data.metrics[GENERATION_ACCURACY] for run in runs if GENERATION_ACCURACY in run.data.metrics
                ),
                steps_mean=statistics.fmean(run.data.metrics.get("train/steps", 0.0) for run in runs),
                wall_time_s_mean=statistics.fmean(run.data.metrics.get("train/wall_time_s", 0.0) for run in runs),
                num_parameters=int(max(run.data.metrics.get("model/num_parameters", 0.0) for run in runs)),
                order=rank[method],
            )
        )
    return sorted(rows, key=lambda r: (r.dataset, r.order, r.method))


def _accuracy_cell(row: Row | None) -> str:
    if row is None:
        return "–"
    spread = f" ± {row.accuracy_std:.3f}" if row.accuracy_std is not None else ""
    return f"{row.accuracy_mean:.3f}{spread} (n={row.n})"


def _generation_cell(row: Row | None) -> str:
    if row is None or not row.generation_accuracies:
        return "–"
    mean, std = mean_std(row.generation_accuracies)
    spread = f" ± {std:.3f}" if std is not None else ""
    return f"{mean:.3f}{spread} (n={len(row.generation_accuracies)})"


def _cost_cell(row: Row | None) -> str:
    if row is None:
        return "–"
    return f"{row.steps_mean:.0f} steps, {row.wall_time_s_mean:.0f} s, {row.num_parameters / 1e6:.2f}M params"


def format_table(rows: list[Row]) -> str:
    """Markdown: methods as rows (in the order `rows` have them, variants after their method), the headline metric
    each row reports, one column per dataset; then the generation accuracy and a cost table (mean steps, train wall
    time, model size) with the same layout. A method without runs on a dataset shows "–"."""
    datasets = sorted({r.dataset for r in rows})
    labels = list(dict.fromkeys((r.method, r.metric) for r in sorted(rows, key=lambda r: (r.order, r.method))))
    by_key = {(r.dataset, r.method, r.metric): r for r in rows}

    def table(title: str, cell: Callable[[Row | None], str]) -> list[str]:
        lines = [f"| {title} | metric | " + " | ".join(datasets) + " |", "|---|---|" + "---|" * len(datasets)]
        for method, metric in labels:
            cells = " | ".join(cell(by_key.get((d, method, metric))) for d in datasets)
            lines.append(f"| {method} | {metric} | {cells} |")
        return lines

    if not datasets:
        return "(no finished runs with a `method` tag)"
    accuracy = table("dev headline metric (mean ± std over seeds)", _accuracy_cell)
    generation = table("dev generation accuracy (greedy output parsed)", _generation_cell)
    cost = table("cost (mean per run)", _cost_cell)
    return "\n".join([*accuracy, "", *generation, "", *cost])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", help="default: $MLFLOW_EXPERIMENT_NAME, then 'reasondistill'")
    parser.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, then ./mlflow.db")
    args = parser.parse_args(argv)
    cfg = TrackingConfig(tracking_uri=args.tracking_uri, experiment=args.experiment)
    try:
        rows = compare_runs(resolve_tracking_uri(cfg), resolve_experiment(cfg))
    except ExperimentNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
