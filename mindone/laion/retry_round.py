"""Run one ``--retry_failed`` round on a downloaded part folder: plan, stage, download, publish, report.

Which rows are retried is :mod:`mindone.laion.retry_failed`'s (pure) contract; this module does the I/O.
A part folder after two rounds::

    part_1/
      00000.tar 00000.parquet 00000_stats.json ... 00003_*   the first download (shards 0..3)
      00004.* 00005.*                                        round 1's shards, published
      00006.*                                                round 2's shard
      retry_failed/
        ledger.json        every round: number, state, first shard, rows, classes retried, counts before
        report.json        the last run's per-class table (before / after, retried classes)
        round_3.parquet    the input of a round in progress (its rows, with ``retry_of``)
        round_3/           img2dataset's output folder for that round (the staging folder)

Nothing of the folder ``retry_failed/`` ends in ``.json`` at the part's top level on purpose: img2dataset
takes every ``part_1/*.json`` for a finished shard's stats when it resumes the part.

**Shard numbers and keys.** A round's shards are numbered from the first id after every numbered entry of
the part and after every shard the first download is due to write (:func:`first_free_shard`), and that
number is kept in the ledger so a resumed round uses the same ids. img2dataset itself writes them under
those ids (:func:`shard_ids_from` makes its reader start there), so it also derives the sample keys from
them (``shard_id * 10**ceil(log10(number_sample_per_shard)) + row``): the tar members, the json ``key`` and
the parquet ``key`` of a round can never equal a key of an earlier shard, and nothing is renamed or
rewritten when the shards are published. That holds only with the part's own ``number_sample_per_shard``
and ``oom_shard_count``, so a round refuses others (they are read from the part's
``.laion_download_settings``).

**Resume.** The ledger (written atomically) moves a round through ``downloading`` -> ``publishing`` ->
``done``. Killed while downloading, a rerun resumes img2dataset in the staging folder after
:func:`~mindone.laion.shard_state.prepare_resume` removed its partial shards, with the same input and
shard ids (finished shards of the round are not downloaded again). Only when every shard of the round is
finished and checked are they moved into the part folder, each data file first and its ``_stats.json``
last (same filesystem: each move is a rename); killed while publishing, a rerun finishes the moves. A
lock file keeps two runs off one part. The first download of the part must be complete (all its shards
finished), since the round's ids come after the ones it would still write.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mindone.data.annotations import annotation_csv_name, write_annotation_csv
from mindone.errors import ConfigError
from mindone.laion import img2dataset_launch as launch
from mindone.laion.annotations import files_part_annotations, tar_part_stats
from mindone.laion.retry_failed import RETRY_OF, RetryFailedError, RetryPlan, first_free_shard
from mindone.laion.shard_state import check_shard, done_shard_names, prepare_resume, remove_shard
from mindone.utils.atomic import atomic_path, atomic_write_text

logger = logging.getLogger(__name__)

LEDGER_DIR = "retry_failed"
LEDGER = "ledger.json"
REPORT = "report.json"
# img2dataset's own columns of a shard parquet (and its image column in the parquet format): not metadata
_RESULT_COLUMNS = (launch.RESERVED_COLUMNS - {"url", "caption"}) | {"jpg", "png", "webp", RETRY_OF}

MakeKwargs = Callable[[Path, Path, list[str]], dict[str, Any]]  # (input parquet, output folder, its columns)


@dataclass
class RetryOutcome:
    """What one ``--retry_failed`` run did to a part; ``report.json`` is :meth:`to_json`."""

    part: str
    retry_errors: list[str]
    rows: int
    before: dict[str, int]
    after: dict[str, int]
    round: int | None = None  # None: nothing to retry, no round ran
    selected: int = 0
    shards: list[str] = field(default_factory=list)

    @property
    def healed(self) -> int:
        return self.after["success"] - self.before["success"]

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "healed": self.healed}, indent=2)


def shard_parquets(part_dir: Path) -> dict[int, Path]:
    """``{shard id: parquet}`` of the finished shards of ``part_dir`` (``_stats.json`` present)."""
    return {int(name): part_dir / f"{name}.parquet" for name in done_shard_names(part_dir)
            if (part_dir / f"{name}.parquet").is_file()}  # fmt: skip


def check_part(part_dir: Path) -> dict[int, Path]:
    """The shard parquets of a part folder, or a RetryFailedError naming the folder."""
    if not part_dir.is_dir():
        raise RetryFailedError(f"{part_dir}: no such folder (download the part first)")
    parquets = shard_parquets(part_dir)
    if not parquets:
        raise RetryFailedError(f"{part_dir}: no finished shard with a status parquet (00000.parquet + "
                               "00000_stats.json); --retry_failed reads status and error_message from them")
    return parquets


def _identity(frame: pd.DataFrame) -> pd.Series:
    """Each row's identity: ``retry_of`` where a retry round set it, else its own key."""
    identity = frame["key"].astype(object)
    if RETRY_OF in frame:
        identity = frame[RETRY_OF].astype(object).where(frame[RETRY_OF].notna(), identity)
    return identity


