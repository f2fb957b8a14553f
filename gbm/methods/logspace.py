"""The log-space control (issue 26; this project's control, not a published method): score_sde's VP SDE run on
the log of GBM's positive data, mapped back by ``exp``.

In log space GBM is additive, ``log x_t = log x_0 + (mu - sigma^2/2) t + sigma W_t``: with the paper's
``sigma = 0.8``, ``T = 1``, a variance-exploding diffusion whose largest noise is 0.8 (SPEC §1a). This method
keeps GBM's data space and its positivity (samples are ``exp`` of the state, as Dale–Langevin's are) but swaps
the schedule for VP's, so that the two can be told apart: GBM against this control is the schedule; this
control against VP in pixel space is the geometry.

- Data: uint8 images -> ``x_0 = img / 255 + 1`` in [1, 2], GBM's shift (``data_space="positive"``,
  ``gbm.pixels.to_positive``); sample pixels come back through ``gbm.pixels.from_positive``, GBM's conversion.
- State (``initial_state``): ``y = (log x - c) / h`` with ``c``, ``h`` the centre and half-width of ``log`` of
  the positive pixel range (``LOG_RANGE``: derived from ``to_positive`` of pixel values 0 and 255, fixed, not
  fitted), so ``y = 2 log2(x) - 1`` lies in [-1, 1] like the additive SDEs' data.
- Forward SDE, loss and samplers: VP's (``gbm.methods.additive``: ``VPSDE``, ``DSMLoss``, the generic
  samplers), all in ``y``; the network sees ``y``.
- Samples (``positions``): ``x = exp(c + h y) > 0``, before the pixel conversion clamps to [1, 2].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from gbm import pixels
from gbm.methods.additive import DSMLoss, VPSDE
from gbm.methods.base import Method
from gbm.samplers import GENERIC_SAMPLERS, check_generic_options

#: ``log`` of the positive data range, from GBM's shift of the pixel values 0 and 255 (``(0, log 2)``).
LOG_RANGE: tuple[float, float] = tuple(
    math.log(v) for v in pixels.to_positive(torch.tensor([0, 255], dtype=torch.uint8)).tolist())
LABEL = "log-space VP (control; this project's, not a published method)"


@dataclass(frozen=True)
class LogSpaceVPSDE(VPSDE):
    """VP SDE (SPEC §5) on ``y = (log x - c) / h``, the log of positive data standardised to [-1, 1]
    (module docstring); its state is ``y``, its samples ``x = exp(c + h y)``."""

    name: str = field(default="logvp", init=False)

    @property
    def log_centre(self) -> float:
        return (LOG_RANGE[0] + LOG_RANGE[1]) / 2

    @property
    def log_half_width(self) -> float:
        return (LOG_RANGE[1] - LOG_RANGE[0]) / 2

    def initial_state(self, x0: torch.Tensor) -> torch.Tensor:
        """Positive data ``x0`` -> the state ``y = (log x0 - c) / h``."""
        return (x0.log() - self.log_centre) / self.log_half_width

    def positions(self, state: torch.Tensor) -> torch.Tensor:
        """The state ``y`` -> positive data ``exp(c + h y)``."""
        return torch.exp(self.log_centre + self.log_half_width * state)

    def describe(self):
        return super().describe() | {
            "label": LABEL, "state": "y = (log x - c) / h, x in the positive data range",
            "log_range": list(LOG_RANGE), "samples": "exp(c + h y)",
        }


class LogSpaceDSMLoss(DSMLoss):
    """VP's denoising score matching (SPEC §5) on the state of positive data, ``sde.initial_state(x0)``."""

    def __call__(self, score_fn, x0, generator=None):
        return super().__call__(score_fn, self.sde.initial_state(x0), generator)


def check_log_space_data(x: torch.Tensor, what: str) -> None:
    """Data must be finite and strictly positive, as its log is the state; a start ``x_T`` is a state and must
    be finite. Kernel guidance is refused: ``gbm.guidance`` noises its bank with ``perturb`` as if it were a
    state, and this method's bank would be positive data."""
    if what == "guidance.bank":
        raise ValueError("guidance.bank: kernel discriminator guidance is not supported by the log-space control "
                         "(its bank is positive data, its state the log)")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{what}: the log-space control needs finite values; found NaN or infinity")
    if what != "x_T" and bool((x <= 0).any()):
        raise ValueError(f"{what}: the log-space control models strictly positive data (its log is the state); "
                         f"min is {float(x.min()):.4g} (images are shifted into [1, 2] by gbm.pixels.to_positive)")


def log_space_prior_mismatch(method: Method, sde_params: dict, fit_images, labels, held_images, dataset: str,
                             sigma2_T_grid=()) -> list[dict]:
    """The prior-mismatch row (``Method.prior_mismatch``): VP's N(0, I) against p_T of the held-out images in the
    log-space state (``gbm.methods.gbm_priors.additive_prior_mismatch``); ``paper`` False: no published setting."""
    from gbm.methods.gbm_priors import additive_prior_mismatch

    sde = method.make_sde(**sde_params)
    result = additive_prior_mismatch(sde, sde.initial_state(method.to_data(held_images)))
    return [{"prior": "fixed", "paper": False, "sigma2_T": math.nan, "frechet": result["frechet"],
             "relative_frechet": result["relative_frechet"], "at_config": True}]


METHOD = Method(
    name="logvp",
    label=LABEL,
    sde=LogSpaceVPSDE,
    loss=LogSpaceDSMLoss,
    samplers=GENERIC_SAMPLERS,
    data_space="positive",
    check_data=check_log_space_data,
    check_sampler_options=check_generic_options,
    prior_mismatch=log_space_prior_mismatch,
    description="VP SDE on the standardised log of GBM's shifted data, samples exp of the state: "
                "this project's control (issue 26), not a published method",
)
