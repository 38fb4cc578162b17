"""Training data: files (csv) and webdataset (tar shards) datasets for MindSpore, with rank x worker
sharding, resume, bad-sample accounting. Entry point: :func:`mindone.data.loader.build_dataset`."""
