import numpy as np
import torch

from mirage_env.layout import LAYOUT_CLASSES, LayoutRasteriser
from mirage_env.vehicle import CameraMount


def test_layout_matches_the_ground_the_renderer_draws(town01, town01_renderer):
    spawn = town01.spawn_points()[10]
    mount = CameraMount(width=64, height=64, pitch_deg=-10.0)
    poses = mount.poses(np.array([[spawn[0], spawn[1], spawn[2]]]))
    K = mount.intrinsics()[None]
    layout = LayoutRasteriser(town01_renderer.scene.ground)(poses, K, 64, 64)  # per pixel (downsample 1)
    truth = town01_renderer.render(poses, K, 64, 64).semantic[0]
    labels = torch.full_like(truth, -1, dtype=torch.long)
    for channel, cls in enumerate(LAYOUT_CLASSES):
        labels[layout[0, channel] > 0.5] = int(cls)
    ground = torch.isin(truth, torch.tensor([int(c) for c in LAYOUT_CLASSES]))
    assert ground.float().mean() > 0.3
    # Where the renderer shows road, marking or sidewalk, the layout says the same class.
    assert (labels[ground] == truth[ground].long()).float().mean() > 0.98
    assert (layout[0, :, :20] == 0).all()  # above the horizon nothing is on the ground


def test_layout_cells_are_pixel_fractions(town01, town01_renderer):
    spawn = town01.spawn_points()[10]
    mount = CameraMount(width=64, height=64)
    poses = mount.poses(np.array([[spawn[0], spawn[1], spawn[2]]]))
    rasterise = LayoutRasteriser(town01_renderer.scene.ground)
    fine = rasterise(poses, mount.intrinsics()[None], 64, 64)
    coarse = rasterise(poses, mount.intrinsics()[None], 64, 64, downsample=4)
    assert coarse.shape == (1, len(LAYOUT_CLASSES), 16, 16)
    assert torch.allclose(coarse, torch.nn.functional.avg_pool2d(fine, 4))
    assert (coarse.sum(1) <= 1 + 1e-6).all()
