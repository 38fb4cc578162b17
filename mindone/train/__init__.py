"""Training: the train step (loss scale, accumulation, clipping), SD loss, EMA, checkpoints, LoRA, validation.

Modules import MindSpore; import them directly (``from mindone.train.train_step import TrainStep``).
"""
