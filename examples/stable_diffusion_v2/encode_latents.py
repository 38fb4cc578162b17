#!/usr/bin/env python
"""Cache the frozen VAE's latents of an image dataset, so training skips the VAE encode every epoch.

    python examples/stable_diffusion_v2/encode_latents.py --data_path laion_data --dataset_type webdataset \\
        --model_config v2-base-512-eps --pretrained_model_path sd21.safetensors --resolution 512 \\
        --output_dir laion_latents
    python examples/stable_diffusion_v2/train_text_to_image.py ... --dataset_type latents --data_path laion_latents

Reads the annotated dataset as the trainer does (same decode, resize and centre crop, same skips), runs
the VAE encoder and writes a latent dataset (format: mindone/data/latents.py): tar shards with each
sample's posterior moments, caption and json, the part_<N>_stats.csv the loader reads, and latents.json.
Each input tar becomes one output tar (files datasets: every --samples_per_shard csv rows). A shard is
published by rename when complete and its counts beside it, so a killed run resumes where it stopped.
Under msrun each rank encodes every world_size-th shard; the stats csvs are written by the rank that
sees every shard of a part done.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Sequence

import numpy as np

from mindone.data.annotations import annotation_csv_name, part_of, write_annotation_csv
from mindone.data.wds_sample import CAPTION_EXT, META_EXT
from mindone.utils.atomic import atomic_path, atomic_write_text
from mindone.utils.cli import UserError, run_main, setup_cli_logging
from mindone.utils.config import Option, resolve_config

logger = logging.getLogger("encode_latents")

OPTIONS = [
    Option("data_path", str, None, "image dataset root holding the annotation csvs (required)"),
    Option("dataset_type", str, "webdataset", "files (part_<N>.csv) or webdataset (part_<N>_stats.csv)",
           choices=("files", "webdataset")),
    Option("output_dir", str, None, "where the latent dataset goes (required)"),
    Option("model_config", str, "v2-base-512-eps", "model yaml (path or bundled name) whose VAE encodes"),
    Option("pretrained_model_path", str, None, "weights holding the VAE (the ones training starts from)"),
    Option("resolution", int, 512, "image size: smallest side resized to it, then centre-cropped"),
    Option("dtype", str, "fp16", "storage dtype of the moments (fp16 halves the disk; fp32 is exact)",
           choices=("fp16", "fp32")),
    Option("cache_text", bool, False, "also cache the frozen text encoder's output per caption (used while "
           "training keeps the text encoder frozen)"),
    Option("vocab_path", str, None, "with --cache_text: bpe_simple_vocab_16e6.txt.gz (default: open_clip's)"),
    Option("batch_size", int, 8, "images per VAE call"),
    Option("samples_per_shard", int, 1000, "files datasets: csv rows per output shard"),
    Option("min_image_size", int, 32, "skip images whose smaller side is below this (as the trainer)"),
    Option("shard_root", str, None, "webdataset: where relative shard paths live (as the trainer's flag)"),
    Option("allow_outside_data_root", bool, False, "let csvs name places outside their root (docs/security.md)"),
    Option("max_member_mb", float, 64.0, "skip samples with a member larger than this (MB), unread"),
    Option("mode", str, "graph", "MindSpore execution mode", choices=("graph", "pynative")),
    Option("device_target", str, None, "CPU, Ascend or GPU; unset: what MindSpore was built for",
           choices=("CPU", "Ascend", "GPU")),
]


class Unit(NamedTuple):
    """One output shard: where its samples come from and where it goes."""

    part: int
    index: int
    read: Callable[[], Iterator]  # () -> (member, RawSample | reason) pairs

    @property
    def name(self) -> str:
        return f"part_{self.part}/{self.index:05d}.tar"


def plan_units(args) -> dict[int, list[Unit]]:
    """The output shards of every part, in order (the same plan on every rank)."""
    from mindone.data.annotations import ShardList, read_files_annotations, read_shard_list, resolve_annotation_files
    from mindone.data.files_dataset import FilesReader
    from mindone.data.webdataset_dataset import WebdatasetReader

    cap = int(args.max_member_mb * (1 << 20))
    parts: dict[int, list[Unit]] = {}
    for k, csv in enumerate(resolve_annotation_files(args.data_path, args.dataset_type)):
        part = part_of(csv) or k + 1
        units = parts.setdefault(part, [])
        if args.dataset_type == "webdataset":
            shards = read_shard_list([csv], args.shard_root, allow_outside_root=args.allow_outside_data_root)
            for url, size in zip(shards.urls, shards.sizes.tolist()):
                reader = WebdatasetReader(ShardList([url], np.asarray([size])), max_member_bytes=cap)
                units.append(Unit(part, len(units), lambda r=reader, n=size: r.read(0, range(n))))
        else:
            reader = FilesReader(read_files_annotations([csv], allow_outside_root=args.allow_outside_data_root),
                                 max_member_bytes=cap)
            for start in range(0, len(reader.sizes), args.samples_per_shard):
                rows = range(start, min(start + args.samples_per_shard, len(reader.sizes)))
                units.append(Unit(part, len(units), lambda r=reader, rows=rows: _rows(r, rows)))
    return parts


def _rows(reader, rows) -> Iterator:
    for row in rows:
        yield from reader.read(row, [0])


def _safe_key(key: str, fallback: str) -> str:
    """Keys come from data: one that is absolute or climbs (``..``) is renamed before it names a member."""
    parts = key.split("/")
    return fallback if key.startswith("/") or ".." in parts or not key else key


def encode_unit(unit: Unit, *, encode, encode_text, processor, out: Path, batch_size: int, dtype: str) -> dict:
    """Write one output shard (atomically) and its counts; returns the counts."""
    from collections import Counter

    from mindone.data.latents import MOMENTS_EXT, TEXT_EXT, array_bytes, moments_bytes
    from mindone.data.tar_stream import RawSample
    from mindone.data.transforms import to_model_input

    counts: Counter = Counter()
    target = out / unit.name
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp, tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as tar:
        pending: list[tuple[str, np.ndarray, np.ndarray, RawSample]] = []

        def flush() -> None:
            pixels = np.stack([to_model_input(p) for _, p, _, _ in pending])
            mean, logvar = encode(pixels, batch_size)
            texts = encode_text(np.stack([t for _, _, t, _ in pending]), batch_size) if encode_text else None
            for i, (key, _, _, raw) in enumerate(pending):
                members = {MOMENTS_EXT: moments_bytes(mean[i], logvar[i], dtype)}
                if texts is not None:
                    members[TEXT_EXT] = array_bytes(texts[i], dtype)
                members.update({ext: raw.files[ext] for ext in (CAPTION_EXT, META_EXT) if ext in raw.files})
                for ext, data in members.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size, info.mode = len(data), 0o644
                    tar.addfile(info, io.BytesIO(data))
            counts["written"] += len(pending)
            pending.clear()

        for position, (_, item) in enumerate(unit.read()):
            counts["read"] += 1
            result = processor(item, 0, counts) if isinstance(item, RawSample) else item
            if isinstance(result, str):
                counts[result] += 1
                continue
            pending.append((_safe_key(item.key, f"{unit.index:05d}{position:06d}"), result[1], result[2], item))
            if len(pending) == batch_size:
                flush()
        if pending:
            flush()
    atomic_write_text(target.with_name(target.stem + "_stats.json"), json.dumps(dict(counts), sort_keys=True))
    return dict(counts)


def write_stats_csvs(out: Path, parts: dict[int, list[Unit]]) -> list[int]:
    """``part_<N>_stats.csv`` for every part whose shards are all done; returns the parts written."""
    written = []
    for part, units in parts.items():
        sidecars = [out / u.name.replace(".tar", "_stats.json") for u in units]
        if not all(s.is_file() for s in sidecars):
            continue
        rows = [(u.name, json.loads(s.read_text()).get("written", 0)) for u, s in zip(units, sidecars)]
        write_annotation_csv(out / annotation_csv_name(part, "latents"), "latents", rows)
        written.append(part)
    return written


def build_encoder(args):
    """``encode(pixels [N,3,H,W] float32, batch) -> (mean, logvar)`` numpy, through the model's own VAE."""
    import mindspore as ms
    from mindspore import Tensor, nn

    from mindone.models.config import build_model, load_model_config

    model = build_model(load_model_config(args.model_config))
    if args.pretrained_model_path:
        from mindone.convert import load_sd_weights

        logger.info("loaded %s (%s)", args.pretrained_model_path, load_sd_weights(model, args.pretrained_model_path))
    else:
        logger.warning("no --pretrained_model_path: encoding with a randomly initialised VAE (only useful in tests)")
    vae = model.first_stage_model
    vae.set_train(False)

    class Encode(nn.Cell):
        def __init__(self):
            super().__init__(auto_prefix=False)
            self.vae = vae

        def construct(self, x):
            return self.vae.encode(x)

    class EncodeText(nn.Cell):
        def __init__(self):
            super().__init__(auto_prefix=False)
            self.model = model

        def construct(self, ids):
            return self.model.encode_text(ids)

    def padded(cell, array: np.ndarray, batch: int, dtype):
        n = array.shape[0]
        if n < batch:  # one compiled shape: pad the last batch
            array = np.concatenate([array, np.zeros((batch - n, *array.shape[1:]), array.dtype)])
        out = cell(Tensor(array, dtype))
        return tuple(o.asnumpy()[:n] for o in out) if isinstance(out, tuple) else out.asnumpy()[:n]

    encode_cell, text_cell = Encode(), EncodeText()
    model.set_train(False)
    return (lambda pixels, batch: padded(encode_cell, pixels, batch, ms.float32),
            lambda ids, batch: padded(text_cell, ids, batch, ms.int32))


