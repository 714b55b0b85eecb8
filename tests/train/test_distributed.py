"""Distributed training with real processes: 2 × torchrun/gloo equals 1 process on the same global batch.

One ``torchrun --nproc_per_node 2`` launch runs every 2-process job (``_ddp_worker.py``, so the imports are
paid once); the 1-process references run here. Each job trains 3 steps of the tiny model, deterministic.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from euclip.train.config import resolve_config
from euclip.data.sampling import GlobalBatchSampler
from euclip.train.loop import train

PRESETS = ("clip", "euclip", "meru")
# The loss options that must all give the gradient of the global loss: local rows with a differentiable
# gather; the global matrix with a differentiable gather; and the global matrix without it (exact by scaling).
MODES = {"local+gather": dict(local_loss=True, gather_with_grad=True), "gather": dict(gather_with_grad=True),
         "no-gather": {}}
# The brief's matrix, every preset with both gathers; the gradient scaling of "no-gather" does not depend on the
# geometry, so meru (curvature, α and entailment paths) alone runs it.
CASES = [(preset, mode) for preset in PRESETS for mode in ("local+gather", "gather")] + [("meru", "no-gather"),
                                                                                         ("meru", "accum")]
STEPS = 3
TOLERANCE = 1e-5  # float32: summation orders differ between one and two processes
# AdamW with eps far above the gradients is SGD with step lr/eps: parameter updates are proportional to the
# gradients, so equal parameters mean equal gradients. (With the usual eps, Adam would normalise away a
# gradient wrongly scaled by 1/W, and amplify float noise in directions of zero gradient, such as the
# attention's key bias, to ~lr·noise/eps.)
SGD_LIKE = dict(lr=0.05, eps=1.0, wd=0.0)


def _jobs(root: Path, th, csv: Path) -> list[dict]:
    common = {**th.BASE_OPTIONS, **SGD_LIKE, "steps": STEPS, "save_every_steps": 100}
    jobs = [{"name": f"{preset}/{mode}", "options": {**common, "preset": preset, "batch_size": 8, **flags,
                                                     "output": str(root / preset / mode)}}
            for preset in PRESETS for mode, flags in MODES.items() if (preset, mode) in CASES]
    # Gradient checkpointing under DDP (recomputation in backward must not upset DDP's gradient hooks): it
    # must not change the result either.
    next(j for j in jobs if j["name"] == "euclip/gather")["options"]["grad_checkpointing"] = True
    # Accumulation across processes: 2 processes x 2 micro-batches x 4 = the same 16 samples per step.
    jobs.append({"name": "meru/accum", "options": {**common, "preset": "meru", "batch_size": 4, "accum_freq": 2,
                                                   "local_loss": True, "gather_with_grad": True,
                                                   "output": str(root / "meru" / "accum")}})
    # SIGTERM reaches process 1 alone, after its first step: both processes must stop after the same step,
    # with a checkpoint of it, and a resume must continue exactly.
    sigterm = {**common, "preset": "clip", "batch_size": 8, "local_loss": True, "gather_with_grad": True,
               "output": str(root / "clip" / "sigterm")}
    jobs.append({"name": "clip/sigterm", "options": sigterm, "sigterm_rank": 1, "sigterm_after_steps": 1})
    # The resume goes through the CLI, evaluation included: rank 0 alone must evaluate and write results.
    jobs.append({"name": "clip/sigterm-resume", "cli": ["train", *th.base_args(**{**sigterm, "resume": "latest"})]})
    jobs.append({"name": "reject", "options": {**common, "preset": "clip", "batch_size": 8, "local_loss": True,
                                               "output": str(root / "reject")}})
    # One unreadable image: one process's batch has 7 samples, the other's 8; both must train on 7.
    jobs.append({"name": "csv/uneven", "options": {**common, "dataset_type": "csv", "train_data": str(csv),
                                                   "batch_size": 8, "steps": 2, "gather_with_grad": True,
                                                   "output": str(root / "csv")}})
    return jobs


@pytest.fixture(scope="module")
def runs(tmp_path_factory, th):
    root = tmp_path_factory.mktemp("ddp")
    csv = th.write_csv_dataset(root / "data", 16, bad={5})
    jobs_file, results_file = root / "jobs.json", root / "results.json"
    jobs_file.write_text(json.dumps(_jobs(root, th, csv)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(Path(__file__).parent / "_ddp_worker.py"), str(jobs_file), str(results_file)],
                          env=env, cwd=th.REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-5000:]
    outcomes = json.loads(results_file.read_text())
    for preset in PRESETS:  # one process, the whole global batch of 16
        train(resolve_config({**th.BASE_OPTIONS, **SGD_LIKE, "steps": STEPS, "save_every_steps": 100, "preset": preset,
                              "batch_size": 16, "output": str(root / preset / "reference")}))
    return root, outcomes


pytestmark = pytest.mark.slow


@pytest.mark.parametrize(("preset", "mode"), CASES)
def test_two_processes_equal_one_on_the_global_batch(runs, th, preset, mode):
    root, outcomes = runs
    assert outcomes[f"{preset}/{mode}"] == ["ok", "ok"]
    run, reference = root / preset / mode, root / preset / "reference"
    assert [m["step"] for m in th.metrics(run)] == list(range(1, STEPS + 1))  # rank 0 alone logs
    got, want = th.losses(run), th.losses(reference)
    assert max(abs(a - b) for a, b in zip(got, want)) <= TOLERANCE, (got, want)
    assert th.max_abs_diff(th.model_state(run), th.model_state(reference)) <= TOLERANCE
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_batch_size"] == 16 and summary["samples_seen"] == 48


def test_sigterm_on_one_process_stops_all_at_the_same_step_and_resumes_exactly(runs, th):
    root, outcomes = runs
    assert outcomes["clip/sigterm"] == ["exit 143", "exit 143"]
    assert outcomes["clip/sigterm-resume"] == ["exit 0", "exit 0"]
    run = root / "clip" / "sigterm"
    results = json.loads((run / "results.json").read_text())  # written once, by rank 0
    assert 0 <= results["metrics"]["zeroshot.top1"] <= 1
    # Process 1 was signalled during step 1; the processes agree on it before step 2 and stop after it.
    assert [m["step"] for m in th.metrics(run)] == [1, 2, 3]
    assert th.max_abs_diff(th.model_state(run), th.model_state(root / "clip" / "reference")) <= TOLERANCE
    assert th.max_abs_diff(th.model_state(run, "step_00000002.pt"), th.model_state(run, "step_00000003.pt")) > 0


def test_local_loss_without_gather_with_grad_is_rejected(runs):
    _, outcomes = runs
    for outcome in outcomes["reject"]:
        assert outcome.startswith("ValueError: --local-loss needs --gather-with-grad"), outcome


def test_uneven_batches_are_cut_to_the_smallest(runs, th):
    root, outcomes = runs
    assert outcomes["csv/uneven"] == ["ok", "ok"]
    summary = json.loads((root / "csv" / "summary.json").read_text())
    # 16 rows, one unreadable, global batch 16: every step reads every row; one process gets 7 good samples,
    # so the other drops one to match; 2 steps x 14 samples trained.
    assert summary["skipped_samples"] == 2 and summary["dropped_samples"] == 2 and summary["samples_seen"] == 28


def test_processes_take_disjoint_slices_that_make_up_the_global_batch():
    one = iter(GlobalBatchSampler(100, 16, seed=3, rank=0, world_size=1, start_step=2))
    two = [iter(GlobalBatchSampler(100, 8, seed=3, rank=r, world_size=2, start_step=2)) for r in range(2)]
    for _ in range(8):  # crosses the epoch boundary (6 steps per epoch)
        whole = next(one)
        halves = [next(t) for t in two]
        assert halves[0] + halves[1] == whole and not set(halves[0]) & set(halves[1])
