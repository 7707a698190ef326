"""Faults injected into real runs on a real multi-node Ray cluster: the run survives, with nothing lost.

The cluster (conftest.py) is a Ray head and a second node, each in its own network namespace, checkpoints in
an S3 store (moto server), MLflow as a tracking server over PostgreSQL. Every run is the same tiny t5-tiny
job (2 Ray Train workers, one per node, 8 steps, a checkpoint every 2); faults are placed with failpoints
(trainer/failpoints.py) that pause a process at an exact step, then the test kills it from outside.
docs/reliability.md tabulates what each test shows.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient
from ray.job_submission import JobSubmissionClient

from support.cluster import HEAD, FaultCluster
from support.failpoints import Failpoints
from tests.ray_jobs.reliability.conftest import CANARIES, Submission, submit_async

pytestmark = [pytest.mark.slow, pytest.mark.reliability]
EXPERIMENT = "reliability"
STEPS = 8


def overrides(cluster: FaultCluster, data: Path, name: str, workdir: Path) -> list[str]:
    return [
        f"data.data_dir={data}",
        "data.max_train_examples=64",
        "data.max_dev_examples=8",
        "data.max_input_length=64",
        "data.max_target_length=8",
        "model.tokenizer_vocab_size=600",
        f"optim.max_steps={STEPS}",
        "optim.micro_batch_size=4",
        "optim.warmup_steps=1",
        "run.num_workers=2",
        "run.save_every=2",
        "run.max_failures=3",
        f"run.name={name}",
        f"run.storage_path={cluster.storage_uri(name)}",
        f"run.output_dir={workdir / 'out'}",
        "run.eval_batch_size=8",
        "tracking.log_every=1",
        "tracking.log_model=false",  # weights are compared from the final checkpoint in S3
        f"tracking.experiment={EXPERIMENT}",
    ]


def client_for(cluster: FaultCluster) -> MlflowClient:
    return MlflowClient(cluster.tracking_uri)


def the_run(cluster: FaultCluster, name: str) -> mlflow.entities.Run:
    """The one MLflow run with this name, or whose templated name starts with it (`name · dataset · ...`); a restart
    must not have opened a second one."""
    client = client_for(cluster)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    ids = [experiment.experiment_id]
    runs = client.search_runs(ids, filter_string=f"attributes.run_name = '{name}'")
    [run] = runs or client.search_runs(ids, filter_string=f"attributes.run_name LIKE '{name} · %'")
    return run


def loss_history(cluster: FaultCluster, run_id: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client_for(cluster).get_metric_history(run_id, "train/loss"))


def assert_same_as_reference(cluster: FaultCluster, name: str) -> None:
    """One loss per step, every step there, each equal to the uninterrupted run's; same dev accuracy and weights."""
    run, reference = the_run(cluster, name), the_run(cluster, "reference")
    history = loss_history(cluster, run.info.run_id)
    assert [step for step, _ in history] == list(range(1, STEPS + 1)), history
    assert history == loss_history(cluster, reference.info.run_id)
    assert run.data.metrics["dev/accuracy"] == reference.data.metrics["dev/accuracy"]
    assert run.data.metrics["train/steps"] == STEPS and run.info.status == "FINISHED"
    got, want = cluster.checkpoint_weights(name), cluster.checkpoint_weights("reference")
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want), "weights differ from the uninterrupted run"


def finished(submission: Submission, what: str) -> str:
    code, output = submission.wait()
    assert code == 0, f"{what}: submitter exited {code}\n{output[-6000:]}"
    return output


def pause_at(name: str, step: int, rank: int, point: str = "train.step", action: str = "pause") -> dict:
    return {"name": point, "when": {"step": step, "rank": rank, "run": name}, "action": action}


