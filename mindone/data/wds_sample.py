"""The webdataset sample: which members of a tar shard form one training sample, and which sample is ``i``.

One contract for the writers of shards (img2dataset, ``make_dataset_from_images.py`` through
:mod:`mindone.laion.own_images`, the stats-time filter :mod:`mindone.laion.shard_filter`,
``encode_latents.py``) and their readers (the header scan behind ``part_<N>_stats.csv``,
:mod:`mindone.laion.tar_stats`; the training loader, :mod:`mindone.data.tar_stream` and
:mod:`mindone.data.processing`), so that ``num_samples`` in a stats csv is exactly the number of samples
the loader can yield from that shard. tests/test_wds_sample_contract.py holds both sides to it.

1. **Key and extension.** A member name splits at the first ``.`` of its base name: the key is everything
   before it, directory part included, the extension everything after it, lower-cased
   (``part/000010023.jpg`` -> ``part/000010023``, ``jpg``; ``dir.v1/000010023.seg.JPG`` ->
   ``dir.v1/000010023``, ``seg.jpg``; ``x.`` -> ``x``, ``""``). This is webdataset's rule. A name whose
   base name has no dot (``README``) or starts with one (``.hidden.jpg``, ``d/.jpg``) is no sample member
   and is ignored (webdataset would file ``d/.jpg`` under key ``d/``; no writer makes such names). Only
   regular file members are read; directories, links and devices are ignored too.
2. **Grouping.** Consecutive sample members with the same key form one group; ignored members between them
   do not split it. A key that comes back after another key starts a new group: two samples that share a
   key, as webdataset yields them (img2dataset never writes that). Within a group, a repeated extension
   replaces the earlier member, as extracting the tar would.
3. **Member types.** Images: ``IMAGE_EXTS`` = ``jpg``, ``jpeg``, ``png``, ``webp``: what img2dataset 1.47
   writes (``--encode_format`` ``jpg``, the default, ``png`` or ``webp``) plus ``jpeg``, its usual
   spelling. When a group has several, the first in that order is the sample's image and the others are
   ignored. Pillow reads the format from the bytes, not from the extension. Caption: ``CAPTION_EXT`` =
   ``txt``, the only one img2dataset (and every writer above) produces. Metadata: ``META_EXT`` = ``json``,
   optional; the load-time filters read it, and its ``caption`` stands in for an empty caption member.
   Any other extension (``.gif``, ``.bmp``, ``.text``, ``.caption``, ``.seg.jpg``...) is carried along
   but makes nothing: a group holding only such members is no sample.
4. **Complete sample.** A group is a sample when it has a caption member and a payload member: an image
   for image datasets, ``moments.npy`` for latent datasets (:mod:`mindone.data.latents`, whose reader
   passes ``payload=(MOMENTS_EXT,)``). Other groups (image without caption, caption without image, a
   lone json) are not samples: the stats scan counts them apart (``missing_caption`` /
   ``missing_image``) and the loader skips them by their headers. All of this is known from member names
   alone, so the scan never reads member data.
5. **Addressing.** Sample ``i`` of a shard is its ``i``-th complete group in tar order, and the stats csv's
   ``num_samples`` is the number of complete groups. img2dataset writes an image, a ``txt`` and a ``json``
   for every success and nothing for a failure, so in its shards sample ``i`` is simply the ``i``-th group.
6. **Left to load time.** Content is only checked when a sample is decoded: an empty caption member (the
   json ``caption`` is used instead, else the sample is skipped as ``missing_caption``), a corrupt or tiny
   image, a json filter. Such samples are counted in ``num_samples`` (the scan reads headers only) and
   counted as bad, then refilled, by the loader.

Decisions taken when this contract replaced three diverging copies: the stats scan used to also count
``.bmp`` images and ``.text`` / ``.caption`` captions, which the loader never read; no writer of this
pipeline produces them, so they are outside the contract on both sides (the loader's sets were kept). The
scan used to merge a key that came back later into one sample and the loader addressed every group,
complete or not; both now follow points 2 and 5.
"""

from __future__ import annotations

from typing import Collection, Iterable, Iterator, TypeVar

IMAGE_EXTS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")  # in order of precedence
CAPTION_EXT = "txt"
META_EXT = "json"

Member = TypeVar("Member", bound=tuple)


def split_name(name: str) -> tuple[str, str] | None:
    """``part/000001.seg.JPG`` -> (``part/000001``, ``seg.jpg``); None for a name that is no sample member."""
    slash = name.rfind("/") + 1
    dot = name.find(".", slash)
    if dot <= slash:  # no dot in the base name (-1), or the base name starts with one
        return None
    return name[:dot], name[dot + 1 :].lower()


def image_ext(exts: Collection[str]) -> str | None:
    """The extension of the group's image (the first of ``IMAGE_EXTS`` present), None without one."""
    for ext in IMAGE_EXTS:
        if ext in exts:
            return ext
    return None


def is_sample(exts: Collection[str], payload: tuple[str, ...] = IMAGE_EXTS) -> bool:
    """Whether a group with these member extensions is a complete sample: a caption and a payload member."""
    if CAPTION_EXT not in exts:
        return False
    for ext in payload:
        if ext in exts:
            return True
    return False


def group_members(members: Iterable[Member]) -> Iterator[tuple[str, dict[str, Member]]]:
    """Group tuples whose first item is a member name: ``(key, {extension: member tuple})`` per group.

    Every group is yielded, complete or not (:func:`is_sample` tells); names that are no sample member are
    dropped. The split of :func:`split_name` is inlined: the header scan runs this once per member.
    """
    key = None
    group: dict[str, Member] = {}
    for member in members:
        name = member[0]
        slash = name.rfind("/") + 1
        dot = name.find(".", slash)
        if dot <= slash:
            continue
        member_key = name[:dot]
        if member_key != key:
            if group:
                yield key, group
            key, group = member_key, {}
        group[name[dot + 1 :].lower()] = member
    if group:
        yield key, group
