"""The KNIFE part of `make bench`: every method, same seeds, same tokenizer, same step budget, one MLflow store.

    python -m ray_jobs.benchmarks.knife_benchmark --out bench_results/knife            # ~1 h on 2 idle CPU cores
    python -m ray_jobs.benchmarks.knife_benchmark --out /tmp/knife --quick             # smoke size, ~2 min

Per dataset and seed it trains the KNIFE teacher first (input + free-text rationale), then the baselines
(ft_io, ft_ior, ft_iro, multitask), the KNIFE student and its ablations from that teacher, two `trainer.train`
processes at a time. Each ablation changes one knob of the student (tag `variant`): KD-in only (lambda_out=0),
KD-out only (lambda_in=0), and KD-out as KL (output_loss=kl, KD-in kept). The baselines get the teacher's
tokenizer so every method sees the same vocabulary. All runs log to `<out>/mlflow.db` (experiment
`knife-benchmark`, tag `bench_seed`); the benchmark owns `<out>` and clears its own previous runs there first, so
the comparison never mixes two invocations. Writes `<out>/results.md`, `<out>/results.json` and
`<out>/accuracy.png`.

Dev accuracy is choice scoring (trainer.evaluation); the greedy-generation accuracy is reported beside it. Every
run is scored at its last step (no model selection on the dev set it is reported on). Each method is compared with
I→O seed by seed (the seed fixes data order and initialisation): the mean paired difference with a 95% t-interval
over seeds, mean ± t(0.975, n − 1)·sd/√n.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient
from scipy.stats import t as student_t

from ray_jobs.benchmarks import harness
from ray_jobs.benchmarks.trainer_runs import run_trainer_process
from trainer.config.schema import DataConfig
from trainer.data.registry import load_splits
from trainer.tracking.compare import Row, compare_runs, format_table

EXPERIMENT = "knife-benchmark"
TEACHER, STUDENT, IO = "knife_teacher", "knife_student", "ft_io"
BASELINES = ("ft_io", "ft_ior", "ft_iro", "multitask")
KNIFE_METHODS = (*BASELINES, TEACHER, STUDENT)  # the KNIFE paper's comparison, in its report order
# Ablations of the KNIFE student, each one knob away from it (λ_in = λ_out = 1, MSE): variant tag → overrides.
ABLATIONS: dict[str, tuple[str, ...]] = {
    "kd_in_only": ("method.knife.lambda_out=0",),
    "kd_out_only": ("method.knife.lambda_in=0",),
    "kd_out_kl": ("method.knife.output_loss=kl",),
}
_COMMON = [
    "model.name=t5-tiny",
    "optim.lr=1e-3",
    "optim.warmup_steps=20",
    "optim.micro_batch_size=32",
    "tracking.log_every=100",
    "run.num_workers=1",
    "tracking.log_model=false",  # exports stay in <out>/runs; logging 36 pyfunc models would only cost time
]
# Step budgets were measured on a 2-core machine so the default run (2 datasets x 3 seeds x 6 methods) fits ~40 min.
DATASETS: dict[str, dict[str, Any]] = {
    "synthetic": {
        "max_steps": 500,
        "overrides": [
            "model.tokenizer_vocab_size=400",
            "data.max_input_length=64",
            "data.max_rationale_length=48",
            "data.max_target_length=6",
        ],
    },
    "strategyqa": {
        "max_steps": 80,
        "overrides": [
            "model.tokenizer_vocab_size=4000",
            "data.max_input_length=96",
            "data.max_rationale_length=96",
            "data.max_target_length=4",
            "data.rationale_source=facts",
        ],
    },
}
QUICK: dict[str, Any] = {"max_steps": 24, "overrides": ["data.max_train_examples=256", "data.max_dev_examples=24"]}
_ARTIFACTS = ("mlflow.db", "mlartifacts", "runs", "logs", *harness.REPORT_FILES)


@dataclass(frozen=True)
class Job:
    dataset: str
    method: str
    seed: int
    overrides: tuple[str, ...]
    variant: str = ""

    @property
    def label(self) -> str:
        """The method's row in the report (compare.run_label's form)."""
        return f"{self.method}/{self.variant}" if self.variant else self.method

    @property
    def run_name(self) -> str:
        return f"{self.dataset}-{self.label.replace('/', '-')}-seed{self.seed}"


@dataclass(frozen=True)
class RunResult:
    dataset: str
    method: str  # the row label: method, or method/variant
    seed: int
    run_name: str
    accuracy: float
    generation_accuracy: float
    unparsed_rate: float
    steps: int
    train_wall_time_s: float
    process_wall_time_s: float
    mlflow_run_id: str


def _base_overrides(out: Path, dataset: str, max_steps: int, quick: bool) -> list[str]:
    return [
        *_COMMON,
        *DATASETS[dataset]["overrides"],
        *(QUICK["overrides"] if quick else []),
        f"data.dataset={dataset}",
        f"optim.max_steps={max_steps}",
        f"run.output_dir={out / 'runs'}",
        f"tracking.tracking_uri={harness.tracking_uri(out)}",
        f"tracking.experiment={EXPERIMENT}",
    ]


PROCESS_WALL_TIME = "process_wall_time_s"  # the key _run adds to trainer.train's final JSON


def _log(job: Job, out: Path) -> Path:
    return out / "logs" / f"{job.run_name}.log"


def _run(job: Job, out: Path) -> harness.Final:
    """One `trainer.train` subprocess; its log goes to <out>/logs/<run_name>.log. Returns its final JSON line with
    the process's wall time added."""
    args = [
        *job.overrides,
        f"method.name={job.method}",
        f"run.name={job.run_name}",
        f"run.seed={job.seed}",
        f"tracking.tags.bench_seed='{job.seed}'",  # quoted: override values are YAML
        *([f"tracking.tags.variant={job.variant}"] if job.variant else []),
    ]
    process = run_trainer_process(args, _log(job, out))
    metrics = process.metrics
    print(
        f"[{process.wall_s:6.0f} s] {job.run_name}: dev/accuracy {metrics['dev/accuracy']:.3f} "
        f"generation {metrics['dev/generation_accuracy']:.3f}",
        flush=True,
    )
    return {**process.final, PROCESS_WALL_TIME: process.wall_s}


