"""Training data loading throughput at 512 px: decode + resize + crop + tokenize, 2 workers.

Side by side on the same generated shards (img2dataset layout, both output formats):

- ``webdataset``: ``mindone.data.build_dataset("webdataset", ...)`` (MindSpore batches);
- ``files``: ``mindone.data.build_dataset("files", ...)``;
- ``reference``: a torch ``DataLoader`` over the ``webdataset`` package (``WebDataset(...).shuffle()
  .decode("pil")``, resize the smallest side + centre crop with Pillow, [-1, 1] tensors, the same SD
  tokenizer), as in the usual PyTorch LAION training scripts.

Prints samples/s for each and the ratio to the reference. torch is a benchmark-only dependency.

    .venv/bin/python benchmarks/bench_dataloader.py --samples 480 --batch_size 8
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from harness import interleaved_rounds


def photo_like(rng: np.random.Generator, width: int, height: int) -> bytes:
    """Smooth colour fields plus fine noise: JPEG size and decode cost close to real photos."""
    base = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(base).resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    img = np.clip(img + rng.normal(0, 12, size=img.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_data(root: Path, samples: int, per_shard: int, seed: int = 0) -> None:
    """img2dataset-like output (512 px on the short side, as laion_download_imgs.sh resizes) + csvs."""
    rng = np.random.default_rng(seed)
    part = root / "part_1"
    part.mkdir(parents=True)
    csv_rows, stats_rows = [("dir", "text")], ["file_path,num_samples"]
    for shard in range(-(-samples // per_shard)):
        count = min(per_shard, samples - shard * per_shard)
        folder = part / f"{shard:05d}"
        folder.mkdir()
        with tarfile.open(part / f"{shard:05d}.tar", "w") as tar:
            for i in range(count):
                key = f"{shard:05d}{i:04d}"
                long_side = int(rng.integers(512, 900))
                size = (long_side, 512) if rng.random() < 0.7 else (512, long_side)
                caption = f"a photo of thing {key} in a field, high quality, trending"
                files = {"jpg": photo_like(rng, *size), "txt": caption.encode(),
                         "json": json.dumps({"key": key, "width": size[0], "height": size[1]}).encode()}
                for ext, data in files.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                    (folder / f"{key}.{ext}").write_bytes(data)
                csv_rows.append((f"part_1/{shard:05d}/{key}.jpg", caption))
        stats_rows.append(f"part_1/{shard:05d}.tar,{count}")
    with open(root / "part_1.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(csv_rows)
    (root / "part_1_stats.csv").write_text("\n".join(stats_rows) + "\n")


def time_mindone(dataset_type: str, root: Path, tokenizer, args) -> tuple[float, int]:
    from mindone.data.loader import build_dataset

    dataset, steps = build_dataset(dataset_type, root, tokenizer, image_size=args.image_size,
                                   batch_size=args.batch_size, rank=0, world_size=1, num_workers=args.workers,
                                   seed=0, shuffle=True)
    iterator = dataset.create_tuple_iterator(num_epochs=1, output_numpy=True)
    start, n = time.perf_counter(), 0
    for batch in iterator:
        n += batch[0].shape[0]
    return time.perf_counter() - start, n


def time_reference(root: Path, tokenizer, args) -> tuple[float, int]:
    import torch
    import webdataset as wds

    size = args.image_size
    urls = sorted(str(p) for p in (root / "part_1").glob("*.tar"))

    def transform(sample):
        image, caption = sample
        w, h = image.size
        scale = size / min(w, h)
        image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BICUBIC)
        left, top = (image.size[0] - size) // 2, (image.size[1] - size) // 2
        image = image.crop((left, top, left + size, top + size))
        pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 127.5 - 1
        return pixels, torch.from_numpy(tokenizer([caption])[0])

    pipeline = (wds.WebDataset(urls, shardshuffle=len(urls)).shuffle(1000).decode("pil")
                .to_tuple("jpg;png;webp", "txt").map(transform))
    loader = torch.utils.data.DataLoader(pipeline, batch_size=args.batch_size, num_workers=args.workers)
    start, n = time.perf_counter(), 0
    for images, _ in loader:
        n += images.shape[0]
    return time.perf_counter() - start, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=480, help="samples generated (and read per loader)")
    parser.add_argument("--per_shard", type=int, default=60, help="samples per tar shard")
    parser.add_argument("--batch_size", type=int, default=8, help="batch size")
    parser.add_argument("--workers", type=int, default=2, help="data workers per loader")
    parser.add_argument("--image_size", type=int, default=512, help="training resolution")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds per loader (best kept)")
    args = parser.parse_args()
    os.environ.setdefault("GLOG_v", "3")
    import torch

    torch.set_num_threads(1)  # as DataLoader workers do; keeps the main process from oversubscribing 2 cores
    import mindspore.dataset  # noqa: F401  (imported before timing: its import is not data loading)
    from mindone.models.tokenizer import SDTokenizer

    tokenizer = SDTokenizer()
    with tempfile.TemporaryDirectory(prefix="bench_dataloader_") as tmp:
        root = Path(tmp)
        write_data(root, args.samples, args.per_shard)
        runs = {"reference": lambda: time_reference(root, tokenizer, args),
                "webdataset": lambda: time_mindone("webdataset", root, tokenizer, args),
                "files": lambda: time_mindone("files", root, tokenizer, args)}
        timings = interleaved_rounds(lambda name: runs[name](), runs, args.rounds)  # (seconds, samples) per round
    rates = {name: max(n / seconds for seconds, n in rounds) for name, rounds in timings.items()}
    print(f"{args.samples} samples, {args.image_size} px, batch {args.batch_size}, {args.workers} workers, "
          f"best of {args.rounds}")
    for name in ("reference", "webdataset", "files"):
        print(f"  {name:<11} {rates[name]:8.1f} samples/s   {rates[name] / rates['reference']:.2f}x reference")


if __name__ == "__main__":
    main()
