"""The exceptions the library raises for bad input; one module owns the hierarchy.

Every class here is a :class:`ValueError`: something the caller handed over (a flag or yaml value, a
file, a folder, a row of a csv) is wrong, and ``str(err)`` is one line naming that input and what is
wrong with it. The library only raises them; the CLI layer (:func:`mindone.utils.cli.run_main`) prints
that line as ``<prog>: error: <message>`` and exits with status 2, without a traceback. Library users
catch them like any ``ValueError``, or a subclass when they need to tell the causes apart.

- :class:`MindoneError`: the base; raised directly for a problem that is neither config nor data
  (the disk for scratch files is full, the open-file limit is too low).
- :class:`ConfigError`: a setting is invalid in itself, or settings contradict each other: a flag, yaml
  key or environment variable value, a model config file, filter thresholds, an output folder that
  cannot be used as given.
- :class:`DataError`: input the settings point at is missing, unreadable or malformed: annotation and
  stats csvs, metadata parquet / jsonl, image folders, latent datasets, input that changed during a run.
  Refinements live with the code that raises them: ``mindone.data.locations.UnsafeLocation``,
  ``mindone.laion.url_guard.UrlGuardError``, ``mindone.laion.shard_filter.ShardFilterError``.
- :class:`CheckpointError` (a :class:`DataError`): a weights file (safetensors, torch zip, MindSpore
  ``.ckpt``, diffusers folder, training checkpoint, LoRA file) that cannot be read or does not fit the model.
- :class:`DownloadError`: a remote file the server refuses, or that failed for good after the retries.

Programming errors (a caller passing an argument no user input can produce) are not part of this
hierarchy: they are plain ``ValueError`` / ``TypeError`` or assertions, and keep their traceback.
Internal reasons that a module catches and re-raises with the file name (``TarFormatError``,
``CheckpointFormatError``, ``InvalidTensor``, ``BadLatents``, ``BadImage``) stay outside it too.
"""

from __future__ import annotations


class MindoneError(ValueError):
    """Bad input to the library; the message is one line naming the input (shown as-is by the CLIs)."""


class ConfigError(MindoneError):
    """An invalid or contradictory setting (flag, yaml key, environment variable, model config)."""


class DataError(MindoneError):
    """Input data that is missing, unreadable or malformed (csvs, parquet, images, latents, shards)."""


class CheckpointError(DataError):
    """A weights or checkpoint file that cannot be read, or does not fit the model."""


class DownloadError(MindoneError):
    """A download that failed for good; the message names the URL and the reason."""


__all__ = ["MindoneError", "ConfigError", "DataError", "CheckpointError", "DownloadError"]
