"""The metadata filter and the image download on a real Spark standalone cluster (one master, one worker).

The master and the worker are started from pyspark's own ``bin/spark-class`` on 127.0.0.1. The worker runs in an
empty folder with no PYTHONPATH and a ``PYSPARK_PYTHON`` of its own that does not exist, so its executors can
neither import this repository nor run the worker's interpreter setting. What the tests show:

* the filter (``--engine spark --master spark://...``) returns the arrow engine's rows and counts while the
  driver's ``PYSPARK_PYTHON`` names a file that does not exist: its executors start no Python at all;
* the download (``--distributor pyspark --spark_master spark://... --insecure_ssl``) fills its shards from a
  self-signed HTTPS server with the driver's ``PYSPARK_PYTHON`` naming an interpreter that has img2dataset but
  cannot import ``mindone``: the executors run the driver's interpreter (not the worker's), and the certificate
  patch reaches them by value;
* after the teardown no process of the cluster survives (master, worker, executors, Python daemons).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers.image_server import BIG_SIZE, ImageServer
from tests.helpers.metadata import FILTER_CLI, canonical, make_inputs, read_dir
from tests.helpers.processes import free_port
from tests.helpers.tools import load_tool

REPO = Path(__file__).resolve().parent.parent
DOWNLOAD_SH = REPO / "tools" / "laion_data_utils" / "laion_download_imgs.sh"
MISSING_PYTHON = "/nonexistent/python-of-the-{}"

# the timeout covers the module's cluster start (at most 90 s) in the first test's setup
pytestmark = [pytest.mark.slow, pytest.mark.spark, pytest.mark.timeout(300)]


def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without anything that would let Python find this checkout or pick an
    interpreter behind the test's back, plus ``extra``."""
    drop = {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON", "SPARK_HOME",
            "SPARK_CONF_DIR", "PYSPARK_SUBMIT_ARGS", "VIRTUAL_ENV"}
    return {**{k: v for k, v in os.environ.items() if k not in drop}, "SPARK_LOCAL_IP": "127.0.0.1", **extra}


def _group_members(pgids: set[int]) -> list[tuple[int, str]]:
    """Live (not zombie) processes of the given process groups, as (pid, command line)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmd = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) in pgids:
            found.append((int(stat.parent.name), cmd[:200]))
    return found


def _stop_group(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM the process group ``proc`` leads (it was started in its own session), SIGKILL what is left."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.time() + wait
        while time.time() < deadline and _group_members({proc.pid}):
            try:
                proc.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                pass
        if not _group_members({proc.pid}):
            break
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def _own_session_dying_with_us() -> None:
    """preexec_fn: a new session (so the whole group can be signalled), and SIGKILL when this test process dies,
    so a killed pytest leaves no cluster behind (Linux; the exec'd JVM keeps the setting)."""
    os.setsid()
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.is_file() else f"({path} missing)"


class Cluster:
    """A standalone master and one worker (1 core, 1 GB) on 127.0.0.1, started from pyspark's spark-class."""

    def __init__(self, root: Path) -> None:
        import pyspark

        self.root = root
        self.spark_home = Path(pyspark.__file__).parent
        self.port, self.ui_port, self.worker_ui_port = free_port(), free_port(), free_port()
        self.url = f"spark://127.0.0.1:{self.port}"
        self.worker_cwd = root / "worker_cwd"  # empty: nothing to import from the worker's side
        self.work_dir = root / "worker_work"
        self.procs: list[subprocess.Popen] = []
        self.pgids: set[int] = set()  # every process group this test started (cluster and driver commands)

    def _start(self, name: str, args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process below
        try:
            proc = subprocess.Popen(["bash", str(self.spark_home / "bin" / "spark-class"), *args], cwd=cwd, env=env,
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    preexec_fn=_own_session_dying_with_us)
        finally:
            log.close()
        self.procs.append(proc)
        self.pgids.add(proc.pid)
        return proc

    def start(self) -> None:
        self.worker_cwd.mkdir()
        self.work_dir.mkdir()
        daemon_env = dict(SPARK_HOME=str(self.spark_home), SPARK_DAEMON_MEMORY="384m")
        self._start("master", ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port",
                               str(self.port), "--webui-port", str(self.ui_port)], self.root, _clean_env(**daemon_env))
        # the worker's own interpreter setting names nothing: if executors used it, every Python task would fail
        worker_env = _clean_env(**daemon_env, PYSPARK_PYTHON=MISSING_PYTHON.format("worker"), NO_ALBUMENTATIONS_UPDATE="1")
        self._start("worker", ["org.apache.spark.deploy.worker.Worker", self.url, "--cores", "1", "--memory", "1g",
                               "--host", "127.0.0.1", "--webui-port", str(self.worker_ui_port), "--work-dir",
                               str(self.work_dir)], self.worker_cwd, worker_env)
        deadline = time.time() + 90
        while True:
            for name, proc in zip(("master", "worker"), self.procs):
                assert proc.poll() is None, f"{name} exited {proc.returncode}:\n{_tail(self.root / f'{name}.log')}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.ui_port}/json/", timeout=5) as r:
                    state = json.load(r)
                if state.get("aliveworkers") == 1 and state.get("status") == "ALIVE":
                    return
            except (OSError, ValueError):
                pass
            assert time.time() < deadline, (f"worker did not register in 90 s\nMASTER:\n{_tail(self.root / 'master.log')}"
                                            f"\nWORKER:\n{_tail(self.root / 'worker.log')}")
            time.sleep(1)

    def run(self, cmd: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
        """A driver command in its own process group (so its gateway JVM is accounted for at teardown)."""
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, preexec_fn=_own_session_dying_with_us)
        self.pgids.add(proc.pid)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop_group(proc, grace=5)
            raise
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err)

    def executor_logs(self) -> str:
        return "\n".join(f"--- {p}\n{_tail(p, 2000)}" for p in sorted(self.work_dir.glob("app-*/*/stderr")))

    def apps(self) -> list[dict]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ui_port}/json/", timeout=5) as r:
            return json.load(r).get("completedapps", [])

    def stop(self) -> None:
        for proc in reversed(self.procs):  # the worker first: it stops its executors
            _stop_group(proc)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    import shutil

    if shutil.which("java") is None:
        pytest.skip("java not found: a Spark cluster needs a JDK")
    c = Cluster(tmp_path_factory.mktemp("spark_cluster"))
    try:
        c.start()
        yield c
    finally:
        c.stop()
        survivors = _group_members(c.pgids)
        survivors += [(pid, cmd) for pid, cmd in _cmdlines_mentioning((c.url, str(c.work_dir), str(c.root)))
                      if (pid, cmd) not in survivors]
        assert not survivors, f"processes of the test cluster survived its teardown: {survivors}"


