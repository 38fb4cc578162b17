"""Training data: files (csv) and webdataset (tar shards) datasets for MindSpore, with rank x worker
sharding, resume, bad-sample accounting. Entry point: :func:`mindone.data.loader.build_dataset`.

``from mindone.data import build_dataset`` works too; nothing heavy is imported until then.
"""

_LOADER_NAMES = ("build_dataset", "build_sample_stream")


def __getattr__(name: str):
    if name in _LOADER_NAMES:
        from mindone.data import loader

        return getattr(loader, name)
    raise AttributeError(f"module 'mindone.data' has no attribute {name!r}")
