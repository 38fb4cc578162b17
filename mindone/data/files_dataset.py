"""Reader for the files dataset: ``part_<N>.csv`` rows (``dir,text``) pointing at image files.

Each row is a shard of one sample. The caption comes from the csv ``text``; the img2dataset json
beside the image (``000000000.json``) is read only when filters need it. The key is the file stem.
An image that is a symlink to a place outside its csv's folder is skipped (``outside_data_root``) unless
the annotations allow it, and one larger than ``max_member_bytes`` is skipped unread (``oversized_member``).
"""

from __future__ import annotations

import os
from typing import Iterator, Sequence

import numpy as np

from mindone.data.annotations import FilesAnnotations
from mindone.data.locations import is_under
from mindone.data.tar_stream import MAX_MEMBER_BYTES, RawSample, open_regular_file
from mindone.data.wds_sample import CAPTION_EXT, IMAGE_EXTS, META_EXT


class FilesReader:
    def __init__(self, annotations: FilesAnnotations, read_meta: bool = False,
                 max_member_bytes: int = MAX_MEMBER_BYTES) -> None:
        self.annotations = annotations
        self.paths = annotations.paths
        self.captions = annotations.captions
        self.read_meta = read_meta
        self.max_member_bytes = max_member_bytes
        self.sizes = np.ones(len(annotations), dtype=np.int64)

    def read(self, shard: int, members: Sequence[int]) -> Iterator[tuple[int, RawSample | str]]:
        """The sample of csv row ``shard`` (``members`` is ``[0]``)."""
        path = self.paths[shard]
        stem = os.path.splitext(path)[0]
        sample = RawSample(os.path.basename(stem))
        root = None if self.annotations.allow_outside_root else self.annotations.root_of(shard)
        # The roots are resolved once, when the csv is read: per sample, only the path's links are resolved.
        if root is not None and not is_under(os.path.realpath(path), root):
            yield 0, "outside_data_root"
            return
        try:
            with open_regular_file(path) as fh:
                if os.fstat(fh.fileno()).st_size > self.max_member_bytes:
                    yield 0, "oversized_member"
                    return
                sample.files[IMAGE_EXTS[0]] = fh.read(self.max_member_bytes)  # Pillow detects the format from the bytes
        except OSError:
            yield 0, "missing_image"
            return
        sample.files[CAPTION_EXT] = self.captions[shard].encode("utf-8")
        meta_path = f"{stem}.{META_EXT}"
        if self.read_meta and (root is None or is_under(os.path.realpath(meta_path), root)):
            try:
                with open_regular_file(meta_path) as fh:
                    sample.files[META_EXT] = fh.read(self.max_member_bytes)
            except OSError:
                pass
        yield 0, sample
