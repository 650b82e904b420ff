"""World model: shapes, rollout == repeated predict, objective terms, collapse watch."""

import dataclasses
import math

import pytest
import torch

from planner.world_model import (
    CoordConv2d,
    ObjectiveConfig,
    WorldModel,
    WorldModelConfig,
    jepa_loss,
    sigreg,
    temporal_ordering,
    vicreg_terms,
)

SMALL = dict(image_size=32, latent_dim=16, history_len=2, enc_channels=(8, 16, 16), pred_hidden=32)


def small_model(**kw) -> WorldModel:
    torch.manual_seed(0)
    return WorldModel(WorldModelConfig(**{**SMALL, **kw}))


def test_shapes():
    m = small_model()
    z = m.encode(torch.rand(5, 3, 32, 32) * 2 - 1)
    assert z.shape == (5, 16)
    assert m.predict(torch.randn(5, 2, 16), torch.randn(5, 2, 4)).shape == (5, 16)
    out = m.rollout(torch.randn(3, 2, 16), torch.randn(3, 1, 4), torch.randn(3, 7, 6, 4))
    assert out.shape == (3, 7, 6, 16)


def test_rollout_matches_repeated_predict():
    m = small_model(history_len=3).eval()
    z_hist, a_prev, actions = torch.randn(2, 3, 16), torch.randn(2, 2, 4), torch.randn(2, 4, 5, 4)
    out = m.rollout(z_hist, a_prev, actions)
    for b in range(2):
        for s in range(4):
            zs, acts = z_hist[b : b + 1], a_prev[b : b + 1]
            for h in range(5):
                acts = torch.cat([acts, actions[b : b + 1, s, h : h + 1]], 1)[:, -3:]
                zn = m.predict(zs, acts)
                torch.testing.assert_close(out[b, s, h], zn[0], rtol=1e-5, atol=1e-5)
                zs = torch.cat([zs[:, 1:], zn[:, None]], 1)
                acts = acts[:, 1:]


def test_bad_inputs_raise_clear_errors():
    m = small_model()
    with pytest.raises(ValueError, match="encode expects images"):
        m.encode(torch.rand(2, 3, 64, 64))
    with pytest.raises(ValueError, match="rollout expects"):
        m.rollout(torch.randn(1, 3, 16), torch.randn(1, 1, 4), torch.randn(1, 2, 3, 4))
    with pytest.raises(ValueError, match="divisible"):
        WorldModelConfig(image_size=60, enc_channels=(8, 8, 8))
    with pytest.raises(ValueError, match="regularizer"):
        ObjectiveConfig(regularizer="barlow")


def test_forward_teacher_forcing_and_rollout_consistent():
    m = small_model()
    imgs, acts = torch.rand(2, 7, 3, 32, 32) * 2 - 1, torch.randn(2, 6, 4)
    out = m(imgs, acts, rollout_steps=3)
    assert out["z"].shape == (2, 7, 16) and out["tf"].shape == (2, 5, 16) and out["roll"].shape == (2, 3, 16)
    # first open-loop step equals the first teacher-forced step; later ones differ
    torch.testing.assert_close(out["roll"][:, 0], out["tf"][:, 0])
    torch.testing.assert_close(out["tf"][:, 2], m.predict(out["z"][:, 2:4], acts[:, 2:4]))


def test_anti_collapse_terms_detect_collapse():
    g = torch.Generator().manual_seed(0)
    gauss = torch.randn(512, 16, generator=g)
    const = torch.zeros(512, 16)
    var_g, cov_g = vicreg_terms(gauss)
    var_c, _ = vicreg_terms(const)
    assert var_g < 0.05 and cov_g < 0.2 and var_c > 0.9
    assert sigreg(gauss, 32, torch.Generator().manual_seed(1)) < 3  # O(1) test statistic
    assert sigreg(const, 32, torch.Generator().manual_seed(1)) > 0.4 * 512 * 0.9
    assert sigreg(0.1 * gauss, 32, torch.Generator().manual_seed(1)) > 100  # shrunk scale is rejected too


def test_temporal_ordering_prefers_monotone_distances():
    t = torch.arange(9.0)
    line = torch.stack([t, torch.zeros(9)], -1)[None]  # distance grows with offset
    circle = torch.stack([torch.cos(t * 1.2), torch.sin(t * 1.2)], -1)[None]  # distance comes back
    assert temporal_ordering(line, 8, 0.0) == 0
    assert temporal_ordering(circle, 8, 0.0) > 0.05


