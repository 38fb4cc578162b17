"""Turn one raw sample (undecoded members) into model inputs, or the reason it is skipped.

Order of checks, cheapest first: caption present, json filters, image present, image header (tiny),
full decode (corrupt). For a latent dataset (``inputs="latents"``, see :mod:`mindone.data.latents`) the
image steps are replaced by reading the cached moments (``missing_latents`` / ``corrupt_latents``). Random choices (crop offset, flip, caption dropout) come from a generator seeded
by ``(seed, epoch, crc32(key))``: the same image gets the same choices in the same epoch whatever the
rank, worker, dataset type or resume point.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from mindone.data.buckets import BucketSpec, cover_size
from mindone.data.caption import caption_of, clean_caption, parse_meta
from mindone.data.decode import BadImage, decode_image
from mindone.data.filters import SampleFilters
from mindone.data.latents import MOMENTS_EXT, TEXT_EXT, BadLatents, read_array, read_moments
from mindone.data.tar_stream import RawSample
from mindone.data.transforms import hwc_to_chw, resize_crop, resize_to_cover
from mindone.data.wds_sample import CAPTION_EXT, META_EXT, image_ext

Tokenizer = Callable[[Sequence[str]], np.ndarray]
Processed = tuple[str, np.ndarray, np.ndarray]  # key, uint8 CHW pixels (or float32 moments), int32 [77] token ids


@dataclass
class SampleProcessor:
    """Caption, filters, decode, resize/crop/flip, caption dropout and tokenization for one sample."""

    tokenizer: Tokenizer
    image_size: int = 512
    random_crop: bool = False
    random_flip: bool = False
    caption_dropout: float = 0.0
    filters: SampleFilters = field(default_factory=SampleFilters)
    min_image_size: int = 32
    seed: int = 0
    inputs: str = "images"  # or "latents": cached VAE moments instead of an image
    latent_shape: tuple[int, int, int] | None = None  # checked when given (latents)
    empty_text: np.ndarray | None = None  # latents with cached text: the empty caption's embedding
    # Aspect-ratio buckets: the image is resized to cover its own bucket, uncropped, and returned HWC with
    # its log aspect ratio; the window batcher (mindone.data.bucket_stream) crops it to its batch's bucket.
    buckets: BucketSpec | None = None

    def __call__(self, raw: RawSample, epoch: int, counts: dict[str, int]) -> Processed | str:
        meta = parse_meta(raw.files.get(META_EXT))
        caption = caption_of(raw.files.get(CAPTION_EXT), meta)
        caption = clean_caption(caption) if caption is not None else ""
        if not caption:
            return "missing_caption"
        if self.filters.active:
            reason = self.filters.check(meta, counts)
            if reason:
                return reason
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, epoch, zlib.crc32(raw.key.encode())])
        if self.inputs == "latents":
            if MOMENTS_EXT not in raw.files:
                return "missing_latents"
            try:
                array = read_moments(raw.files[MOMENTS_EXT], self.latent_shape)
            except BadLatents:
                return "corrupt_latents"
        else:
            ext = image_ext(raw.files)
            if ext is None:
                return "missing_image"
            data = raw.files[ext]
            if self.buckets is not None:
                return self._bucketed(raw, data, caption, rng)
            try:
                image = decode_image(data, self.image_size, self.min_image_size)
            except BadImage as bad:
                return bad.reason
            crop_rng = rng if self.random_crop else None
            flip = bool(self.random_flip and rng.random() < 0.5)
            array = hwc_to_chw(resize_crop(image, self.image_size, crop_rng, flip))
        dropped = self.caption_dropout > 0 and rng.random() < self.caption_dropout
        if self.empty_text is not None:  # cached text embeddings stand in for the token ids
            if dropped:
                return raw.key, array, self.empty_text
            if TEXT_EXT not in raw.files:
                return "missing_text_embedding"
            try:
                return raw.key, array, read_array(raw.files[TEXT_EXT], self.empty_text.shape)
            except BadLatents:
                return "corrupt_latents"
        tokens = np.asarray(self.tokenizer(["" if dropped else caption]), dtype=np.int32)[0]
        return raw.key, array, tokens

    def _bucketed(self, raw: RawSample, data: bytes, caption: str, rng: np.random.Generator):
        """``(key, uint8 HWC covering the sample's bucket, token ids, log aspect)`` or a skip reason."""
        import io

        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as header:  # the size, from the header only
                width, height = header.size
        except Exception:  # noqa: BLE001  decode_image below names the reason
            width = height = 0
        log_aspect = float(np.log(width / height)) if width and height else 0.0
        bucket = self.buckets.sizes[int(self.buckets.nearest(log_aspect))]
        cover = cover_size(width, height, bucket) if width and height else bucket
        try:
            image = decode_image(data, min(cover), self.min_image_size)
        except BadImage as bad:
            return bad.reason
        dropped = self.caption_dropout > 0 and rng.random() < self.caption_dropout
        tokens = np.asarray(self.tokenizer(["" if dropped else caption]), dtype=np.int32)[0]
        return raw.key, resize_to_cover(image, cover_size(*image.size, bucket)), tokens, log_aspect
