"""The SD 2.x noise schedule and the training-side forward process.

``NoiseSchedule`` holds the schedule twice: as float64 numpy arrays (``betas``, ``alphas_cumprod``), which the
samplers read, and as float32 MindSpore constants, which the graph-safe helpers :meth:`add_noise`,
:meth:`target`, :meth:`snr` and :meth:`alphas_cumprod_at` gather at a batch of integer timesteps. The square roots are taken in float64
before the cast, so ``sqrt(1 - alphas_cumprod)`` keeps its precision at small t, where ``1 - acp`` is ~1e-3.

``zero_terminal_snr=True`` rescales the betas so that ``acp[T-1] = 0`` (Lin et al. 2023, "Common Diffusion
Noise Schedules and Sample Steps are Flawed", Algorithm 1): ``sqrt(acp)`` is shifted to end at 0 and
scaled to keep its first value. SD's own schedule ends at ``acp = 0.0047``, which leaves the low
frequencies of the image (its mean colour above all) readable in the noisiest training input, while
sampling starts from pure noise; a model trained on it learns to take the colour from the noise instead
of from the prompt. With a zero terminal SNR the last step sees noise only, so only v-prediction can be
trained on it (eps is the input itself there, and x0 cannot be recovered from it), and samplers should
start at ``t = T - 1`` (``"trailing"`` timestep spacing).

The class is a ``mindspore.jit_class``: a training step compiled in GRAPH_MODE can keep an instance as an
attribute and call the helpers from ``construct``.
"""

from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import Tensor, ops

PREDICTION_TYPES = ("eps", "v")
_PREDICTION_ALIASES = {"eps": "eps", "epsilon": "eps", "v": "v", "v_prediction": "v"}


def normalize_prediction_type(prediction_type: str) -> str:
    """Map ``eps``/``epsilon`` to ``"eps"`` and ``v``/``v_prediction`` to ``"v"``; anything else is an error."""
    try:
        return _PREDICTION_ALIASES[prediction_type]
    except KeyError:
        choices = sorted(_PREDICTION_ALIASES)
        raise ValueError(f"prediction_type must be one of {choices}, got {prediction_type!r}") from None


def make_betas(num_train_timesteps: int, beta_start: float, beta_end: float, beta_schedule: str) -> np.ndarray:
    """Betas in float64. ``scaled_linear`` (SD): linspace of square roots, squared; ``linear``: plain linspace."""
    if beta_schedule == "scaled_linear":
        return np.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=np.float64) ** 2
    if beta_schedule == "linear":
        return np.linspace(beta_start, beta_end, num_train_timesteps, dtype=np.float64)
    raise ValueError(f"beta_schedule must be 'scaled_linear' or 'linear', got {beta_schedule!r}")


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Betas whose ``sqrt(acp)`` is the original one shifted to end at 0 and scaled to keep its start."""
    root = np.sqrt(np.cumprod(1.0 - betas))
    first, last = root[0], root[-1]
    root = (root - last) * (first / (first - last))
    acp = root**2
    alphas = np.concatenate([acp[:1], acp[1:] / acp[:-1]])
    return 1.0 - alphas


@ms.jit_class
class NoiseSchedule:
    """Discrete DDPM schedule: ``x_t = sqrt(acp[t]) * x0 + sqrt(1 - acp[t]) * noise``.

    Args:
        num_train_timesteps: number of training timesteps (SD: 1000).
        beta_start, beta_end: first and last beta (SD: 0.00085, 0.012).
        beta_schedule: ``"scaled_linear"`` (SD) or ``"linear"``.
        zero_terminal_snr: rescale the betas so the last timestep is pure noise (see the module docstring).
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "scaled_linear",
        zero_terminal_snr: bool = False,
    ) -> None:
        self.num_train_timesteps = num_train_timesteps
        self.zero_terminal_snr = bool(zero_terminal_snr)
        self.betas = make_betas(num_train_timesteps, beta_start, beta_end, beta_schedule)
        if self.zero_terminal_snr:
            self.betas = rescale_zero_terminal_snr(self.betas)
        self.alphas_cumprod = np.cumprod(1.0 - self.betas)
        # MindSpore constants gathered by the graph-mode helpers below.
        self.alphas_cumprod_ms = Tensor(self.alphas_cumprod.astype(np.float32))
        self.sqrt_alphas_cumprod_ms = Tensor(np.sqrt(self.alphas_cumprod).astype(np.float32))
        self.sqrt_one_minus_alphas_cumprod_ms = Tensor(np.sqrt(1.0 - self.alphas_cumprod).astype(np.float32))
        self.snr_ms = Tensor((self.alphas_cumprod / (1.0 - self.alphas_cumprod)).astype(np.float32))

    def _at(self, table: Tensor, t: Tensor, like: Tensor) -> Tensor:
        """``table[t]`` reshaped to broadcast over ``like`` ([B] -> [B, 1, 1, 1]) and cast to its dtype."""
        values = ops.gather(table, t, 0)
        values = values.reshape((-1,) + (1,) * (like.ndim - 1))
        return values.astype(like.dtype)

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """The forward process q(x_t | x0) with the given noise; ``t`` is an int tensor [B]."""
        signal = self._at(self.sqrt_alphas_cumprod_ms, t, x0)
        noise_level = self._at(self.sqrt_one_minus_alphas_cumprod_ms, t, x0)
        return signal * x0 + noise_level * noise

    def target(self, x0: Tensor, noise: Tensor, t: Tensor, prediction_type: str = "eps") -> Tensor:
        """What the UNet learns to predict: the noise (``"eps"``) or ``v = sqrt(acp)*noise - sqrt(1-acp)*x0``."""
        if prediction_type in ("eps", "epsilon"):
            return noise
        if prediction_type in ("v", "v_prediction"):
            signal = self._at(self.sqrt_alphas_cumprod_ms, t, x0)
            noise_level = self._at(self.sqrt_one_minus_alphas_cumprod_ms, t, x0)
            return signal * noise - noise_level * x0
        raise ValueError("prediction_type must be 'eps' or 'v'")

    def alphas_cumprod_at(self, t: Tensor) -> Tensor:
        """``alphas_cumprod[t]`` for int timesteps ``t`` ([B] float32)."""
        return ops.gather(self.alphas_cumprod_ms, t, 0)

    def snr(self, t: Tensor) -> Tensor:
        """Signal-to-noise ratio ``acp / (1 - acp)`` at timesteps ``t`` ([B] float32), e.g. for min-SNR weighting."""
        return ops.gather(self.snr_ms, t, 0)