def test_loss_backward_and_ema_target():
    m = small_model()
    imgs, acts = torch.rand(4, 9, 3, 32, 32) * 2 - 1, torch.randn(4, 8, 4)
    for reg in ("vicreg", "sigreg"):
        obj = ObjectiveConfig(regularizer=reg, rollout_steps=3, temporal_span=8)
        loss, parts = jepa_loss(m(imgs, acts, 3), obj, 2, torch.Generator().manual_seed(0))
        loss.backward()
        assert torch.isfinite(loss) and {"pred", "rollout", "temporal"} <= parts.keys()
        assert all(p.grad is not None for p in m.parameters())
        m.zero_grad()
    obj = ObjectiveConfig(regularizer="none", ema_target=True, temporal_weight=0.0, rollout_steps=3)
    out = m(imgs, acts, 3)
    with torch.no_grad():
        target = m.encoder(imgs.flatten(0, 1)).view(4, 9, -1) + 1.0
    loss, parts = jepa_loss(out, obj, 2, torch.Generator(), target_z=target)
    assert parts["pred"] > 0.5  # regresses onto the (shifted) target, not the online latents


def test_constant_encoder_is_zero_loss_without_anti_collapse():
    """A constant encoder predicts perfectly; only the anti-collapse term (VICReg/SIGReg) penalizes it."""
    m = small_model()
    torch.nn.init.zeros_(m.encoder.head.weight)
    torch.nn.init.zeros_(m.encoder.head.bias)
    out = m(torch.rand(4, 6, 3, 32, 32), torch.randn(4, 5, 4), 3)
    assert out["z"].abs().max() == 0
    none = ObjectiveConfig(regularizer="none", temporal_weight=0.0, rollout_steps=3)
    torch.nn.init.zeros_(m.predictor.out.weight)
    torch.nn.init.zeros_(m.predictor.out.bias)
    _, parts = jepa_loss(m(torch.rand(4, 6, 3, 32, 32), torch.randn(4, 5, 4), 3), none, 2, torch.Generator())
    assert parts["loss"] == 0
    for reg in ("vicreg", "sigreg"):
        obj = ObjectiveConfig(regularizer=reg, temporal_weight=0.0, rollout_steps=3)
        _, parts = jepa_loss(out, obj, 2, torch.Generator().manual_seed(0))
        assert parts["loss"] > 0.3


def test_spatial_softmax_keypoints_find_a_bright_spot():
    from planner.world_model import SpatialSoftmax

    ss = SpatialSoftmax(channels=1, keypoints=1)
    with torch.no_grad():
        ss.proj.weight.fill_(1.0)
        ss.proj.bias.zero_()
        ss.log_temperature.fill_(-3.0)  # sharp
    feats = torch.zeros(2, 1, 16, 16)
    feats[0, 0, 3, 12] = 1.0  # row 3 (y), column 12 (x)
    feats[1, 0, 15, 0] = 1.0
    xy = ss(feats)
    assert xy.shape == (2, 2)
    grid = torch.linspace(-1, 1, 16)
    torch.testing.assert_close(xy[0], torch.stack([grid[12], grid[3]]), atol=0.02, rtol=0)
    torch.testing.assert_close(xy[1], torch.stack([grid[0], grid[15]]), atol=0.02, rtol=0)


def test_keypoint_attention_entropy_reads_how_many_cells_each_keypoint_covers():
    from planner.world_model import SpatialSoftmax

    ss = SpatialSoftmax(channels=1, keypoints=1)
    with torch.no_grad():
        ss.proj.weight.fill_(1.0)
        ss.proj.bias.zero_()
        ss.log_temperature.fill_(-3.0)
    feats = torch.zeros(2, 1, 16, 16)
    feats[0, 0, 3, 12] = 1.0  # one bright cell: the attention sits on it
    xy, entropy = ss.attend(feats)  # feats[1] is flat: uniform attention over 256 cells
    assert entropy.shape == (2, 1)
    torch.testing.assert_close(xy, ss(feats))
    assert entropy[0].exp() < 1.01
    torch.testing.assert_close(entropy[1].exp(), torch.tensor([256.0]))