def read_records(parquets: dict[int, Path]) -> pd.DataFrame:
    """Every row of every shard parquet as ``identity, shard, status, error_message``."""
    frames = []
    for shard, path in sorted(parquets.items()):
        names = pq.read_schema(path).names
        columns = ["key", "status", "error_message"] + ([RETRY_OF] if RETRY_OF in names else [])
        try:
            frame = pq.read_table(path, columns=columns).to_pandas()
        except (OSError, pa.ArrowException, KeyError) as err:
            raise RetryFailedError(f"{path}: cannot read its status columns ({str(err).splitlines()[0]})") from None
        frames.append(pd.DataFrame({"identity": _identity(frame), "shard": shard, "status": frame["status"],
                                    "error_message": frame["error_message"]}))  # fmt: skip
    return pd.concat(frames, ignore_index=True)


def candidate_table(parquets: dict[int, Path], plan: RetryPlan) -> pa.Table:
    """The metadata columns (url, caption, the saved extras) of the plan's candidates, from their latest
    record, plus ``retry_of`` = their identity; in identity order."""
    wanted = plan.latest.set_index("identity").loc[plan.candidates, "shard"]
    frames = []
    for shard, identities in wanted.groupby(wanted).groups.items():
        path = parquets[int(shard)]
        names = pq.read_schema(path).names
        frame = pq.read_table(path, columns=[c for c in names if c not in _RESULT_COLUMNS or c in ("key", RETRY_OF)]).to_pandas()
        identity = _identity(frame)
        frame = frame.drop(columns=[c for c in ("key", RETRY_OF) if c in frame]).assign(**{RETRY_OF: identity})
        frames.append(frame[frame[RETRY_OF].isin(set(identities))])
    table = pd.concat(frames, ignore_index=True).sort_values(RETRY_OF, kind="stable").reset_index(drop=True)
    return pa.Table.from_pandas(table, preserve_index=False)


@contextlib.contextmanager
def shard_ids_from(first: int) -> Iterator[None]:
    """While active, ``img2dataset.download`` numbers its shards from ``first`` instead of 0.

    Its Reader (which runs in the calling process only, for every distributor) is given that start id;
    incremental resume still works, as it compares the same ids with the ``_stats.json`` of the folder.
    """
    i2d_main = importlib.import_module("img2dataset.main")  # the module, not the function of that name
    original = i2d_main.Reader

    def reader(*args: Any, **kwargs: Any) -> Any:
        made = original(*args, **kwargs)
        made.start_shard_id = first
        return made

    i2d_main.Reader = reader
    try:
        yield
    finally:
        i2d_main.Reader = original


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RetryFailedError(f"{folder.parent}: another --retry_failed is running on this part") from None
        yield