def _cmdlines_mentioning(needles: tuple[str, ...]) -> list[tuple[int, str]]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            cmd = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (cmdline.parent / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        mentions = any(re.search(re.escape(n) + r"(?=[\s/]|$)", cmd) for n in needles)  # :4000 is not :40001
        if state != "Z" and int(cmdline.parent.name) != os.getpid() and mentions:
            found.append((int(cmdline.parent.name), cmd[:200]))
    return found


def test_filter_on_a_cluster_matches_arrow_and_runs_no_python_on_executors(cluster, tmp_path):
    data = tmp_path / "in"
    make_inputs(data, "improved_aesthetics_4.5plus", files=2, rows=1500, seed=11)
    make_inputs(data, "laion-art", files=1, rows=1500, seed=12)  # another spelling of the columns
    flags = ["--data_dir", str(data), "--no_progress", "--dedup", "url", "--shuffle", "--seed", "5", "--num_parts", "2"]
    cli = load_tool("laion_filter_metadata")
    arrow = cli.run_filter(cli.parse_options([*flags, "--output_dir", str(tmp_path / "arrow")]))

    # PYSPARK_PYTHON names no interpreter: a single Python worker on an executor would fail the job
    env = _clean_env(PYSPARK_PYTHON=MISSING_PYTHON.format("driver"))
    proc = cluster.run([sys.executable, str(FILTER_CLI), *flags, "--output_dir", str(tmp_path / "spark"), "--engine",
                        "spark", "--master", cluster.url, "--driver_memory", "600m"], env, timeout=170)
    assert proc.returncode == 0, f"{proc.stderr[-3000:]}\nEXECUTORS:\n{cluster.executor_logs()}"
    assert f"spark session: master {cluster.url}" in proc.stderr
    spark = json.loads((tmp_path / "spark" / "filter_report.json").read_text())
    for key in ("files", "rows_in", "removed_by_condition", "failed_by_condition", "rows_after_conditions",
                "dedup_removed", "rows_out", "conditions", "skipped_conditions"):
        assert spark[key] == arrow[key], key
    assert spark["engine"] == "spark" and arrow["rows_out"] > 300 and arrow["dedup_removed"] > 0
    assert canonical(read_dir(tmp_path / "arrow", "part_*.parquet")) == canonical(
        read_dir(tmp_path / "spark", "part_*.parquet"))
    assert sorted(p.name for p in (tmp_path / "spark").iterdir()) == [
        "filter_report.json", "part_1.parquet", "part_2.parquet"]
    # the job ran on the worker's executor, not in the driver
    apps = [a for a in cluster.apps() if a.get("name") == "laion_filter_metadata"]
    assert apps and list(cluster.work_dir.glob(f"{apps[-1]['id']}/*/stderr")), cluster.apps()


def _executor_python(root: Path) -> tuple[Path, Path]:
    """An interpreter with img2dataset and pyspark but without this repository, behind a script that logs each
    start (the venv's own python would find ``mindone`` through its editable install)."""
    venv = root / "executor_venv"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(venv)], check=True,  # noqa: SLF001
                   capture_output=True, timeout=60)
    site = next(venv.glob("lib/python3*/site-packages"))
    here = next(Path(sys.prefix).glob("lib/python3*/site-packages"))
    (site / "test_deps.pth").write_text(f"{here}\n")  # a path line: the .pth files there (editable finder) stay off
    log = root / "executor_python.log"
    wrapper = root / "executor-python"
    wrapper.write_text(f'#!/bin/sh\necho "$PWD $*" >> "{log}"\nexec "{venv}/bin/python" "$@"\n')
    wrapper.chmod(0o755)
    return wrapper, log