def test_keypoint_spread_hinge_concentrates_the_attention():
    """The hinge is relu(entropy - log(cells)), added with its weight; training with it shrinks the cells
    each keypoint covers; it refuses a model without keypoints."""
    m = small_model(enc_keypoints=4, enc_keypoint_layer=2, enc_keypoint_latent=True)
    imgs, acts = torch.rand(4, 6, 3, 32, 32) * 2 - 1, torch.randn(4, 5, 4)
    base = ObjectiveConfig(regularizer="none", temporal_weight=0.0, rollout_steps=3)
    out = m(imgs, acts, 3)
    assert out["keypoint_entropy"].shape == (4, 6, 4)
    torch.testing.assert_close(out["z"], m.encode(imgs.flatten(0, 1)).view(4, 6, -1))  # the same z as forward
    _, plain = jepa_loss(out, base, 2, torch.Generator())
    hinge = dataclasses.replace(base, keypoint_spread_weight=2.0, keypoint_spread_cells=3.0)
    _, parts = jepa_loss(out, hinge, 2, torch.Generator())
    expected = torch.relu(out["keypoint_entropy"] - math.log(3.0)).mean().item()
    assert parts["keypoint_spread"] == pytest.approx(expected) and expected > 0
    assert parts["loss"] == pytest.approx(plain["loss"] + 2.0 * expected)
    assert plain["keypoint_cells"] == pytest.approx(out["keypoint_entropy"].exp().mean().item())
    before = plain["keypoint_cells"]
    opt = torch.optim.Adam(m.encoder.parameters(), lr=0.05)
    for _ in range(30):
        loss, parts = jepa_loss(m(imgs, acts, 3), hinge, 2, torch.Generator())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert parts["keypoint_cells"] < 0.5 * before
    with pytest.raises(ValueError, match="needs a model with keypoints"):
        jepa_loss(small_model()(imgs, acts, 3), hinge, 2, torch.Generator())
    with pytest.raises(ValueError, match="keypoint_spread_cells"):
        ObjectiveConfig(keypoint_spread_cells=0.5)


def test_encoder_with_keypoints_shapes_gradients_and_config_checks():
    m = small_model(enc_keypoints=4, enc_keypoint_layer=2)
    images = (torch.rand(3, 3, 32, 32) * 2 - 1).requires_grad_()
    z = m.encode(images)
    assert z.shape == (3, 16)
    z.sum().backward()
    assert m.encoder.keypoints.proj.weight.grad.abs().sum() > 0
    assert m.encoder.head.in_features == 16 * 4 * 4 + 8
    plain = small_model()
    assert plain.encoder.keypoints is None and "encoder.keypoints.proj.weight" not in plain.state_dict()
    with pytest.raises(ValueError, match="enc_keypoint_layer"):
        WorldModelConfig(**{**SMALL, "enc_keypoints": 4, "enc_keypoint_layer": 5})


def test_keypoint_latent_puts_scaled_coordinates_last_and_round_trips():
    m = small_model(enc_keypoints=4, enc_keypoint_layer=2, enc_keypoint_latent=True)
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    z = m.encode(images)
    assert z.shape == (3, 16) and m.encoder.head.out_features == 16 - 8
    enc = m.encoder
    x = images
    for i, layer in enumerate(enc.convs):
        x = layer(x)
        if i == enc.keypoint_at:
            keypoints = enc.keypoints(x)
    torch.testing.assert_close(z[:, 8:], keypoints * 3.0 ** 0.5)
    z.sum().backward()
    assert enc.keypoint_scale.grad.abs().sum() > 0
    clone = WorldModel(WorldModelConfig.from_dict(m.cfg.to_dict()))
    clone.load_state_dict(m.state_dict())
    torch.testing.assert_close(clone.encode(images), z.detach())
    assert small_model(enc_keypoints=4).encoder.keypoint_scale is None
    for bad in (dict(enc_keypoints=0), dict(enc_keypoints=8)):  # no keypoints; 2P = D leaves the head nothing
        with pytest.raises(ValueError, match="enc_keypoint_latent"):
            WorldModelConfig(**{**SMALL, **bad, "enc_keypoint_latent": True})