def build_parser():
    from mindone.utils.config import build_parser as options_parser

    return options_parser(OPTIONS, __doc__.split("\n\n")[0], prog="encode_latents.py")


def main(argv: Sequence[str] | None = None) -> int:
    args = resolve_config(OPTIONS, argv, __doc__.split("\n\n")[0], prog="encode_latents.py")
    for name in ("data_path", "output_dir"):
        if not getattr(args, name):
            raise UserError(f"--{name}: required")
    if args.batch_size < 1 or args.samples_per_shard < 1:
        raise UserError("--batch_size and --samples_per_shard: must be at least 1")
    setup_cli_logging()
    from tqdm import tqdm

    from mindone.data.latents import INFO_FILE, LatentInfo
    from mindone.data.processing import SampleProcessor
    from mindone.train.loss import latent_shape
    from mindone.utils.device import init_device

    dev = init_device(args.mode, args.device_target, None, 0)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    from mindone.models.config import load_model_config

    channels, height, width = latent_shape(load_model_config(args.model_config), args.resolution)
    parts = plan_units(args)
    every = [u for units in parts.values() for u in units]
    mine = [u for i, u in enumerate(every) if i % dev.world_size == dev.rank]
    todo = [u for u in mine if not (out / u.name.replace(".tar", "_stats.json")).is_file()]
    logger.info("%d output shards, %d for rank %d of %d, %d already done", len(every), len(mine), dev.rank,
                dev.world_size, len(mine) - len(todo))
    encode, encode_text = build_encoder(args)
    if args.cache_text:
        from mindone.data.latents import EMPTY_TEXT_FILE, array_bytes
        from mindone.models.tokenizer import SDTokenizer
        from mindone.utils.atomic import atomic_write_bytes

        tokenizer = SDTokenizer(args.vocab_path)
        empty = encode_text(np.asarray(tokenizer([""]), np.int32), args.batch_size)[0]
        atomic_write_bytes(out / EMPTY_TEXT_FILE, array_bytes(empty, args.dtype))
        text_width = int(empty.shape[-1])
    else:
        tokenizer, encode_text, text_width = (lambda texts: np.zeros((len(texts), 1), np.int32)), None, 0
    info = LatentInfo(args.resolution, channels, height, width, args.dtype, args.model_config,
                      args.pretrained_model_path, text_width)
    if (out / INFO_FILE).is_file() and LatentInfo.read(out) != info and any(out.glob("part_*/*_stats.json")):
        raise UserError(f"--output_dir {out}: holds latents encoded with other settings ({LatentInfo.read(out)}); "
                        "use a new --output_dir")
    info.write(out)
    processor = SampleProcessor(tokenizer, image_size=args.resolution, min_image_size=args.min_image_size)
    totals: dict[str, int] = {}
    with tqdm(todo, desc="encode", unit="shard", dynamic_ncols=True) as bar:
        for unit in bar:
            counts = encode_unit(unit, encode=encode, encode_text=encode_text, processor=processor, out=out,
                                 batch_size=args.batch_size, dtype=args.dtype)
            for key, value in counts.items():
                totals[key] = totals.get(key, 0) + value
            bar.set_postfix(written=totals.get("written", 0), skipped=totals.get("read", 0) - totals.get("written", 0))
    skipped = {k: v for k, v in sorted(totals.items()) if k not in ("read", "written", "yielded")}
    logger.info("rank %d: wrote %d samples in %d shards; skipped %s", dev.rank, totals.get("written", 0), len(todo),
                skipped or "none")
    done = write_stats_csvs(out, parts)
    pending = sorted(set(parts) - set(done))
    logger.info("stats csv written for parts %s%s", done or "none",
                f"; parts {pending} wait for other ranks" if pending else "")
    return 0


if __name__ == "__main__":
    run_main(main)
