"""Diffusion: the SD noise schedule and training targets, samplers, and the text-to-image pipeline."""