def _result(job: Job, final: harness.Final) -> RunResult:
    metrics = final["metrics"]
    return RunResult(
        job.dataset,
        job.label,
        job.seed,
        job.run_name,
        metrics["dev/accuracy"],
        metrics["dev/generation_accuracy"],
        metrics["dev/unparsed_rate"],
        final["global_step"],
        metrics["train/wall_time_s"],
        final[PROCESS_WALL_TIME],
        final["mlflow_run_id"],
    )


def _student_jobs(teacher: Job, out: Path, student_overrides: list[str]) -> list[Job]:
    export = out / "runs" / teacher.run_name / "export"
    jobs = [Job(teacher.dataset, m, teacher.seed, (*teacher.overrides, f"model.tokenizer={export}")) for m in BASELINES]
    knife = (*teacher.overrides, f"method.knife.teacher={export}", *student_overrides)
    ablations = [Job(teacher.dataset, STUDENT, teacher.seed, (*knife, *extra), v) for v, extra in ABLATIONS.items()]
    return [*jobs, Job(teacher.dataset, STUDENT, teacher.seed, knife), *ablations]


def plan_jobs(teachers: list[Job], out: Path, student_overrides: list[str]) -> list[Job]:
    """Teachers first, then every teacher's baselines, student and ablations (they read the teacher's export)."""
    return [*teachers, *(job for teacher in teachers for job in _student_jobs(teacher, out, student_overrides))]


def _tasks(jobs: list[Job], out: Path) -> list[harness.Task]:
    teacher_of = {(j.dataset, j.seed): j.run_name for j in jobs if j.method == TEACHER}

    def task(job: Job) -> harness.Task:
        needs = () if job.method == TEACHER else (teacher_of[job.dataset, job.seed],)
        return harness.Task(job.run_name, lambda _done: _run(job, out), _log(job, out), needs)

    return [task(job) for job in jobs]


def finished_results(out: Path, jobs: list[Job]) -> dict[str, harness.Final]:
    """`--resume`: the jobs an earlier invocation finished (their logs end in trainer.train's final line), by run
    name. Their process wall time is the MLflow run's start-to-end time."""
    finished = harness.finished_results(_tasks(jobs, out))
    client = MlflowClient(harness.tracking_uri(out))
    for final in finished.values():
        info = client.get_run(final["mlflow_run_id"]).info
        final[PROCESS_WALL_TIME] = (info.end_time - info.start_time) / 1000
    return finished


