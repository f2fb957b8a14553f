"""Time-conditioned backbones shared by every method: a DDPM/NCSN++-style U-Net and a toy MLP.

Every backbone maps ``(network input, t)`` to a tensor with ``out_channels`` channels; what that output
means (noise or score) is decided by ``gbm.models.ScoreModel``, never here, so GBM, VP, VE and CLD runs
compare the same network with the same parameter count.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class UNetConfig:
    """Shape of a U-Net: ``channels * channel_mult[i]`` feature maps at level i (resolution ``/ 2^i``)."""

    in_channels: int = 1
    out_channels: int = 1
    channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attention_levels: tuple[int, ...] = ()
    dropout: float = 0.0
    time_scale: float = 1000.0  # t in [0, T] is embedded as time_scale * t (DDPM's integer levels)

    def __post_init__(self):
        for name in ("in_channels", "out_channels", "channels", "num_res_blocks"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"model.{name}: must be a positive integer, got {value!r}")
        if not self.channel_mult or any(m < 1 for m in self.channel_mult):
            raise ValueError(f"model.channel_mult: must be a non-empty list of positive integers, got {self.channel_mult!r}")
        bad = [lvl for lvl in self.attention_levels if not 0 <= lvl < len(self.channel_mult)]
        if bad:
            raise ValueError(
                f"model.attention_levels: levels {bad} do not exist; levels are 0..{len(self.channel_mult) - 1}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout: must be in [0, 1), got {self.dropout}")

    @property
    def downsamplings(self) -> int:
        return len(self.channel_mult) - 1

    def check_image_shape(self, shape: tuple[int, ...]) -> None:
        """Refuse an image shape ``(C, H, W)`` the network cannot take, naming the field."""
        if len(shape) != 3:
            raise ValueError(f"data shape: the U-Net needs images (C, H, W), got shape {tuple(shape)}")
        channels, height, width = shape
        if channels != self.in_channels:
            raise ValueError(f"model.in_channels: the data has {channels} channels, the network takes {self.in_channels}")
        factor = 2**self.downsamplings
        for name, size in (("height", height), ("width", width)):
            if size % factor:
                raise ValueError(
                    f"data shape: image {name} {size} is not divisible by 2^{self.downsamplings} = {factor} "
                    f"(model.channel_mult has {len(self.channel_mult)} levels); use fewer levels"
                )


# Named sizes. ``tiny`` is for tests and CPU smoke runs; ``paper`` approaches the authors' width (ngf 128).
UNET_SIZES: dict[str, UNetConfig] = {
    "tiny": UNetConfig(channels=8, channel_mult=(1, 2, 2), num_res_blocks=1, attention_levels=()),
    "small": UNetConfig(channels=32, channel_mult=(1, 2, 2), num_res_blocks=1, attention_levels=(2,)),
    "base": UNetConfig(channels=64, channel_mult=(1, 2, 2), num_res_blocks=2, attention_levels=(2,)),
    "paper": UNetConfig(channels=128, channel_mult=(1, 2, 2), num_res_blocks=2, attention_levels=(1,), dropout=0.1),
}


def unet_config(size: str, **overrides) -> UNetConfig:
    """The named U-Net size with field overrides (e.g. ``in_channels``, ``channel_mult``)."""
    if size not in UNET_SIZES:
        raise ValueError(f"model.size: unknown size {size!r}; choose one of {sorted(UNET_SIZES)}")
    known = {f.name for f in fields(UNetConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"model: unknown U-Net field(s) {unknown}; known: {sorted(known)}")
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    return replace(UNET_SIZES[size], **overrides)


def _groups(channels: int) -> int:
    """GroupNorm groups: 32 as in DDPM when wide enough, else groups of at least 4 channels."""
    return math.gcd(channels, min(32, max(1, channels // 4)))


def timestep_embedding(t: torch.Tensor, dim: int, scale: float) -> torch.Tensor:
    """Sinusoidal embedding of ``scale * t`` (Vaswani et al.; DDPM), one row per sample."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / max(half - 1, 1))
    args = (scale * t.float())[:, None] * freqs[None, :]
    embedding = torch.cat([args.sin(), args.cos()], dim=1)
    return F.pad(embedding, (0, dim % 2))


