"""The one way this project starts a SparkSession (metadata filter, near-duplicate pass, image download).

``create_session(app_name=..., master=...)`` builds or joins the session with the web UI off and the
console progress bar only when asked, at UTC. For a ``local[...]`` master the executors are Python
processes on this machine, started from ``PYSPARK_PYTHON`` (else ``python3`` on PATH, which may lack the
project's dependencies); it defaults to this interpreter here, before the context exists, because a
running SparkContext keeps the interpreter it was created with for every later job in the process.
On a cluster the driver's ``PYSPARK_PYTHON`` names the executors' interpreter as it stands (see
docs/data_preparation.md, "Running on a Spark cluster").
"""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger(__name__)


def create_session(*, app_name: str, master: str, driver_memory: str | None = None, progress: bool = False,
                   conf: dict[str, str] | None = None):
    """A SparkSession on ``master`` (``local[4]``, ``spark://host:7077``), with ``conf`` set on top; an
    active one is joined."""
    from pyspark.sql import SparkSession

    if master.startswith("local"):
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = (SparkSession.builder.master(master).appName(app_name)
               .config("spark.ui.enabled", "false")
               .config("spark.ui.showConsoleProgress", str(progress).lower())
               .config("spark.sql.session.timeZone", "UTC"))
    if driver_memory:
        builder = builder.config("spark.driver.memory", driver_memory)
    for key, value in (conf or {}).items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    log.info("spark session: master %s, driver memory %s", session.sparkContext.master,
             session.sparkContext.getConf().get("spark.driver.memory", "default"))
    return session