@pytest.fixture(scope="module")
def reference(fault_cluster: FaultCluster, shared_data: Path, tmp_path_factory: pytest.TempPathFactory, say) -> dict:
    """The uninterrupted run. It pauses once at step 1 to record where Ray Train placed its two workers."""
    workdir = tmp_path_factory.mktemp("reference")
    points = Failpoints(workdir / "fp", [pause_at("reference", 1, 0), pause_at("reference", 1, 1)])
    started = time.monotonic()
    job = submit_async(fault_cluster, overrides(fault_cluster, shared_data, "reference", workdir), workdir, points)
    placement = {}
    for index in (0, 1):
        info = points.wait_fired(index, 600, job.alive)
        placement[info["context"]["rank"]] = fault_cluster.node_of_pid(info["pid"])
        points.release(index)
    output = finished(job, "reference run")
    say(f"[reference] uninterrupted run: {time.monotonic() - started:.0f}s")
    return {"placement": placement, "output": output, "job_id": output.split("[submit] job ", 1)[1].split()[0]}


@pytest.fixture(scope="module")
def chaos_run(fault_cluster: FaultCluster, shared_data: Path, reference: dict, tmp_path_factory, say) -> dict:
    """One run through three faults, in order:
    1. MLflow server SIGKILLed when rank 0 reaches step 1, started again at step 3 (training runs on);
    2. rank 1 SIGKILLs itself while saving the step-4 checkpoint (DeepSpeed files written, shard not sealed);
    3. rank 1 SIGKILLed from outside at step 7, once Ray Train registered the step-6 checkpoint.
    """
    name, workdir = "chaos", tmp_path_factory.mktemp("chaos")
    points = Failpoints(
        workdir / "fp",
        [
            pause_at(name, 1, 0),
            pause_at(name, 3, 0),
            pause_at(name, 4, 1, point="checkpoint.save", action="kill"),
            pause_at(name, 7, 1),
        ],
    )
    job = submit_async(fault_cluster, overrides(fault_cluster, shared_data, name, workdir), workdir, points)
    points.wait_fired(0, 600, job.alive)
    fault_cluster.mlflow.process.kill()
    down_at = time.monotonic()
    points.release(0)
    points.wait_fired(1, 600, job.alive)
    fault_cluster.mlflow.start()
    outage_s = time.monotonic() - down_at
    points.release(1)
    victim = points.wait_fired(3, 600, job.alive)
    fault_cluster.wait_registered_step(name, 6)
    killed_at = time.monotonic()
    os.kill(victim["pid"], signal.SIGKILL)
    output = finished(job, name)
    recovered_s = time.monotonic() - killed_at
    say(f"[chaos] MLflow down {outage_s:.0f}s; after the step-7 SIGKILL the run finished in {recovered_s:.0f}s")
    return {"run": the_run(fault_cluster, name), "output": output, "torn": points.fired(2)}


def test_workers_on_two_nodes_checkpoints_in_s3(fault_cluster: FaultCluster, reference: dict) -> None:
    assert sorted(reference["placement"].values()) == sorted(fault_cluster.node_names), reference["placement"]
    keys = fault_cluster.s3.list_keys("checkpoints", "reference/")
    assert any("checkpoint_" in key and "manifest-rank1" in key for key in keys), keys[:20]
    assert fault_cluster.registered_checkpoint("reference")["metrics"]["train/steps"] == STEPS


def test_mlflow_unreachable_during_training(fault_cluster: FaultCluster, chaos_run: dict) -> None:
    """Steps 1-3 trained while the tracking server was down; their metrics were buffered and delivered once it
    was back, one value per step, none lost or doubled (also across the two worker-group restarts)."""
    history = loss_history(fault_cluster, chaos_run["run"].info.run_id)
    assert [step for step, _ in history] == list(range(1, STEPS + 1)), history


def test_checkpoint_write_interrupted(fault_cluster: FaultCluster, chaos_run: dict) -> None:
    """The save of step 4 was cut by a SIGKILL; the restart used the complete step-2 checkpoint."""
    tags = chaos_run["run"].data.tags
    assert chaos_run["torn"]["context"] == {"step": 4, "rank": 1, "run": "chaos"}
    assert tags["reasondistill.restarts.1"] == "resumed from step 2: worker group restarted by Ray Train"


