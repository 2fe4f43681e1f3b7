"""Token mixers of ViX without attention: FNet and MLP-Mixer replace a layer's attention module outright (they have
no queries, keys or values, so no projections and no kernel). Same call as an attention module: tokens (B, N, C) in,
(B, N, C) out and None for the attention weights.
"""

import torch
from torch import nn
from transformers.utils import logging

from .configuration_vix import MIXER_CAPABILITIES, MixerCapabilities
from .kernels_vix import MixerShape


logger = logging.get_logger(__name__)


def warn_if_maps_requested(config, kwargs) -> None:
    if kwargs.get("output_attentions"):
        logger.warning_once(
            f"attention_type={config.attention_type!r} mixes tokens without attention weights, so no attention maps "
            "are returned (output_hidden_states works for every mixer)."
        )


class TokenMixer(nn.Module):
    """Base of the mixers without attention; subclasses set `capabilities` and implement `forward`."""

    capabilities: MixerCapabilities

    def __init__(self, config, shape: MixerShape):
        super().__init__()
        self.config = config


class RealFourierTransform2d(torch.autograd.Function):
    """y = Re(DFT_tokens(DFT_hidden(x))) for real x, with the backward pass written out.

    The DFT matrix W is symmetric, so for y = Re(W_N x W_C) the gradient is Re(W_N g W_C): the same transform
    of the incoming gradient. Autograd would instead differentiate through complex tensors and their copies.
    """

    @staticmethod
    def forward(ctx, hidden_states):
        return torch.fft.fft2(hidden_states, dim=(-2, -1)).real

    @staticmethod
    def backward(ctx, grad_output):
        return torch.fft.fft2(grad_output, dim=(-2, -1)).real


class FNetMixer(TokenMixer):
    """FNet: the real part of the 2D discrete Fourier transform over (tokens, hidden). No parameters."""

    capabilities = MIXER_CAPABILITIES["fnet"]

    def forward(self, hidden_states, position_embeddings=None, **kwargs):
        warn_if_maps_requested(self.config, kwargs)
        # torch has no half-precision FFT on CPU (and only power-of-two sizes on GPU): compute in fp32.
        with torch.autocast(device_type=hidden_states.device.type, enabled=False):
            mixed = RealFourierTransform2d.apply(hidden_states.float())
        return mixed.to(hidden_states.dtype), None


class TokenMixingMLP(TokenMixer):
    """MLP-Mixer's token mixing: one MLP across the N tokens, shared by all channels."""

    capabilities = MIXER_CAPABILITIES["mixer"]

    def __init__(self, config, shape: MixerShape):
        super().__init__(config, shape)
        self.seq_len = shape.num_tokens
        hidden = max(1, int(self.seq_len * config.mixer_token_expansion))
        self.fc1 = nn.Linear(self.seq_len, hidden)
        self.activation = nn.GELU()
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.fc2 = nn.Linear(hidden, self.seq_len)

    def forward(self, hidden_states, position_embeddings=None, **kwargs):
        warn_if_maps_requested(self.config, kwargs)
        num_tokens = hidden_states.shape[1]
        if num_tokens != self.seq_len:
            raise ValueError(
                f"The MLP-Mixer token MLP mixes exactly {self.seq_len} tokens (the image size and patch size of the "
                f"config), but got {num_tokens}. Resize images to the configured `image_size`."
            )
        tokens_last = hidden_states.transpose(1, 2)  # (B, C, N)
        mixed = self.fc2(self.dropout(self.activation(self.fc1(tokens_last))))
        return mixed.transpose(1, 2), None


TOKEN_MIXERS: dict[str, type[TokenMixer]] = {"fnet": FNetMixer, "mixer": TokenMixingMLP}

__all__ = ["TOKEN_MIXERS", "FNetMixer", "TokenMixer", "TokenMixingMLP"]
