"""Wan backbone speed at the Wan2.2-TI2V-5B size: seconds per generated frame in steady state.

The transformer (bfloat16) and VAE (float32, as ``WanBackbone.from_pretrained`` loads it) are
built at their real sizes with random weights: speed does not depend on the weights, so no
checkpoint is needed. Each chunk denoises ``--chunk`` target frames after one clean context
frame at ``--height`` x ``--width`` for ``--steps`` steps, then decodes every frame; one
warm-up chunk, then ``--chunks`` timed ones. The published latent-memory method reports
0.25 s/frame on an H100 (arXiv 2606.09828; its step count is not part of that figure here,
so compare at the steps you run). Needs a CUDA GPU; ``--tiny`` runs the tests' tiny model
instead (a smoke run, any device).

    python benchmarks/wan_speed.py [--chunk 33] [--steps 50] [--height 704] [--width 1280]
                                   [--chunks 2] [--out benchmarks/results/wan_speed.json]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel

from common import write_report  # noqa: E402  (benchmarks/ is on sys.path when run)
from world_model.backbone import Conditioning
from world_model.memory import MemoryRead
from world_model.wan_backbone import WanBackbone, WanBackboneConfig, make_tiny_wan

# diffusers' Wan-AI/Wan2.2-TI2V-5B-Diffusers configs (latent statistics left at 0 / 1: the
# weights are random anyway).
TI2V_5B_TRANSFORMER = dict(
    patch_size=(1, 2, 2), num_attention_heads=24, attention_head_dim=128, in_channels=48, out_channels=48,
    text_dim=4096, freq_dim=256, ffn_dim=14336, num_layers=30, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6,
)
TI2V_5B_VAE = dict(
    base_dim=160, decoder_base_dim=256, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
    temperal_downsample=[False, True, True], is_residual=True, in_channels=12, out_channels=12, patch_size=2,
    scale_factor_spatial=16, scale_factor_temporal=4, latents_mean=[0.0] * 48, latents_std=[1.0] * 48,
)
TI2V_5B_PROMPT_TOKENS = 512


def ti2v_5b_backbone(config: WanBackboneConfig, device: str) -> WanBackbone:
    """The TI2V-5B-size backbone with random weights on ``device``."""
    with torch.device(device):
        transformer = WanTransformer3DModel(**TI2V_5B_TRANSFORMER).to(torch.bfloat16)
        vae = AutoencoderKLWan(**TI2V_5B_VAE)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
    prompt_embeds = torch.zeros(1, TI2V_5B_PROMPT_TOKENS, TI2V_5B_TRANSFORMER["text_dim"])
    return WanBackbone(vae, transformer, scheduler, prompt_embeds, config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--chunk", type=int, default=33, help="[frames] targets per chunk")
    parser.add_argument("--steps", type=int, default=50, help="denoising steps per chunk")
    parser.add_argument("--height", type=int, default=704, help="[px] (Wan2.2-TI2V-5B's 720p)")
    parser.add_argument("--width", type=int, default=1280, help="[px]")
    parser.add_argument("--chunks", type=int, default=2, help="timed chunks after the warm-up")
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny model (smoke run)")
    parser.add_argument("--out", default="benchmarks/results/wan_speed.json")
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit("wan_speed needs a CUDA GPU (or --tiny --device cpu for a smoke run)")
    if not args.tiny and not cuda:
        raise SystemExit("the TI2V-5B size runs on a CUDA GPU only; use --tiny for a CPU smoke run")

    config = WanBackboneConfig(chunk_frames=args.chunk, num_inference_steps=args.steps, progress=False)
    if args.tiny:
        with tempfile.TemporaryDirectory() as folder:
            backbone = WanBackbone.from_pretrained(make_tiny_wan(folder), device=args.device, config=config)
    else:
        backbone = ti2v_5b_backbone(config, args.device)
    channels, downsample = backbone.latent_channels, backbone.downsample
    multiple = downsample * backbone.transformer.config.patch_size[1]
    if args.height % multiple or args.width % multiple:
        raise SystemExit(f"height and width must be multiples of {multiple}")
    grid = (args.height // downsample, args.width // downsample)
    generator = torch.Generator().manual_seed(0)
    targets = args.chunk
    conditioning = Conditioning(
        memory=MemoryRead(latents=torch.randn(targets, channels, *grid, generator=generator),
                          valid=torch.rand(targets, 1, *grid, generator=generator) < 0.5,
                          depth=torch.ones(targets, 1, *grid)),
        context=torch.randn(1, 1, channels, *grid, generator=generator),
        motion=torch.zeros(targets, 6),
    )

    def timed(function):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = function()
        if cuda:
            torch.cuda.synchronize()
        return result, time.perf_counter() - start

    backbone.decode(backbone.generate(conditioning, generator)[:1])  # warm-up
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    generate_s = decode_s = 0.0
    for _ in range(args.chunks):
        latents, seconds = timed(lambda: backbone.generate(conditioning, generator))
        generate_s += seconds
        _, seconds = timed(lambda: [backbone.decode(latents[i : i + 1]) for i in range(targets)])
        decode_s += seconds
    frames = args.chunks * targets
    patch_h, patch_w = backbone.transformer.config.patch_size[1:]
    tokens = (1 + targets) * (grid[0] // patch_h) * (grid[1] // patch_w)
    report = {
        "benchmark": "wan_speed",
        "model": "tiny" if args.tiny else "Wan2.2-TI2V-5B size, random weights, transformer bfloat16, VAE float32",
        "device": torch.cuda.get_device_name() if cuda else args.device,
        "image": [args.height, args.width],
        "chunk_frames": targets,
        "context_frames": 1,
        "steps": args.steps,
        "tokens_per_chunk": tokens,
        "timed_chunks": args.chunks,
        "generate_s_per_frame": round(generate_s / frames, 4),
        "decode_s_per_frame": round(decode_s / frames, 4),
        "total_s_per_frame": round((generate_s + decode_s) / frames, 4),
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "published_s_per_frame_h100": 0.25,
    }
    print(f"{report['total_s_per_frame']:.3f} s/frame (generate {report['generate_s_per_frame']:.3f}, "
          f"decode {report['decode_s_per_frame']:.3f}) at {args.height}x{args.width}, chunk {targets}, "
          f"{args.steps} steps")
    write_report(report, args.out)


if __name__ == "__main__":
    main()