def test_worker_sigkilled_mid_epoch(fault_cluster: FaultCluster, chaos_run: dict) -> None:
    """Rank 1 SIGKILLed at step 7: Ray Train restarted the worker group from the step-6 checkpoint, and the run
    ended equal to the uninterrupted one (losses, dev accuracy, weights) in the same MLflow run."""
    tags = chaos_run["run"].data.tags
    assert tags["reasondistill.restarts"] == "2" and tags["resumed_from_step"] == "6"
    assert tags["reasondistill.restarts.2"] == "resumed from step 6: worker group restarted by Ray Train"
    assert_same_as_reference(fault_cluster, "chaos")


def test_node_lost_then_back(fault_cluster: FaultCluster, shared_data: Path, reference: dict, tmp_path: Path, say):
    """Every process of the worker node is SIGKILLed at step 5; the node is started again; the run resumes."""
    name = "node-loss"
    points = Failpoints(tmp_path / "fp", [pause_at(name, 5, 0), pause_at(name, 5, 1)])
    job = submit_async(fault_cluster, overrides(fault_cluster, shared_data, name, tmp_path), tmp_path, points)
    fired = [points.wait_fired(i, 600, job.alive) for i in (0, 1)]
    fault_cluster.wait_registered_step(name, 4)
    lost = next(node for f in fired if (node := fault_cluster.node_of_pid(f["pid"])) != HEAD)
    killed_at = time.monotonic()
    assert fault_cluster.kill_node(lost) > 0
    for index in (0, 1):
        points.release(index)
    deadline = time.monotonic() + 120
    while len(fault_cluster.alive_nodes()) == len(fault_cluster.node_names) and time.monotonic() < deadline:
        time.sleep(0.5)
    fault_cluster.start_node(lost)
    fault_cluster.wait_for_nodes(len(fault_cluster.node_names))
    finished(job, name)
    run = the_run(fault_cluster, name)
    assert run.data.tags["reasondistill.restarts"] == "1" and run.data.tags["resumed_from_step"] == "4"
    assert_same_as_reference(fault_cluster, name)
    say(f"[node loss] node {lost} back and run finished {time.monotonic() - killed_at:.0f}s after the loss")


KNIFE_PIPELINE = """
pipeline:
  name: {name}
  base:
    model: {{name: t5-tiny, tokenizer_vocab_size: 400}}
    data: {{dataset: synthetic, rationale_source: llm_random, max_input_length: 48, max_rationale_length: 32,
           max_target_length: 6, max_train_examples: 64, max_dev_examples: 8}}
    optim: {{max_steps: {steps}, micro_batch_size: 4, warmup_steps: 1}}
    run: {{num_workers: 2, save_every: 2, max_failures: 1, storage_path: "{storage}", output_dir: "{out}",
          eval_batch_size: 8}}
    tracking: {{experiment: {experiment}, log_every: 1}}
  stages:
    - {{name: teacher, overrides: {{method: {{name: knife_teacher}}, optim: {{max_steps: 4}}}}}}
    - {{name: student, teacher: teacher, overrides: {{method: {{name: knife_student}}}}}}
"""