class TimeEmbedding(nn.Module):
    """Sinusoidal features of t followed by a two-layer MLP."""

    def __init__(self, base_dim: int, out_dim: int, scale: float):
        super().__init__()
        self.base_dim, self.scale = base_dim, scale
        self.mlp = nn.Sequential(nn.Linear(base_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        if t.ndim != 1:
            raise ValueError(f"t: expected one time per sample (1-D), got shape {tuple(t.shape)}")
        return self.mlp(timestep_embedding(t, self.base_dim, self.scale))


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the time embedding added in between, with a skip connection."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(in_ch), in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.norm2 = nn.GroupNorm(_groups(out_ch), out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Single-head self-attention over the pixels of a feature map, residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(dim=1)
        attended = F.scaled_dot_product_attention(q, k, v)
        return x + self.out(attended.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """DDPM-style U-Net: residual blocks with time injection, skips between matching resolutions."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        ch, emb_dim = config.channels, 4 * config.channels
        self.time_embedding = TimeEmbedding(ch, emb_dim, config.time_scale)
        self.stem = nn.Conv2d(config.in_channels, ch, 3, padding=1)

        self.down = nn.ModuleList()
        skip_widths, width = [ch], ch
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                self.down.append(self._stage(width, ch * mult, emb_dim, level))
                width = ch * mult
                skip_widths.append(width)
            if level < config.downsamplings:
                self.down.append(Downsample(width))
                skip_widths.append(width)

        self.middle = nn.ModuleList(
            [ResBlock(width, width, emb_dim, config.dropout), SelfAttention(width), ResBlock(width, width, emb_dim, config.dropout)]
        )

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for _ in range(config.num_res_blocks + 1):
                self.up.append(self._stage(width + skip_widths.pop(), ch * mult, emb_dim, level))
                width = ch * mult
            if level > 0:
                self.up.append(Upsample(width))

        self.head = nn.Sequential(nn.GroupNorm(_groups(width), width), nn.SiLU(), nn.Conv2d(width, config.out_channels, 3, padding=1))

    def _stage(self, in_ch: int, out_ch: int, emb_dim: int, level: int) -> nn.ModuleList:
        layers = [ResBlock(in_ch, out_ch, emb_dim, self.config.dropout)]
        if level in self.config.attention_levels:
            layers.append(SelfAttention(out_ch))
        return nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_embedding(t)
        h = self.stem(x)
        skips = [h]
        for layer in self.down:
            h = _apply(layer, h, emb)
            skips.append(h)
        for layer in self.middle:
            h = _apply(layer, h, emb)
        for layer in self.up:
            if isinstance(layer, Upsample):
                h = layer(h)
            else:
                h = _apply(layer, torch.cat([h, skips.pop()], dim=1), emb)
        return self.head(h)


def _apply(layer: nn.Module, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    if isinstance(layer, nn.ModuleList):
        for sub in layer:
            h = _apply(sub, h, emb)
        return h
    return layer(h, emb) if isinstance(layer, ResBlock) else layer(h)


@dataclass(frozen=True)
class MLPConfig:
    """A residual MLP for low-dimensional (toy) data of ``dim`` coordinates."""

    dim: int = 2
    out_dim: int = 2
    hidden: int = 128
    num_layers: int = 3
    time_scale: float = 1000.0

    def __post_init__(self):
        for name in ("dim", "out_dim", "hidden", "num_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"model.{name}: must be a positive integer, got {value!r}")

    def check_data_shape(self, shape: tuple[int, ...]) -> None:
        if tuple(shape) != (self.dim,):
            raise ValueError(f"data shape: the MLP takes vectors of {self.dim} coordinates, got shape {tuple(shape)}")


class MLP(nn.Module):
    """Time-conditioned residual MLP: ``x -> out``, time embedding added to every hidden layer."""

    def __init__(self, config: MLPConfig):
        super().__init__()
        self.config = config
        self.time_embedding = TimeEmbedding(config.hidden, config.hidden, config.time_scale)
        self.inp = nn.Linear(config.dim, config.hidden)
        self.blocks = nn.ModuleList(nn.Linear(config.hidden, config.hidden) for _ in range(config.num_layers))
        self.out = nn.Linear(config.hidden, config.out_dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_embedding(t)
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(F.silu(h + emb))
        return self.out(F.silu(h))


BACKBONES = {"unet": (UNet, UNetConfig), "mlp": (MLP, MLPConfig)}


def build_backbone(kind: str, config: dict) -> nn.Module:
    """Rebuild a backbone from its kind and its config dict (as stored in ``model.pt``)."""
    if kind not in BACKBONES:
        raise ValueError(f"model.backbone: unknown backbone {kind!r}; choose one of {sorted(BACKBONES)}")
    cls, config_cls = BACKBONES[kind]
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
    return cls(config_cls(**config))


def backbone_record(net: nn.Module) -> tuple[str, dict]:
    """``(kind, config dict)`` for storing a backbone."""
    for kind, (cls, _) in BACKBONES.items():
        if isinstance(net, cls):
            return kind, asdict(net.config)
    raise ValueError(f"model: cannot record a backbone of type {type(net).__name__}")


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
