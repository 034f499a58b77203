"""The Gymnasium environments: MirageDrive-v0 and MirageWorld-v0 (registered by ``import mirage_env``)."""

from mirage_env.envs.config import DriveConfig, EnvConfig, WorldConfig
from mirage_env.envs.drive import MirageDriveEnv
from mirage_env.envs.frame_source import FrameSource, GroundTruthFrames, make_frame_source
from mirage_env.envs.world import MirageWorldEnv

__all__ = [
    "DriveConfig",
    "EnvConfig",
    "FrameSource",
    "GroundTruthFrames",
    "MirageDriveEnv",
    "MirageWorldEnv",
    "WorldConfig",
    "make_frame_source",
]