def _part_settings(part_dir: Path) -> dict[str, Any]:
    """What the first download recorded (:func:`~mindone.laion.img2dataset_launch.check_resume_settings`)."""
    try:
        settings = json.loads((part_dir / launch.SETTINGS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return settings if isinstance(settings, dict) else {}


LAYOUT_KEYS = ("output_format", "number_sample_per_shard", "oom_shard_count")


def _check_layout(part_dir: Path, layout: Mapping[str, Any]) -> None:
    """Refuse a round whose shard layout differs from what the part's first download recorded."""
    settings = _part_settings(part_dir)
    for key in LAYOUT_KEYS:
        recorded, now = settings.get(key), layout.get(key)
        if key == "oom_shard_count":  # recorded as None when img2dataset's default was used
            recorded, now = recorded or 5, now or 5
        if recorded is not None and now is not None and recorded != now:
            raise ConfigError(f"{part_dir} was downloaded with {key}={recorded!r}, now {now!r}: a retry round "
                              f"must use the part's own (give --{key} {recorded})")


def _check_first_download_complete(part_dir: Path, settings: dict[str, Any]) -> int | None:
    if settings.get("input_rows") is None or not settings.get("number_sample_per_shard"):
        return None  # not recorded (a txt input, a folder img2dataset wrote by itself): cannot be checked
    expected = launch.expected_shards(settings["input_rows"], settings["number_sample_per_shard"])
    done = {int(n) for n in done_shard_names(part_dir)}
    missing = [i for i in range(expected) if i not in done]
    if missing:
        raise RetryFailedError(f"{part_dir}: the download is not complete ({expected - len(missing)} of {expected} "
                               "shards finished); rerun it without --retry_failed first")
    return expected


class Ledger:
    """``retry_failed/ledger.json``: the rounds of a part, saved atomically after every change of state."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LEDGER
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            data = {"rounds": []}
        except ValueError:
            raise RetryFailedError(f"{self.path}: not valid json; restore it or remove the folder "
                                   f"{folder} (and any shard it lists) to start over") from None
        self.rounds: list[dict[str, Any]] = data.get("rounds", [])

    def open_round(self) -> dict[str, Any] | None:
        return next((r for r in self.rounds if r["state"] != "done"), None)

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps({"format": 1, "rounds": self.rounds}, indent=2))


def _shard_files(folder: Path, name: str) -> list[Path]:
    """A shard's files, in publishing order: data, status parquet, then the ``_stats.json`` marking it done."""
    return [folder / f"{name}.tar", folder / name, folder / f"{name}.parquet", folder / f"{name}_stats.json"]


def publish(staging: Path, part_dir: Path, names: list[str]) -> None:
    """Move finished shards from the staging folder into the part (idempotent: a rerun finishes the moves)."""
    for name in names:
        for src in _shard_files(staging, name):
            if os.path.lexists(src):
                os.replace(src, part_dir / src.name)


def refresh_annotations(part_dir: Path, output_format: str) -> Path | None:
    """Rewrite the part's stats csv (webdataset) or files csv (files) beside the part folder."""
    data_dir, part_id = part_dir.parent, part_dir.name[len("part_"):]
    if output_format == "webdataset":
        stats = tar_part_stats(data_dir, part_dir)
        problems, rows = stats.problems, stats.rows
    elif output_format == "files":
        annot = files_part_annotations(data_dir, part_dir)
        problems, rows = annot.problems, annot.rows
    else:
        return None
    for line in problems:
        logger.warning(line)
    return write_annotation_csv(data_dir / annotation_csv_name(part_id, output_format), output_format, rows)


def plan_part(part_dir: Path, retry: frozenset[str]) -> RetryPlan:
    return RetryPlan.from_records(read_records(check_part(part_dir)), retry)


def _download_round(current: dict, *, folder: Path, make_kwargs: MakeKwargs, download: Callable[[dict], None],
                    part_dir: Path, verify_resume: bool) -> list[str]:
    """Run (or resume) img2dataset for the round; the names of its shards once all are finished."""
    source, staging = folder / f"round_{current['round']}.parquet", folder / f"round_{current['round']}"
    kwargs = make_kwargs(source, staging, pq.read_schema(source).names)
    _check_layout(part_dir, kwargs)
    names = [f"{current['first_shard'] + i:0{kwargs.get('oom_shard_count', 5)}d}"
             for i in range(-(-current["rows"] // kwargs["number_sample_per_shard"]))]  # fmt: skip
    if current["state"] == "downloading":
        launch.check_resume_settings(staging, kwargs, current["rows"])
        prepare_resume(staging, kwargs["output_format"], verify_done=verify_resume)
        with shard_ids_from(current["first_shard"]):
            download(kwargs)
        unfinished = [n for n in names if not check_shard(staging, n, kwargs["output_format"]).ok]
        for name in unfinished:
            remove_shard(staging, name)
        if unfinished:
            raise RetryFailedError(f"{part_dir}: retry round {current['round']} is not complete ({len(names) - len(unfinished)}"
                                   f" of {len(names)} shards finished); rerun the same command to resume it")
    return names


def _sweep_done_rounds(folder: Path, ledger: "Ledger") -> None:
    """Remove what a run killed right after publishing left of its (done) round."""
    for done in (r for r in ledger.rounds if r["state"] == "done"):
        shutil.rmtree(folder / f"round_{done['round']}", ignore_errors=True)
        (folder / f"round_{done['round']}.parquet").unlink(missing_ok=True)


def _start_round(part_dir: Path, *, folder: Path, ledger: Ledger, plan: RetryPlan,
                 parquets: dict[int, Path]) -> dict[str, Any]:
    """Write the round's input (the plan's candidates) and record the round as ``downloading``."""
    expected = _check_first_download_complete(part_dir, _part_settings(part_dir))
    stems = (entry.name.split(".")[0].split("_")[0] for entry in os.scandir(part_dir))
    current = {"round": len(ledger.rounds) + 1, "state": "downloading", "retry_errors": sorted(plan.retry),
               "first_shard": first_free_shard(stems, expected), "rows": len(plan.candidates),
               "before": plan.counts()}  # fmt: skip
    with atomic_path(folder / f"round_{current['round']}.parquet") as tmp:
        pq.write_table(candidate_table(parquets, plan), tmp)
    ledger.rounds.append(current)
    ledger.save()
    return current


def retry_part(part_dir: Path, *, retry: frozenset[str], layout: Mapping[str, Any], make_kwargs: MakeKwargs,
               download: Callable[[dict], None], verify_resume: bool = True) -> RetryOutcome:
    """Retry the failed rows of ``part_dir`` whose class is in ``retry`` (or finish the round in progress),
    then rewrite the part's stats csv / files csv when the part has retried shards.

    ``make_kwargs(input parquet, output folder, its columns)`` gives img2dataset's kwargs for the round (the
    part's settings, its url column ``url``, caption column ``caption`` and the other columns saved);
    ``download(kwargs)`` runs img2dataset. ``layout``: the ``output_format``, ``number_sample_per_shard``
    and ``oom_shard_count`` the round will use, refused before anything is written when the part's first
    download recorded others.
    """
    part_dir = Path(part_dir)
    check_part(part_dir)
    _check_layout(part_dir, layout)
    folder, part_id = part_dir / LEDGER_DIR, part_dir.name[len("part_"):]
    with _locked(folder):
        ledger = Ledger(folder)
        _sweep_done_rounds(folder, ledger)
        current = ledger.open_round()
        if current is None:
            parquets = shard_parquets(part_dir)
            plan = RetryPlan.from_records(read_records(parquets), retry)
            if not plan.candidates:
                outcome = RetryOutcome(part=part_id, retry_errors=sorted(retry), rows=plan.rows,
                                       before=plan.counts(), after=plan.counts())  # fmt: skip
                atomic_write_text(folder / REPORT, outcome.to_json())
                if ledger.rounds:  # a csv an interrupted run did not get to refresh
                    refresh_annotations(part_dir, layout["output_format"])
                return outcome
            current = _start_round(part_dir, folder=folder, ledger=ledger, plan=plan, parquets=parquets)
        else:
            logger.info("%s: resuming retry round %d (%s)", part_dir, current["round"], current["state"])
        names = _download_round(current, folder=folder, make_kwargs=make_kwargs, download=download,
                                part_dir=part_dir, verify_resume=verify_resume)
        current.update(state="publishing", shards=names)
        ledger.save()
        publish(folder / f"round_{current['round']}", part_dir, names)
        current["state"] = "done"
        ledger.save()
        _sweep_done_rounds(folder, ledger)
        after = RetryPlan.from_records(read_records(shard_parquets(part_dir)), current["retry_errors"])
        outcome = RetryOutcome(part=part_id, retry_errors=current["retry_errors"], rows=after.rows,
                               before=current["before"], after=after.counts(), round=current["round"],
                               selected=current["rows"], shards=names)  # fmt: skip
        atomic_write_text(folder / REPORT, outcome.to_json())
        refresh_annotations(part_dir, layout["output_format"])
    return outcome
