"""Reader for the files dataset: ``part_<N>.csv`` rows (``dir,text``) pointing at image files.

Each row is a shard of one sample. The caption comes from the csv ``text``; the img2dataset json
beside the image (``000000000.json``) is read only when filters need it. The key is the file stem.
"""

from __future__ import annotations

import os
from typing import Iterator, Sequence

import numpy as np

from mindone.data.annotations import FilesAnnotations
from mindone.data.tar_stream import RawSample


class FilesReader:
    def __init__(self, annotations: FilesAnnotations, read_meta: bool = False) -> None:
        self.paths = annotations.paths
        self.captions = annotations.captions
        self.read_meta = read_meta
        self.sizes = np.ones(len(annotations), dtype=np.int64)

    def read(self, shard: int, members: Sequence[int]) -> Iterator[tuple[int, RawSample | str]]:
        """The sample of csv row ``shard`` (``members`` is ``[0]``)."""
        path = self.paths[shard]
        stem = os.path.splitext(path)[0]
        sample = RawSample(os.path.basename(stem))
        try:
            with open(path, "rb") as fh:
                sample.files["jpg"] = fh.read()  # Pillow detects the real format from the bytes
        except OSError:
            yield 0, "missing_image"
            return
        sample.files["txt"] = self.captions[shard].encode("utf-8")
        if self.read_meta:
            try:
                with open(stem + ".json", "rb") as fh:
                    sample.files["json"] = fh.read()
            except OSError:
                pass
        yield 0, sample