def run_all(jobs: list[Job], out: Path, finished: dict[str, harness.Final] | None = None) -> list[RunResult]:
    """Each job once its teacher is done, two at a time; any failure stops the benchmark. Jobs already in
    `finished` (a resumed invocation) are not run again."""
    done = harness.run_tasks(_tasks(jobs, out), finished)
    return [_result(job, done[job.run_name]) for job in jobs]


def majority_accuracy(dataset: str, quick: bool) -> float:
    """Dev accuracy of always answering the most frequent dev answer: the floor a model must clear."""
    cfg = DataConfig(dataset=dataset, max_dev_examples=24 if quick else None)
    dev = load_splits(cfg, seed=0).dev
    return Counter(ex.answer for ex in dev).most_common(1)[0][1] / len(dev)


def paired_differences(results: list[RunResult], dataset: str, a: str, b: str) -> dict[int, float]:
    """Per-seed accuracy(a) − accuracy(b): the seed fixes data order and init, so pairs remove that noise."""
    acc = {(r.method, r.seed): r.accuracy for r in results if r.dataset == dataset}
    return {seed: acc[a, seed] - acc[b, seed] for _, seed in sorted(acc) if (a, seed) in acc and (b, seed) in acc}


@dataclass(frozen=True)
class PairedDifference:
    """accuracy(method) − accuracy(I→O) over seeds, with a 95% t-interval (None with fewer than two seeds)."""

    mean: float
    std: float | None
    ci95: tuple[float, float] | None
    per_seed: dict[int, float]

    @classmethod
    def of(cls, per_seed: dict[int, float]) -> PairedDifference:
        values = list(per_seed.values())
        mean = statistics.fmean(values)
        if len(values) < 2:
            return cls(mean, None, None, per_seed)
        std = statistics.stdev(values)
        half = float(student_t.ppf(0.975, len(values) - 1)) * std / len(values) ** 0.5
        return cls(mean, std, (mean - half, mean + half), per_seed)

    def cell(self) -> str:
        if self.ci95 is None:
            return f"{self.mean:+.3f} (1 seed, no interval)"
        return f"{self.mean:+.3f} [{self.ci95[0]:+.3f}, {self.ci95[1]:+.3f}]"

    def verdict(self) -> str:
        if self.ci95 is None:
            return "one seed: no interval"
        if self.ci95[0] > 0:
            return "better than I→O (95% interval above 0)"
        if self.ci95[1] < 0:
            return "worse than I→O (95% interval below 0)"
        return "no difference from I→O detectable (95% interval contains 0)"


LABELS = (*KNIFE_METHODS, *(f"{STUDENT}/{variant}" for variant in ABLATIONS))  # the report's row order


def _reading(
    dataset: str,
    rows: dict[str, Row],
    paired: dict[str, PairedDifference],
    majority: float,
    unparsed: dict[str, float],
) -> str:
    """A plain-language reading generated from the numbers, so the report cannot drift from them."""
    io, teacher, student = rows.get(IO), rows.get(TEACHER), rows.get(STUDENT)
    if not (io and teacher and student and STUDENT in paired):
        return f"**{dataset}**: incomplete (a method has no finished run)."
    s = paired[STUDENT]
    wins = sum(d > 0 for d in s.per_seed.values())
    text = [
        f"**{dataset}**: the KNIFE teacher, which reads the rationale at dev time too, scores "
        f"{teacher.accuracy_mean:.3f} against I→O's {io.accuracy_mean:.3f} ({paired[TEACHER].verdict()}).",
        f"The KNIFE student − I→O = {s.cell()} over {len(s.per_seed)} seed(s), ahead on {wins}/{len(s.per_seed)}: "
        f"{s.verdict()}.",
    ]
    ablations = [
        f"{label.split('/', 1)[1]} {paired[label].cell()}" for label in LABELS[len(KNIFE_METHODS) :] if label in paired
    ]
    if ablations:
        text.append(f"Ablations − I→O: {'; '.join(ablations)}.")
    others = [m for m in (*BASELINES[1:], *LABELS[len(KNIFE_METHODS) :]) if m in paired and paired[m].ci95]
    if clear := [
        f"{m} ({paired[m].verdict().split(' (')[0]})" for m in others if "detectable" not in paired[m].verdict()
    ]:
        text.append(f"Clearly different from I→O: {', '.join(clear)}.")
    near_floor = [m for m, r in rows.items() if m != TEACHER and abs(r.accuracy_mean - majority) < 0.03]
    text.append(
        f"{', '.join(near_floor)} sit within 3 points of the majority-class floor ({majority:.3f}): these tiny "
        "models have not learnt the task beyond the label prior."
        if near_floor
        else f"The majority-class floor is {majority:.3f}."
    )
    broken = [f"{m} ({rate:.0%})" for m, rate in unparsed.items() if rate > 0.5]
    if broken:
        text.append(
            f"Most greedy outputs of {', '.join(broken)} name no choice, so their generation accuracy measures "
            "output format; their choice-scoring accuracy does not depend on it."
        )
    return " ".join(text)


