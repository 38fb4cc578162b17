"""Stable Diffusion 2.x networks in MindSpore.

Module attribute names are the original (Stability ldm / OpenCLIP) checkpoint names, so
``model.parameters_and_names()`` yields exactly the names of a released SD 2.x checkpoint.
Submodules are imported explicitly (``from mindone.models.unet import UNetModel``) so that the
tokenizer can be used without loading MindSpore.
"""
