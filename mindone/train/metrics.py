"""Training metrics: one csv row per logged step, the same figures on the console and a progress bar.

Only rank 0 creates a :class:`MetricsLogger` (other ranks pass ``enabled=False`` and nothing is written).
With a :class:`~mindone.train.tensorboard.TensorBoardLogger` the same rows also go to TensorBoard.
On resume the csv keeps the rows up to the resumed step and drops later ones (written by the killed
run after its last checkpoint), so the file always describes one consistent run.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mindone.utils.atomic import atomic_open

logger = logging.getLogger(__name__)

COLUMNS = ("step", "epoch", "loss", "lr", "loss_scale", "grad_norm", "overflow", "step_time_s", "images_per_s")


class MetricsLogger:
    """Append metrics rows to ``<output_dir>/metrics.csv``, log them, and drive a tqdm bar."""

    def __init__(
        self, output_dir: str | os.PathLike, total_steps: int, start_step: int = 0, enabled: bool = True,
        tensorboard=None,
    ) -> None:
        self.enabled = enabled
        self.tensorboard = tensorboard if enabled else None
        self.path = Path(output_dir) / "metrics.csv"
        self._bar = None
        self._fh = None
        if not enabled:
            return
        self._truncate_after(start_step)
        new_file = not self.path.exists()
        self._fh = open(self.path, "a", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._fh, fieldnames=COLUMNS)
        if new_file:
            self._writer.writeheader()
            self._fh.flush()
        self._bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)

    def _truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        with open(self.path, newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.DictReader(fh) if r.get("step") and int(r["step"]) <= step]
        with atomic_open(self.path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows({k: r.get(k, "") for k in COLUMNS} for r in rows)

    def advance(self, steps: int = 1, **postfix: Any) -> None:
        """Move the progress bar by ``steps`` optimizer steps, showing ``postfix`` figures."""
        if self._bar is not None:
            self._bar.update(steps)
            if postfix:
                self._bar.set_postfix({k: _short(v) for k, v in postfix.items()}, refresh=False)

    def log(self, row: dict[str, Any]) -> None:
        """Write one csv row (keys from :data:`COLUMNS`) and a console line."""
        if not self.enabled:
            return
        self._writer.writerow({k: row.get(k, "") for k in COLUMNS})
        self._fh.flush()
        if self.tensorboard is not None:
            from mindone.train.tensorboard import SCALARS

            self.tensorboard.scalars(row["step"], {k: row[k] for k in SCALARS if k in row})
        text = " ".join(f"{k}={_short(row[k])}" for k in COLUMNS if k in row)
        logger.info(text)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self._bar is not None:
            self._bar.close()
        if self._fh is not None:
            self._fh.close()


def read_metrics(path: str | os.PathLike) -> list[dict[str, float]]:
    """The csv rows as floats (for tests and plotting)."""
    with open(path, newline="", encoding="utf-8") as fh:
        return [{k: float(v) if v not in ("", None) else math.nan for k, v in row.items()} for row in csv.DictReader(fh)]


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
