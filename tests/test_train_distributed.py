"""Data-parallel training under msrun on CPU: 2 workers through scripts/run_train_distributed.sh.

Both ranks must end with identical weights (each logs a digest of its trained weights), the loss must
go down, and only rank 0 writes outputs.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.processes import free_port, kill_tree
from tests.helpers.training import train_env, write_image_folder, write_micro_model

REPO = Path(__file__).resolve().parent.parent
LAUNCHER = REPO / "scripts" / "run_train_distributed.sh"


@pytest.mark.timeout(600)
def test_msrun_two_workers_stay_in_sync_and_learn(tmp_path):
    data = write_image_folder(tmp_path / "data")
    model_cfg = write_micro_model(tmp_path / "micro.yaml")
    out, logs = tmp_path / "out", tmp_path / "msrun_logs"
    steps = 8
    cmd = [
        "bash", str(LAUNCHER), "--worker_num", "2", "--local_worker_num", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(free_port()), "--node_rank", "0", "--log_dir", str(logs), "--",
        "--data_path", str(data), "--model_config", str(model_cfg), "--output_dir", str(out),
        "--resolution", "16", "--train_batch_size", "2", "--max_train_steps", str(steps),
        "--learning_rate", "1e-3", "--lr_scheduler", "constant", "--checkpointing_steps", "4",
        "--logging_steps", "1", "--dataloader_num_workers", "0", "--mode", "graph", "--device_target", "CPU",
        "--seed", "3",
    ]
    proc = subprocess.Popen(cmd, env=train_env(tmp_path / "ms_cache"), cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=480)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        proc.communicate()
        pytest.fail("msrun run did not finish in time")
    worker_logs = {i: (logs / f"worker_{i}.log").read_text(errors="replace") for i in (0, 1)}
    assert proc.returncode == 0, output[-2000:] + worker_logs[0][-2000:] + worker_logs[1][-2000:]

    digests = {}
    for rank, text in worker_logs.items():
        assert f"CPU, graph mode, rank {rank} of 2" in text
        found = re.findall(r"final weights digest (\w+) \(rank (\d)\)", text)
        assert found and int(found[-1][1]) == rank, text[-2000:]
        digests[rank] = found[-1][0]
    assert digests[0] == digests[1], "the two ranks ended with different weights"

    from mindone.train.metrics import read_metrics

    loss = [r["loss"] for r in read_metrics(out / "metrics.csv")]
    assert len(loss) == steps
    assert np.mean(loss[-3:]) < 0.8 * np.mean(loss[:2]), loss
    # Only rank 0 writes: one log file, whose lines all carry rank 0.
    train_log = (out / "train.log").read_text()
    assert "[rank 0]" in train_log and "[rank 1]" not in train_log
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-4", "checkpoint-8"]