def test_download_on_a_cluster_runs_the_drivers_interpreter_and_ships_the_cert_patch(cluster, tmp_path):
    wrapper, started = _executor_python(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    probe = subprocess.run([str(wrapper), "-c", "import img2dataset, pyspark\nimport mindone"], cwd=empty,
                           env=_clean_env(NO_ALBUMENTATIONS_UPDATE="1"), capture_output=True, text=True, timeout=60)
    assert "No module named 'mindone'" in probe.stderr, probe.stderr  # img2dataset imports, this checkout does not
    started.unlink()

    meta, out = tmp_path / "meta", tmp_path / "out"
    meta.mkdir()
    with ImageServer(https=True) as srv:  # self-signed: only the patched downloader gets these
        urls = [srv.url("good", i) for i in range(4)] + [srv.url("big", 4), srv.url("missing", 5)]
        pq.write_table(pa.table({"URL": urls, "TEXT": [f"caption {i}" for i in range(len(urls))],
                                 "AESTHETIC_SCORE": [5.0 + i for i in range(len(urls))]}), meta / "part_1.parquet")
        env = _clean_env(PYTHON=sys.executable, PYSPARK_PYTHON=str(wrapper), NO_ALBUMENTATIONS_UPDATE="1")
        proc = cluster.run(["bash", str(DOWNLOAD_SH), "1", "--metadata_dir", str(meta), "--output_dir", str(out),
                            "--processes_count", "1", "--thread_count", "4", "--timeout", "5", "--image_size", "64",
                            "--number_sample_per_shard", "3", "--distributor", "pyspark", "--spark_master",
                            cluster.url, "--insecure_ssl"], env, timeout=170)
    assert proc.returncode == 0, f"{proc.stderr[-3000:]}\nEXECUTORS:\n{cluster.executor_logs()}"
    assert "certificate verification is DISABLED" in proc.stderr and "part 1: 2 shards finished" in proc.stderr

    # the executors started the driver's PYSPARK_PYTHON, in the worker's work dir (not the worker's setting)
    starts = started.read_text().splitlines()
    assert starts and all(line.startswith(str(cluster.work_dir)) for line in starts), starts

    part = out / "part_1"
    assert sorted(p.name for p in part.iterdir() if not p.name.startswith(".")) == [
        "00000.parquet", "00000.tar", "00000_stats.json", "00001.parquet", "00001.tar", "00001_stats.json"]
    stats = {p.name: json.loads(p.read_text()) for p in sorted(part.glob("*_stats.json"))}
    assert {k: (s["count"], s["successes"]) for k, s in stats.items()} == {
        "00000_stats.json": (3, 3), "00001_stats.json": (3, 2)}
    status = pd.concat([pd.read_parquet(p) for p in sorted(part.glob("[0-9]*.parquet"))]).set_index("url")
    assert all(status.loc[u, "status"] == "success" for u in urls[:5])
    assert "404" in status.loc[urls[5], "error_message"]
    for name, n in (("00000.tar", 3), ("00001.tar", 2)):
        with tarfile.open(part / name) as tar:
            members = tar.getmembers()
            jsons = [json.loads(tar.extractfile(m).read()) for m in members if m.name.endswith(".json")]
        assert sum(m.name.endswith(".jpg") for m in members) == n and len(jsons) == n
        for meta_json in jsons:
            if meta_json["url"] == urls[4]:  # downscaled on the executor to image_size
                assert (meta_json["original_width"], meta_json["original_height"]) == BIG_SIZE
                assert min(meta_json["width"], meta_json["height"]) == 64