CAVEAT = (
    "These are tiny (d_model 64) T5 models trained from random initialisation on CPU for at most a few hundred "
    "steps, not the pretrained T5-Base/Large of Chan et al.; KNIFE's gains in the paper come from "
    "aligning pretrained representations, so these numbers test the pipeline and the direction of the effect "
    "on a task built to reward rationales, not the paper's claims. The machine was shared with other jobs, so "
    "wall times carry noise."
)


def write_plot(rows: list[Row], majority: dict[str, float], path: Path) -> None:
    datasets = sorted({r.dataset for r in rows})
    with harness.plot_grid(path, 1, len(datasets), (7, 4.5)) as axes:
        for ax, dataset in zip(axes[0], datasets, strict=True):
            by_method = {r.method: r for r in rows if r.dataset == dataset}
            harness.accuracy_bars(
                ax, {m: by_method[m].accuracies for m in LABELS if m in by_method}, majority[dataset], 35
            )
            ax.set_title(f"{dataset} (bars: mean ± std, dots: seeds)")
            ax.set_ylabel("dev accuracy (choice scoring)")


def write_report(
    out: Path,
    results: list[RunResult],
    budget: dict[str, Any],
    student_overrides: list[str],
    wall_s: float,
    reused: int = 0,
) -> dict[str, Any]:
    datasets = sorted({r.dataset for r in results})
    rows = [r for r in compare_runs(harness.tracking_uri(out), EXPERIMENT) if r.dataset in datasets]
    seeds = sorted({r.seed for r in results})
    majority = {d: majority_accuracy(d, budget["quick"]) for d in datasets}
    paired = {
        d: {
            label: PairedDifference.of(diffs)
            for label in LABELS
            if label != IO and (diffs := paired_differences(results, d, label, IO))
        }
        for d in datasets
    }
    acc = {(r.dataset, r.method, r.seed): r.accuracy for r in results}
    generation = {(r.dataset, r.method, r.seed): r.generation_accuracy for r in results}
    unparsed = {
        d: {m: statistics.fmean(r.unparsed_rate for r in results if (r.dataset, r.method) == (d, m)) for m in methods}
        for d in datasets
        if (methods := {r.method for r in results if r.dataset == d})
    }

    def per_seed_table(values: dict[tuple[str, str, int], float]) -> list[str]:
        return [
            "| dataset | method | " + " | ".join(f"seed {s}" for s in seeds) + " |",
            "|---|---|" + "---|" * len(seeds),
            *[
                f"| {d} | {m} | "
                + " | ".join(f"{values[d, m, s]:.3f}" if (d, m, s) in values else "–" for s in seeds)
                + " |"
                for d in datasets
                for m in LABELS
            ],
        ]

    md = [
        "# KNIFE benchmark",
        "",
        harness.timing_line(wall_s, reused, f", seeds {seeds}"),
        "",
        "## Budget",
        "",
        *[
            f"- {d}: {budget['datasets'][d]['max_steps']} optimizer steps × batch 32 for every method; "
            f"`{' '.join(budget['datasets'][d]['overrides'])}`"
            for d in datasets
        ],
        f"- common: `{' '.join(_COMMON)}`; KNIFE student extra: `{' '.join(student_overrides) or 'none (λ=1, mse)'}`",
        "- ablations (one knob from the student each): "
        + "; ".join(f"{v}: `{' '.join(extra)}`" for v, extra in ABLATIONS.items()),
        "- dev accuracy: choice scoring (every choice ranked by the mean log-probability per token of its answer "
        "text after the method's answer prefix); generation accuracy: the greedy output parsed into a choice. "
        "Every run is scored at its last step.",
        "",
        "## Results (from the MLflow store)",
        "",
        format_table(rows),
        "",
        "## Per-seed dev accuracy (choice scoring)",
        "",
        *per_seed_table(acc),
        "",
        "## Per-seed generation accuracy",
        "",
        *per_seed_table(generation),
        "",
        "## Method − I→O, paired by seed (mean [95% t-interval over seeds])",
        "",
        "| dataset | method | difference | per seed | reading |",
        "|---|---|---|---|---|",
        *[
            f"| {d} | {label} | {diff.cell()} | "
            + ", ".join(f"{x:+.3f}" for _, x in sorted(diff.per_seed.items()))
            + f" | {diff.verdict()} |"
            for d in datasets
            for label, diff in paired[d].items()
        ],
        "",
        f"Majority-class floor: {', '.join(f'{d} {majority[d]:.3f}' for d in datasets)}.",
        "",
        "## Reading",
        "",
        " ".join(
            _reading(d, {r.method: r for r in rows if r.dataset == d}, paired[d], majority[d], unparsed[d])
            for d in datasets
        )
        + " "
        + CAVEAT,
        "",
    ]

    def by_seed(values: dict[tuple[str, str, int], float]) -> dict[str, dict[str, dict[str, float]]]:
        return {
            d: {m: {str(s): values[d, m, s] for s in seeds if (d, m, s) in values} for m in LABELS} for d in datasets
        }

    fields = {
        "student_overrides": student_overrides,
        "ablations": {v: list(extra) for v, extra in ABLATIONS.items()},
        "majority_class_accuracy": majority,
        "runs": [asdict(r) for r in results],
        "per_seed_accuracy": by_seed(acc),
        "per_seed_generation_accuracy": by_seed(generation),
        "summary": [asdict(r) for r in rows],
        "paired_minus_ft_io": {
            d: {
                label: {
                    "mean": diff.mean,
                    "std": diff.std,
                    "ci95": list(diff.ci95) if diff.ci95 else None,
                    "per_seed": {str(s): x for s, x in diff.per_seed.items()},
                }
                for label, diff in paired[d].items()
            }
            for d in datasets
        },
    }
    summary = harness.write_results(out, md, EXPERIMENT, wall_s, budget, fields)
    write_plot(rows, majority, out / "accuracy.png")
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_out_arguments(parser, Path("bench_results/knife"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), default=list(DATASETS))
    parser.add_argument("--quick", action="store_true", help="smoke size: 24 steps, seed 0, small dev, synthetic")
    parser.add_argument("--max-steps", type=int, help="override every dataset's step budget")
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite the reports from <out>/results.json without training"
    )
    parser.add_argument(
        "--student-override", action="append", default=[], metavar="KEY=VALUE",
        help="extra config for the KNIFE student only, e.g. method.knife.output_loss=kl (repeatable)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    seeds, datasets = ([0], ["synthetic"]) if args.quick else (args.seeds, args.datasets)
    out = args.out.resolve()
    if args.report_only:
        saved = json.loads((out / "results.json").read_text())
        runs = [RunResult(**run) for run in saved["runs"]]
        write_report(out, runs, saved["budget"], saved["student_overrides"], saved["wall_time_s"])
        print((out / "results.md").read_text())
        return
    harness.prepare_out(out, _ARTIFACTS, args.resume)

    budget: dict[str, Any] = {"quick": args.quick, "parallel": harness.PARALLEL, "datasets": {}}
    teachers = []
    for dataset in datasets:
        steps = args.max_steps or (QUICK["max_steps"] if args.quick else DATASETS[dataset]["max_steps"])
        overrides = _base_overrides(out, dataset, steps, args.quick)
        budget["datasets"][dataset] = {"max_steps": steps, "overrides": overrides[len(_COMMON) :]}
        teachers += [Job(dataset, TEACHER, seed, tuple(overrides)) for seed in seeds]
    jobs = plan_jobs(teachers, out, args.student_override)
    start = time.perf_counter()
    finished = finished_results(out, jobs) if args.resume else {}
    results = run_all(jobs, out, finished)
    summary = write_report(out, results, budget, args.student_override, time.perf_counter() - start, len(finished))
    harness.print_report(out, summary["wall_time_s"])


if __name__ == "__main__":
    main()
