"""Compare methods across an MLflow experiment: one row per (dataset, method), mean ± std over seeds.

    python -m trainer.tracking.compare --experiment knife-benchmark [--tracking-uri sqlite:////abs/mlflow.db] [--log]

`--log` also records the comparison in the experiment, in a run of its own (`comparison`): the rows as an MLflow
table (`comparison/methods.json`) and a bar chart of the headline metrics, mean ± 95% t-interval over seeds
(`comparison/headline.png`). Every pipeline's parent run gets the same for its stages (`log_pipeline_comparison`).

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
from typing import TYPE_CHECKING

from mlflow.entities import Metric, Run, ViewType
from mlflow.tracking import MlflowClient

if TYPE_CHECKING:
    from matplotlib.figure import Figure

from trainer.config.schema import TrackingConfig
from trainer.methods.registry import registered_methods
from trainer.tracking.mlflow_tracker import resolve_experiment, resolve_tracking_uri

CHART_METRIC = (
    "headline"  # each compared run's headline value under one name: MLflow's chart view puts runs side by side
)
COMPARISON_ROLE = "comparison"  # the `reasondistill.role` of the run `--log` records an experiment's comparison in
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


def ci95_half_width(values: tuple[float, ...]) -> float | None:
    """Half-width of the 95% Student-t interval of the mean; None below two values."""
    from scipy import stats

    if len(values) < 2:
        return None
    return float(stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5)


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
    return _experiment_rows(client, _experiment_id(client, tracking_uri, experiment))


def _experiment_rows(client: MlflowClient, experiment_id: str) -> list[Row]:
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


@dataclass(frozen=True)
class Bar:
    """One bar of a comparison chart: a stage's (or a method's) headline value, with its interval over seeds."""

    label: str
    metric: str
    value: float
    ci95: float | None
    n: int


def headline_figure(bars: list[Bar], title: str) -> Figure:
    """Bars side by side, each labelled with its value, n and metric (stages may rank by different metrics)."""
    from matplotlib.figure import Figure  # a Figure without pyplot: no GUI backend, no global state

    figure = Figure(figsize=(max(6.0, 1.3 * len(bars)), 4.5), layout="constrained")
    axes = figure.subplots()
    positions = range(len(bars))
    errors = [bar.ci95 or 0.0 for bar in bars]
    axes.bar(positions, [bar.value for bar in bars], yerr=errors, capsize=5, color="#4c78a8")
    for position, bar, error in zip(positions, bars, errors, strict=True):
        spread = f" ± {bar.ci95:.3f}" if bar.ci95 is not None else ""
        axes.annotate(
            f"{bar.value:.3f}{spread}\nn={bar.n}", (position, bar.value + error), ha="center", va="bottom", fontsize=8
        )
    axes.set_xticks(list(positions), [f"{bar.label}\n{bar.metric}" for bar in bars], fontsize=8)
    axes.set_ylabel("dev headline metric (mean ± 95% CI over seeds)")
    axes.set_ylim(0.0, max([1.0, *(bar.value + error for bar, error in zip(bars, errors, strict=True))]) * 1.12)
    axes.set_title(title)
    return figure


def _interval(values: tuple[float, ...]) -> tuple[float | None, float | None]:
    mean, _ = mean_std(values)
    half = ci95_half_width(values)
    if mean is None or half is None:
        return None, None
    return mean - half, mean + half


def _mark_chart_metric(client: MlflowClient, runs: Iterable[Run]) -> None:
    """Each run's headline value as `headline`, so the UI's chart view compares runs of different methods."""
    for run in runs:
        if CHART_METRIC not in run.data.metrics:
            value = run.data.metrics[headline(run)]
            client.log_batch(run.info.run_id, metrics=[Metric(CHART_METRIC, value, run.info.end_time or 0, 0)])


def log_pipeline_comparison(client: MlflowClient, parent_run_id: str) -> list[dict[str, object]]:
    """On a pipeline's parent run: a table of its finished stages (this run's headline value beside the mean and 95%
    interval of every finished run of that method and dataset in the experiment, i.e. over seeds) and their bar
    chart; each stage's run gets the `headline` metric. Returns the table's rows."""
    parent = client.get_run(parent_run_id)
    experiment_id = parent.info.experiment_id
    stages = [
        run
        for run in client.search_runs(
            [experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time ASC"],
            max_results=_PAGE,
        )
        if run.data.tags.get("method") and headline(run) in run.data.metrics
    ]
    groups = {(r.dataset, r.method, r.metric): r for r in _experiment_rows(client, experiment_id)}
    rows: list[dict[str, object]] = []
    bars = []
    for run in stages:
        tags, metric = run.data.tags, headline(run)
        group = groups.get((tags.get("dataset", "?"), run_label(run), metric))
        values = group.accuracies if group is not None else (run.data.metrics[metric],)
        low, high = _interval(values)
        stage = tags.get("stage", run.info.run_name)
        rows.append(
            {
                "stage": stage,
                "method": run_label(run),
                "dataset": tags.get("dataset", "?"),
                "model": tags.get("model", "?"),
                "seed": tags.get("seed", "?"),
                "metric": metric,
                "value": run.data.metrics[metric],
                "runs_in_experiment": len(values),
                "mean": statistics.fmean(values),
                "ci95_low": low,
                "ci95_high": high,
                "run_id": run.info.run_id,
            }
        )
        value = statistics.fmean(values) if len(values) > 1 else run.data.metrics[metric]
        bars.append(Bar(stage, metric, value, ci95_half_width(values), len(values)))
    _mark_chart_metric(client, stages)
    if rows:
        import pandas as pd

        client.log_table(parent_run_id, data=pd.DataFrame(rows), artifact_file="comparison/stages.json")
        title = f"{parent.info.run_name}: headline metric per stage"
        client.log_figure(parent_run_id, headline_figure(bars, title), "comparison/headline.png")
    return rows


def log_experiment_comparison(tracking_uri: str, experiment: str) -> str:
    """The experiment's comparison (compare_runs) in a `comparison` run of its own: table, chart, and `headline` on
    every compared run. Returns that run's id."""
    import pandas as pd

    rows = compare_runs(tracking_uri, experiment)
    client = MlflowClient(tracking_uri)
    experiment_id = _experiment_id(client, tracking_uri, experiment)
    _mark_chart_metric(
        client, (run for run in _finished_method_runs(client, experiment_id) if headline(run) in run.data.metrics)
    )
    run_id = client.create_run(
        experiment_id, run_name=f"comparison · {experiment}", tags={"reasondistill.role": COMPARISON_ROLE}
    ).info.run_id
    table = [
        {
            "dataset": r.dataset,
            "method": r.method,
            "metric": r.metric,
            "n": r.n,
            "mean": r.accuracy_mean,
            "std": r.accuracy_std,
            "ci95_low": _interval(r.accuracies)[0],
            "ci95_high": _interval(r.accuracies)[1],
            "steps_mean": r.steps_mean,
            "wall_time_s_mean": r.wall_time_s_mean,
        }
        for r in rows
    ]
    several_datasets = len({r.dataset for r in rows}) > 1
    bars = [
        Bar(
            f"{r.method} · {r.dataset}" if several_datasets else r.method,
            r.metric,
            r.accuracy_mean,
            ci95_half_width(r.accuracies),
            r.n,
        )
        for r in rows
    ]
    if rows:
        client.log_table(run_id, data=pd.DataFrame(table), artifact_file="comparison/methods.json")
        figure = headline_figure(bars, f"{experiment}: headline metric per method")
        client.log_figure(run_id, figure, "comparison/headline.png")
    client.log_text(run_id, format_table(rows), "comparison/table.md")
    client.set_terminated(run_id)
    return run_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", help="default: $MLFLOW_EXPERIMENT_NAME, then 'reasondistill'")
    parser.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, then ./mlflow.db")
    parser.add_argument("--log", action="store_true", help="also log the table and chart to a `comparison` run")
    args = parser.parse_args(argv)
    cfg = TrackingConfig(tracking_uri=args.tracking_uri, experiment=args.experiment)
    try:
        rows = compare_runs(resolve_tracking_uri(cfg), resolve_experiment(cfg))
        logged = log_experiment_comparison(resolve_tracking_uri(cfg), resolve_experiment(cfg)) if args.log else None
    except ExperimentNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_table(rows))
    if logged:
        print(f"\nlogged to run {logged} (comparison/methods.json, comparison/headline.png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