def test_driver_killed_then_resubmitted_pipeline(fault_cluster: FaultCluster, tmp_path: Path, say) -> None:
    """A KNIFE pipeline's job driver is SIGKILLed while the student trains (step 5); the same file submitted
    again skips the finished teacher, resumes the student from its step-4 checkpoint into the same MLflow run."""
    name = "knife-resume"
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        KNIFE_PIPELINE.format(
            name=name,
            steps=STEPS,
            storage=fault_cluster.storage_uri(name),
            out=tmp_path / "out",
            experiment=EXPERIMENT,
        )
    )
    points = Failpoints(
        tmp_path / "fp",
        [{"name": "train.step", "when": {"step": 5, "rank": 0, "run": f"{name}-student"}, "action": "pause"}],
    )
    first = submit_async(fault_cluster, [str(config)], tmp_path, points)
    points.wait_fired(0, 900, first.alive)
    # Teacher and student share one worker group: one Ray Train run holds both stages' checkpoints.
    fault_cluster.wait_registered_step(f"{name}-teacher-to-student", 4, prefix=name, stage="student")
    teacher_before, student_before = the_run(fault_cluster, "teacher"), the_run(fault_cluster, "student")
    # The Python process itself, not the `sh -c` Ray may start it under.
    drivers = [p for p in fault_cluster.processes(HEAD) if "ray_jobs.pipeline_job" in p.cmdline()]
    assert len(drivers) == 1, drivers
    killed_at = time.monotonic()
    drivers[0].send_signal(signal.SIGKILL)
    code, output = first.wait()
    assert code == 1, output[-4000:]

    second = submit_async(fault_cluster, [str(config)], tmp_path)
    output = finished(second, "re-submitted pipeline")
    say(f"[driver kill] re-submitted pipeline finished {time.monotonic() - killed_at:.0f}s after the kill")
    assert "stage teacher: finished in an earlier attempt, skipped" in output
    teacher, student = the_run(fault_cluster, "teacher"), the_run(fault_cluster, "student")
    assert teacher.info.run_id == teacher_before.info.run_id and "reasondistill.restarts" not in teacher.data.tags
    assert teacher.info.end_time == teacher_before.info.end_time  # not touched by the second attempt
    assert student.info.run_id == student_before.info.run_id and student.info.status == "FINISHED"
    assert student.data.tags["resumed_from_step"] == "4"
    assert "job submitted again" in student.data.tags["reasondistill.restarts.1"]
    assert [s for s, _ in loss_history(fault_cluster, student.info.run_id)] == list(range(1, STEPS + 1))
    parent = the_run(fault_cluster, name)
    assert parent.info.status == "FINISHED" and teacher.data.tags["mlflow.parentRunId"] == parent.info.run_id


def test_no_secret_in_anything_the_run_wrote(fault_cluster: FaultCluster, reference: dict, tmp_path: Path) -> None:
    """Every process held canary secrets; none may appear in MLflow, Ray job metadata, logs or checkpoints."""
    run = the_run(fault_cluster, "reference")
    places: dict[str, bytes] = {
        "mlflow params/tags/metrics": json.dumps([run.data.params, run.data.tags, list(run.data.metrics)]).encode(),
        "submitter output": reference["output"].encode(),
    }
    artifacts = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, dst_path=str(tmp_path / "artifacts"), tracking_uri=fault_cluster.tracking_uri
    )
    places.update({f"artifact {p.name}": p.read_bytes() for p in Path(artifacts).rglob("*") if p.is_file()})
    jobs = JobSubmissionClient(fault_cluster.dashboard_url)
    info = jobs.get_job_info(reference["job_id"])
    places["ray job info"] = json.dumps(
        {"metadata": info.metadata, "runtime_env": info.runtime_env, "entrypoint": info.entrypoint}, default=str
    ).encode()
    places["ray job logs"] = jobs.get_job_logs(reference["job_id"]).encode()
    for key in fault_cluster.s3.list_keys("checkpoints", "reference/"):
        places[f"s3 {key}"] = fault_cluster.s3.read("checkpoints", key)
    for path in fault_cluster.temp_dir.rglob("*"):
        if (
            path.is_file()
            and not path.is_symlink()
            and path.stat().st_size < 50_000_000
            and "sockets" not in path.parts
        ):
            places[f"ray log {path.name}"] = path.read_bytes()
    leaks = [
        (where, name) for where, blob in places.items() for name, value in CANARIES.items() if value.encode() in blob
    ]
    assert not leaks, leaks
    assert len(places) > 20  # the search really covered the run's outputs
