"""Fine-tune the Wan backbone's LoRA and widened patch embedding on clips, with the flow-matching loss.

Each training sample is one chunk as the world model generates it: ``--chunk-frames`` target
frames of a clip after ``--context-frames`` clean context frames. The memory for the chunk is
a latent cache holding the context frames and a few random earlier frames of the clip (within
``--window``), written with the clips' ground-truth depth, and read at every target pose; the
model learns to denoise the targets from that read. Memory and context latents get a little
relative noise (generated latents are never exact).

Clips are shards of ``mirage_env.world_model_data`` (``generate_shards`` renders them;
``mirage train-world-model`` leaves them in its ``data.dir``): ``rgb`` (N, T, H, W, 3) uint8,
``depth`` (N, T, 1, H, W) [m], ``cam_to_world`` (N, T, 4, 4), ``K`` (3, 3), optionally
``layout`` (N, T, L, h', w') uint8; H and W must be multiples of 32 for Wan2.2 (VAE factor
16 x patch 2).

    python scripts/finetune_wan_lora.py --model ~/models/Wan2.2-TI2V-5B-Diffusers \\
        --clips data/clips/*.safetensors --out runs/wan_lora --steps 2000

Writes ``<out>/lora.safetensors`` (load with ``WanBackbone.load_lora``) and ``<out>/losses.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mirage_env.world_model_data import load_shards
from world_model.backbone import Conditioning
from world_model.camera import relative_motion
from world_model.latent_cache import LatentCache, LatentCacheConfig
from world_model.memory import MemoryFrame
from world_model.wan_backbone import WanBackbone, WanBackboneConfig


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="local diffusers Wan2.2 folder")
    parser.add_argument("--clips", required=True, nargs="+", help="clip shards (safetensors)")
    parser.add_argument("--out", default="runs/wan_lora", help="output folder")
    parser.add_argument("--steps", type=int, default=2000, help="optimiser steps")
    parser.add_argument("--batch-size", type=int, default=1, help="chunks per step")
    parser.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate")
    parser.add_argument("--rank", type=int, default=32, help="LoRA rank")
    parser.add_argument("--chunk-frames", type=int, default=8, help="[frames] targets per chunk")
    parser.add_argument("--context-frames", type=int, default=1, help="[frames] clean frames before each chunk")
    parser.add_argument("--layout-channels", type=int, default=0, help="road-layout channels (0: none; 3 for maps)")
    parser.add_argument("--window", type=int, default=12, help="[frames] memory frames are drawn this far back")
    parser.add_argument("--memory-frames", type=int, default=5, help="most random earlier frames in the memory")
    parser.add_argument("--latent-noise", type=float, default=0.1, help="max relative noise on memory/context latents")
    parser.add_argument("--prompt", default="", help="fixed text prompt")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="trade compute for memory")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def chunk_batch(clips: dict, latents: torch.Tensor, layouts: torch.Tensor | None, args: argparse.Namespace,
                downsample: int, generator: torch.Generator) -> tuple[Conditioning, torch.Tensor]:
    """A batch of chunks (see the module doc): the conditioning and the clean target latents
    (B*T, C, h, w). ``latents`` (clips, frames, C, h, w) of every clip frame; ``layouts`` (clips,
    frames, L, h, w) on the latent grid."""
    count, length = latents.shape[:2]
    first_target_max = length - args.chunk_frames  # the last chunk ends at the clip's end
    if first_target_max < args.context_frames:
        raise ValueError(f"clips of {length} frames are too short for {args.context_frames} context + "
                         f"{args.chunk_frames} target frames")
    cache = LatentCache(args.batch_size, latents.shape[2], LatentCacheConfig(downsample=downsample))
    scale = float(latents[:, :2].float().std())
    K = clips["K"][None].float()

    def rand(high: int, low: int = 0) -> int:
        return int(torch.randint(low, high, (1,), generator=generator))

    def noisy(value: torch.Tensor) -> torch.Tensor:
        sigma = args.latent_noise * scale * float(torch.rand(1, generator=generator))
        return value.float() + sigma * torch.randn(value.shape, generator=generator)

    contexts, targets, poses, motions, layout = [], [], [], [], []
    for sample in range(args.batch_size):
        clip, start = rand(count), rand(first_target_max + 1, args.context_frames)
        context = list(range(start - args.context_frames, start))
        earlier = list(range(max(0, start - args.window), context[0]))
        drawn = torch.randperm(len(earlier), generator=generator)[: rand(args.memory_frames + 1)]
        for frame in sorted([earlier[i] for i in drawn.tolist()] + context):  # written in time order
            cache.write(MemoryFrame(noisy(latents[clip, frame][None]), clips["depth"][clip, frame][None].float(), K,
                                    clips["cam_to_world"][clip, frame][None].float()), cache_ids=[sample])
        chunk = slice(start, start + args.chunk_frames)
        contexts.append(noisy(latents[clip, context]))
        targets.append(latents[clip, chunk].float())
        poses.append(clips["cam_to_world"][clip, chunk].float())
        latest = clips["cam_to_world"][clip, context[-1]].float()
        motions.append(relative_motion(latest.expand(args.chunk_frames, 4, 4), poses[-1]))
        if layouts is not None:
            layout.append(layouts[clip, chunk])
    poses = torch.cat(poses)
    cache_ids = torch.arange(args.batch_size).repeat_interleave(args.chunk_frames)
    read = cache.read(poses, K.expand(len(poses), 3, 3), tuple(clips["rgb"].shape[2:4]), cache_ids=cache_ids)
    conditioning = Conditioning(memory=read, context=torch.stack(contexts), motion=torch.cat(motions),
                                layout=torch.cat(layout) if layouts is not None else None)
    return conditioning, torch.cat(targets)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    clips = load_shards(args.clips)
    config = WanBackboneConfig(chunk_frames=args.chunk_frames, context_frames=args.context_frames,
                               layout_channels=args.layout_channels, prompt=args.prompt, lora_rank=args.rank,
                               progress=False)
    # Weights stay float32 (the trained ones must); on a GPU the forward runs under bfloat16 autocast.
    backbone = WanBackbone.from_pretrained(args.model, device=args.device, config=config)
    backbone.add_lora()
    if args.gradient_checkpointing:
        backbone.transformer.enable_gradient_checkpointing()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if backbone.device.type == "cuda" else nullcontext()

    # Every clip frame's latents, once (the VAE is frozen).
    count, length = clips["rgb"].shape[:2]
    frames = clips["rgb"].flatten(0, 1)
    parts = [backbone.encode(frames[i : i + 16].permute(0, 3, 1, 2).float() / 255).half().cpu()
             for i in tqdm(range(0, len(frames), 16), desc="encoding clips", unit="batch")]
    latents = torch.cat(parts).view(count, length, *parts[0].shape[1:])
    layouts = None
    if args.layout_channels:
        if "layout" not in clips or clips["layout"].shape[2] != args.layout_channels:
            raise ValueError(f"--layout-channels {args.layout_channels} needs clips with a `layout` of that many "
                             "channels")
        grid = (clips["rgb"].shape[2] // backbone.downsample, clips["rgb"].shape[3] // backbone.downsample)
        layouts = F.interpolate(clips["layout"].flatten(0, 1).float() / 255, size=grid, mode="area")
        layouts = layouts.view(count, length, args.layout_channels, *grid)

    optimizer = torch.optim.AdamW(backbone.trainable_parameters(), lr=args.lr, weight_decay=1e-4)
    backbone.transformer.train()
    log, started = [], time.perf_counter()
    bar = tqdm(range(args.steps), desc="fine-tuning", unit="step")
    for step in bar:
        conditioning, targets = chunk_batch(clips, latents, layouts, args, backbone.downsample, generator)
        with autocast:
            loss = backbone.flow_matching_loss(conditioning, targets, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(backbone.trainable_parameters(), 1.0)
        optimizer.step()
        log.append({"step": step + 1, "loss": loss.item(), "seconds": round(time.perf_counter() - started, 2)})
        bar.set_postfix(loss=f"{log[-1]['loss']:.4f}")
    backbone.transformer.eval()

    path = backbone.save_lora(out / "lora.safetensors")
    (out / "losses.json").write_text(json.dumps({"args": vars(args), "log": log}, indent=1))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
