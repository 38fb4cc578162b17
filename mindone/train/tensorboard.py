"""TensorBoard event files of a training run (``--report_to tensorboard``), written on rank 0.

Where and what: ``<output_dir>/logs/events.out.tfevents.*`` with the scalars of every metrics row under
``train/`` (``loss``, ``lr``, ``grad_norm``, ``loss_scale``, ``images_per_s``, ``step_time_s``) and every
validation grid as the image ``validation/samples``, each at its optimizer step. ``tensorboard --logdir
<output_dir>/logs`` shows them.

Resume: a resumed run first writes a session START at its resume step. TensorBoard then drops the points
an earlier, killed run wrote after that step, as ``metrics.csv`` drops its rows, so the curves describe
one consistent run.

Writer: the ``tensorboard`` package's own ``EventFileWriter`` and protos, imported only when asked for.
The package that shows the logs is the one that writes them: no second writer library, no format
translation. torch's ``SummaryWriter`` writes through the same class.
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path
from typing import Mapping

import numpy as np

from mindone.errors import ConfigError

REPORT_TO = ("none", "tensorboard")
LOG_DIR = "logs"
# metrics.csv columns that become scalars (the rest are the step, the epoch and an overflow flag)
SCALARS = ("loss", "lr", "grad_norm", "loss_scale", "images_per_s", "step_time_s")


class TensorBoardLogger:
    """Scalars and images into one event file under ``log_dir``; ``start_step > 0`` marks a resume."""

    def __init__(self, log_dir: str | os.PathLike, start_step: int = 0) -> None:
        try:
            from tensorboard.compat.proto import event_pb2, summary_pb2
            from tensorboard.summary.writer.event_file_writer import EventFileWriter
        except ImportError:
            raise ConfigError("--report_to tensorboard needs the tensorboard package (pip install tensorboard), "
                              "or pass --report_to none") from None
        self._event_pb2, self._summary_pb2 = event_pb2, summary_pb2
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._writer = EventFileWriter(str(self.log_dir))
        if start_step > 0:  # TensorBoard keeps the points below a START's step: keep start_step's own
            start = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
            self._add(step=start_step + 1, session_log=start)

    def _add(self, step: int, **fields) -> None:
        self._writer.add_event(self._event_pb2.Event(wall_time=time.time(), step=int(step), **fields))

    def scalars(self, step: int, values: Mapping[str, float], prefix: str = "train/") -> None:
        """One scalar per finite value, tagged ``prefix + name``."""
        Value = self._summary_pb2.Summary.Value
        kept = [Value(tag=prefix + name, simple_value=float(v)) for name, v in values.items()
                if v is not None and np.isfinite(float(v))]
        if kept:
            self._add(step=step, summary=self._summary_pb2.Summary(value=kept))

    def image(self, step: int, tag: str, image: np.ndarray) -> None:
        """A uint8 ``[H, W, 3]`` image, stored as PNG."""
        from PIL import Image

        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image: expected uint8 [H, W, 3], got {image.dtype} {image.shape}")
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")
        summary = self._summary_pb2.Summary
        encoded = summary.Image(height=image.shape[0], width=image.shape[1], colorspace=3,
                                encoded_image_string=buf.getvalue())
        self._add(step=step, summary=summary(value=[summary.Value(tag=tag, image=encoded)]))
        self._writer.flush()

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
