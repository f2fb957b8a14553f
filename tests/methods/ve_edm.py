"""A diffusion method defined outside the package, in one file: the VE SDE with an EDM-style noise schedule.

``sigma(t) = (sigma_min^(1/rho) + t (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho`` (Karras et al. 2022, in
time ``t`` in [0, 1]), kernel ``x_t = x_0 + sigma(t) z``, ``g(t)^2 = d sigma^2 / dt``. It reuses the additive
family's DSM loss and the generic samplers; registering it makes it usable by every ``gbm`` command and
the pipeline (config key ``method_modules``, or ``GBM_METHOD_MODULES``). The README's "Add a method".
"""

import math
from dataclasses import dataclass, field

import torch

from gbm.methods import Method, register
from gbm.methods.additive import AdditiveSDE, DSMLoss
from gbm.samplers import GENERIC_SAMPLERS
from gbm.sde import per_sample


@dataclass(frozen=True)
class EDMVESDE(AdditiveSDE):
    """Variance-exploding SDE ``dx = sqrt(d sigma^2/dt) dW`` with EDM's rho-schedule ``sigma(t)``."""

    sigma_min: float = 0.002
    sigma_max: float = 50.0
    rho: float = 7.0
    T: float = 1.0
    end_time: float = 1e-5
    name: str = field(default="ve-edm", init=False)

    def sigma(self, t):
        a, b = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        return (a + t * (b - a)) ** self.rho

    def drift_diffusion(self, x, t):
        tt = per_sample(t, x)
        a, b = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        dsigma = self.rho * (a + tt * (b - a)) ** (self.rho - 1) * (b - a)
        return torch.zeros_like(x), torch.sqrt(2 * self.sigma(tt) * dsigma) * torch.ones_like(x)

    def mean_coeff_std(self, t):
        return torch.ones_like(t), self.sigma(t)

    def prior_sample(self, shape, noise=None):
        noise = torch.randn(shape) if noise is None else noise
        return math.sqrt(self.sigma_max**2 + self.sigma_min**2) * noise


METHOD = register(Method(name="ve-edm", label="VE (EDM schedule)", sde=EDMVESDE, loss=DSMLoss,
                         samplers=GENERIC_SAMPLERS, data_space="centered"))
