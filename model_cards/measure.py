"""Architecture numbers a card states, measured on the model itself: tokens, parameters, forward FLOPs.

These are produced by a run here (a forward pass at batch 1 under torch's FlopCounterMode), not written by
hand, and take well under a second for the CIFAR-size models.
"""

from pathlib import Path

import torch


def cpu_flash_attention_flops(query, key, value, *args, **kwargs) -> int:
    """QK^T and PV of torch's fused CPU attention kernel, which FlopCounterMode does not know."""
    batch, heads, queries, dim = query
    return 2 * batch * heads * queries * key[-2] * (dim + value[-1])


def cpu_flash_attention_backward_flops(grad_out, query, key, value, *args, **kwargs) -> int:
    """Flash backward: recompute QK^T, then dV = P^T dO, dP = dO V^T, dQ = dS K, dK = dS^T Q."""
    batch, heads, queries, dim = query
    return 2 * batch * heads * queries * key[-2] * (3 * dim + 2 * value[-1])


def flop_counter():
    """torch's FlopCounterMode, taught the CPU attention kernels (a multiply-add counts 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    return FlopCounterMode(display=False, custom_mapping={
        aten._scaled_dot_product_flash_attention_for_cpu: cpu_flash_attention_flops,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: cpu_flash_attention_backward_flops,
    })


def count_forward_flops(model: torch.nn.Module, pixel_values: torch.Tensor) -> int:
    """FLOPs of one forward pass; matmuls, convolutions and attention kernels."""
    counter = flop_counter()
    with counter, torch.no_grad():
        model(pixel_values)
    return int(counter.get_total_flops())


def measure_architecture(config: dict) -> dict:
    """Tokens, patch grid, parameters and forward FLOPs (batch 1) of the model a config.json describes (any
    backbone; for PiT the tokens and grid of its first, largest stage)."""
    from modeling_vix import BACKBONES

    config_class, _, model_class = BACKBONES[config.get("model_type", "vix")]
    vix_config = config_class.from_dict(config)
    with torch.random.fork_rng(devices=[]):  # building a model draws random weights; leave the caller's RNG alone
        torch.manual_seed(0)
        model = model_class(vix_config).eval()
    height, width = vix_config.image_size_hw
    return {
        "num_tokens": vix_config.num_tokens,
        "grid_size": list(vix_config.grid_size),
        "num_parameters": model.num_parameters(),
        "forward_flops": count_forward_flops(model, torch.zeros(1, vix_config.num_channels, height, width)),
    }


def weights_size_bytes(folder) -> int | None:
    """Bytes of the safetensors weights in a folder (all shards), None when there are none."""
    files = sorted(Path(folder).glob("*.safetensors"))
    return sum(path.stat().st_size for path in files) if files else None


__all__ = ["count_forward_flops", "flop_counter", "measure_architecture", "weights_size_bytes"]
