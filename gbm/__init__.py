"""gbm: multiplicative (geometric Brownian motion) diffusion and additive-SDE baselines."""

__version__ = "0.1.0"
