"""Mirage Env: Gymnasium environments rendered by a video world model.

Importing the package registers ``MirageWorld-v0`` and ``MirageDrive-v0`` with Gymnasium
(Gymnasium 1.x loads no entry-point plugins), so both of these work, the second also in spawned
vector-env workers that never imported the package:

    import mirage_env; gym.make("MirageDrive-v0")
    gym.make("mirage_env:MirageDrive-v0")
"""

from gymnasium.envs.registration import register, registry

ENV_IDS = {
    "MirageWorld-v0": "mirage_env.envs:MirageWorldEnv",
    "MirageDrive-v0": "mirage_env.envs:MirageDriveEnv",
}


def register_envs() -> None:
    """Register the env ids with Gymnasium; safe to call again (re-imports, reloads)."""
    for env_id, entry_point in ENV_IDS.items():
        if env_id not in registry:
            register(id=env_id, entry_point=entry_point)


register_envs()
