"""Mirage Env: Gymnasium environments rendered by a video world model.

Importing the package registers ``MirageWorld-v0`` and ``MirageDrive-v0`` with Gymnasium
(Gymnasium 1.x loads no entry-point plugins), so both of these work, the second also in spawned
vector-env workers that never imported the package:

    import mirage_env; gym.make("MirageDrive-v0")
    gym.make("mirage_env:MirageDrive-v0")
"""

from gymnasium.envs.registration import register, registry

ENV_IDS = {
    "MirageWorld-v0": ("mirage_env.envs:MirageWorldEnv", "mirage_env.envs.vector:make_world_vector"),
    "MirageDrive-v0": ("mirage_env.envs:MirageDriveEnv", "mirage_env.envs.vector:make_drive_vector"),
}


def register_envs() -> None:
    """Register the env ids with Gymnasium; safe to call again (re-imports, reloads). Each id
    has a batched ``vector_entry_point``: ``gym.make_vec(id, num_envs=16,
    vectorization_mode="vector_entry_point")`` renders all envs in one call per step."""
    for env_id, (entry_point, vector_entry_point) in ENV_IDS.items():
        if env_id not in registry:
            register(id=env_id, entry_point=entry_point, vector_entry_point=vector_entry_point)


register_envs()
