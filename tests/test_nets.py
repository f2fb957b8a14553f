"""The shared backbones: output shapes, parameter budgets per named size, clear errors for bad shapes."""

import pytest
import torch

from gbm.models import ScoreModel
from gbm.nets import MLP, UNET_SIZES, MLPConfig, UNet, build_backbone, backbone_record, count_parameters, unet_config
from gbm.methods.additive import VPSDE
from gbm.methods.gbm import GBM


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 8, 8)])
def test_unet_maps_images_to_images_of_out_channels(shape):
    net = UNet(unet_config("tiny", in_channels=shape[0], out_channels=shape[0]))
    x = torch.randn(2, *shape)
    assert net(x, torch.rand(2)).shape == x.shape


def test_unet_takes_stacked_state_and_returns_data_channels():
    net = UNet(unet_config("tiny", in_channels=2, out_channels=1))
    assert net(torch.randn(3, 2, 8, 8), torch.rand(3)).shape == (3, 1, 8, 8)


def test_named_sizes_grow_and_tiny_stays_under_100k_parameters():
    counts = {name: count_parameters(UNet(unet_config(name))) for name in ("tiny", "small", "base")}
    assert counts["tiny"] < 100_000
    assert counts["tiny"] < counts["small"] < counts["base"]
    assert UNET_SIZES["paper"].channels == 128


def test_output_depends_on_time():
    net = UNet(unet_config("tiny"))
    x = torch.randn(2, 1, 8, 8)
    assert not torch.allclose(net(x, torch.tensor([0.1, 0.1])), net(x, torch.tensor([0.9, 0.9])))


def test_attention_levels_add_attention_layers():
    plain = count_parameters(UNet(unet_config("tiny", attention_levels=())))
    with_attention = count_parameters(UNet(unet_config("tiny", attention_levels=(1,))))
    assert with_attention > plain


@pytest.mark.parametrize("shape, field", [((1, 30, 28), "height 30"), ((1, 28, 26), "width 26"), ((3, 28, 28), "in_channels")])
def test_shape_the_unet_cannot_take_names_the_field(shape, field):
    with pytest.raises(ValueError, match=field):
        unet_config("tiny").check_image_shape(shape)


def test_unknown_size_or_field_is_named():
    with pytest.raises(ValueError, match="model.size"):
        unet_config("huge")
    with pytest.raises(ValueError, match="widht"):
        unet_config("tiny", widht=3)
    with pytest.raises(ValueError, match="attention_levels"):
        unet_config("tiny", attention_levels=(5,))


def test_backbone_record_rebuilds_the_same_network():
    net = UNet(unet_config("tiny", channel_mult=[1, 2]))
    kind, config = backbone_record(net)
    rebuilt = build_backbone(kind, config)
    rebuilt.load_state_dict(net.state_dict())
    x, t = torch.randn(2, 1, 8, 8), torch.rand(2)
    assert torch.equal(rebuilt(x, t), net(x, t))


def test_mlp_maps_points_to_points():
    net = MLP(MLPConfig(dim=2, out_dim=2))
    assert net(torch.randn(5, 2), torch.rand(5)).shape == (5, 2)
    with pytest.raises(ValueError, match="data shape"):
        net.config.check_data_shape((3,))


def test_eps_parameterisation_returns_the_sdes_score_of_the_backbone_output():
    sde = GBM()
    net = MLP(MLPConfig())
    model = ScoreModel(sde, net, "eps")
    x, t = torch.rand(4, 2) + 1, torch.rand(4) * 0.9 + 0.1
    eps = net(x.log(), t)
    assert torch.allclose(model(x, t), sde.score_from_eps(eps, x, t))
    direct = ScoreModel(VPSDE(), net, "score")
    assert torch.equal(direct(x, t), net(x, t))
    with pytest.raises(ValueError, match="model.parameterisation"):
        ScoreModel(sde, net, "v")