def test_views_side_by_side_each_go_through_the_shared_convs_with_their_own_keypoints():
    """image_views=2: images [B,3,S,2S]; each view is encoded by the same convs as if alone, its 2P keypoint
    coordinates fill its own block of the latent's last 4P dims, and a change in one view leaves the other
    view's keypoints unchanged."""
    m = small_model(image_views=2, enc_keypoints=2, enc_keypoint_layer=2, enc_keypoint_latent=True)
    left, right = torch.rand(3, 3, 32, 32) * 2 - 1, torch.rand(3, 3, 32, 32) * 2 - 1
    z = m.encode(torch.cat([left, right], dim=3))
    assert z.shape == (3, 16) and m.cfg.latent_keypoint_dims == 8 and m.encoder.head.out_features == 8
    assert m.encoder.head.in_features == 2 * (16 * 4 * 4 + 4)
    enc = m.encoder
    for view, images in ((0, left), (1, right)):
        x = images
        for i, layer in enumerate(enc.convs):
            x = layer(x)
            if i == enc.keypoint_at:
                keypoints = enc.keypoints(x)
        scale = enc.keypoint_scale[4 * view : 4 * view + 4]
        torch.testing.assert_close(z[:, 8 + 4 * view : 12 + 4 * view], keypoints * scale)
    moved = m.encode(torch.cat([left, right.flip(-1)], dim=3))
    torch.testing.assert_close(moved[:, 8:12], z[:, 8:12])
    assert not torch.allclose(moved[:, 12:], z[:, 12:])
    with pytest.raises(ValueError, match=r"encode expects images \[B,3,32,64\]"):
        m.encode(left)
    with pytest.raises(ValueError, match="image_views"):
        WorldModelConfig(**{**SMALL, "image_views": 0})
    with pytest.raises(ValueError, match="enc_keypoints \\* image_views"):
        WorldModelConfig(**{**SMALL, "image_views": 2, "enc_keypoints": 4, "enc_keypoint_latent": True})


def test_rescaling_keypoint_dims_scales_them_and_keeps_the_energy_reading():
    torch.manual_seed(0)
    m = small_model(enc_keypoints=4, enc_keypoint_latent=True, energy_head_dim=3, energy_head_hidden=8)
    images = torch.rand(5, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        z, e = m.encode(images), m.energy_embed(m.encode(images))
    assert m.keypoint_dims == slice(8, 16)
    factor = torch.linspace(0.5, 400.0, 8)
    m.rescale_keypoint_dims(factor)
    with torch.no_grad():
        z2 = m.encode(images)
        torch.testing.assert_close(z2[:, :8], z[:, :8])
        torch.testing.assert_close(z2[:, 8:], z[:, 8:] * factor)
        torch.testing.assert_close(m.energy_embed(z2), e, atol=1e-5, rtol=1e-4)
    for bad in (torch.ones(7), torch.tensor([1.0] * 7 + [0.0]), torch.tensor([1.0] * 7 + [float("nan")])):
        with pytest.raises(ValueError, match="finite positive"):
            m.rescale_keypoint_dims(bad)
    plain = small_model(enc_keypoints=4)
    assert plain.keypoint_dims.start == plain.keypoint_dims.stop
    with pytest.raises(ValueError, match="enc_keypoint_latent"):
        plain.rescale_keypoint_dims(torch.ones(8))


def test_coord_conv_sees_pixel_coordinates():
    conv = CoordConv2d(1, 2, 1, stride=1, padding=0)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        conv.weight[0, 1] = 1.0  # output 0 = the x channel
        conv.weight[1, 2] = 1.0  # output 1 = the y channel
    out = conv(torch.zeros(2, 1, 3, 5))
    assert out.shape == (2, 2, 3, 5)
    torch.testing.assert_close(out[1, 0, 2], torch.linspace(-1, 1, 5))
    torch.testing.assert_close(out[0, 1, :, 4], torch.linspace(-1, 1, 3))


def test_encoder_with_coords_is_position_aware_and_round_trips(tmp_path):
    m = small_model(enc_coords=True)
    assert isinstance(m.encoder.convs[0], CoordConv2d) and m.encoder.convs[0].in_channels == 5
    images = torch.zeros(2, 3, 32, 32)
    images[0, :, 4:8, 4:8] = 1.0  # the same square, elsewhere
    images[1, :, 20:24, 20:24] = 1.0
    z = m.encode(images)
    assert z.shape == (2, 16) and torch.isfinite(z).all()
    assert not torch.allclose(z[0], z[1])
    cfg = WorldModelConfig.from_dict(m.cfg.to_dict())
    assert cfg.enc_coords and WorldModelConfig.from_dict(small_model().cfg.to_dict()).enc_coords is False
    clone = WorldModel(cfg)
    clone.load_state_dict(m.state_dict())
    torch.testing.assert_close(clone.encode(images), z)
