"""GPU memory of the four PPO models under ZeRO-2 and ZeRO-3, from the ZeRO paper's formulas
(Rajbhandari et al. 2020) and the activation estimate of Korthikanti et al. 2022, for our PPO recipe.

    python benchmarks/zero_memory.py                       # Mistral-7B, 8 GPUs, gsm8k_mistral7b.yaml (arm prm)
    python benchmarks/zero_memory.py --params 1.5e9 --layers 28 --hidden 1536 --vocab 151936 --gpus 4

Per GPU, in GB (1e9 bytes), bf16 weights with fp32 Adam (mixed precision: 2 + 2 + 12 bytes a parameter):
  trained model (actor, critic): ZeRO-2 2P + 14P/N, ZeRO-3 16P/N;  frozen (reference, PRM): 2P, ZeRO-3 2P/N.
  activations of one trained forward+backward: L*s*b*h*34 bytes, with gradient checkpointing
  L*s*b*h*2 + one layer's s*b*h*34; logits: b*s*V bf16 + three fp32 copies at the response positions.
  ZeRO-3 also keeps gathered parameters alive (stage3_max_live_parameters, 1e9 by default: 2 GB bf16).
Estimates, not measurements: allocator fragmentation and the KV cache of rollouts come on top.
"""
from __future__ import annotations

import argparse


def per_gpu(a: argparse.Namespace) -> list[tuple[str, float, float, float, float, float]]:
    """(setting, actor+critic, reference+PRM, activations, buffers, total) in GB per GPU."""
    p, n, gb = a.params, a.gpus, 1e9
    s, b, h, L, v = a.prompt_len + a.new_tokens, a.micro_batch, a.hidden, a.layers, a.vocab
    logits = (b * s * v * 2 + 3 * b * a.new_tokens * v * 4) / gb
    act_full = L * s * b * h * 34 / gb + logits
    act_ckpt = (L * s * b * h * 2 + s * b * h * 34) / gb + logits
    live = 2 * min(p, 1e9) / gb
    rows = []
    for name, trained, frozen, act, buffers in (
        ("ZeRO-2", 2 * (2 * p + 14 * p / n), 2 * 2 * p, act_full, 0.0),
        ("ZeRO-2, gradient checkpointing", 2 * (2 * p + 14 * p / n), 2 * 2 * p, act_ckpt, 0.0),
        ("ZeRO-3", 2 * 16 * p / n, 2 * 2 * p / n, act_full, live),
        ("ZeRO-3, gradient checkpointing", 2 * 16 * p / n, 2 * 2 * p / n, act_ckpt, live),
        ("ZeRO-2, LoRA actor (no reference)", 2 * p + (2 * p + 14 * p / n), 2 * p, act_ckpt, 0.0),
    ):
        rows.append((name, trained / gb, frozen / gb, act, buffers, trained / gb + frozen / gb + act + buffers))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=float, default=7.24e9)  # Mistral-7B
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--micro_batch", type=int, default=8)  # ppo.minibatch_size of gsm8k_mistral7b.yaml (arm prm)
    ap.add_argument("--prompt_len", type=int, default=256)
    ap.add_argument("--new_tokens", type=int, default=512)  # ppo.max_new_tokens
    a = ap.parse_args()
    print(f"{a.params / 1e9:.2f}B parameters, {a.gpus} GPUs, micro-batch {a.micro_batch} x "
          f"{a.prompt_len + a.new_tokens} tokens; GB per GPU")
    print("| setting | actor + critic | reference + PRM | activations | ZeRO-3 buffers | total | fits |")
    print("|---|---|---|---|---|---|---|")
    for name, trained, frozen, act, buffers, total in per_gpu(a):
        fits = ", ".join(f"{g} GB" for g in (40, 80, 141) if total < 0.9 * g) or "none of 40/80/141 GB"
        print(f"| {name} | {trained:.1f} | {frozen:.1f} | {act:.1f} | {buffers:.1f} | {total:.1f} | {fits} |")


if __name__ == "__main__":
    main()
