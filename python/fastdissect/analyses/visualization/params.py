"""How the optimised image is parameterised: a scaled Fourier spectrum or plain pixels, in
decorrelated colour, squashed into [0, 1] by a sigmoid (Olah et al. 2017, "Feature Visualization",
Distill; the recipe of Lucid and of its PyTorch port lucent).

Fourier: image = irfft2(scale * spectrum) / 4 per channel, with scale(f) = 1 / max(|f|, 1 / S) for
the 2-D frequency f of an S x S image: every frequency's coefficient is a parameter, and the
1 / |f| scale gives them equal energy in the image (natural images have a 1 / |f| spectrum), so
gradient steps do not favour the high frequencies that plain pixels drift into.
Colour: rgb = C^{1/2} / max_j |C^{1/2}_{:, j}| @ t for each pixel's three values t, C^{1/2} the square
root of ImageNet's colour correlation matrix: the parameters are decorrelated colours.
"""

from __future__ import annotations

import torch

# The square root (from its SVD) of the colour correlation matrix of ImageNet's pixels, as Lucid
# estimated it: lucid/optvis/param/color.py, `color_correlation_svd_sqrt` (copied unchanged in
# lucent/optvis/param/color.py). Rows: R, G, B; columns: the decorrelated components.
COLOR_CORRELATION_SVD_SQRT = ((0.26, 0.09, 0.02),
                              (0.27, 0.00, -0.05),
                              (0.27, -0.09, 0.03))
FOURIER_DIVISOR = 4.0  # Lucid's "magic" 4: the initial spectrum's images start with a small spread
INIT_STD = 0.01        # the initial parameters' standard deviation (Lucid's sd)
PARAMS = ("fourier", "pixel")


def color_matrix() -> torch.Tensor:
    """C^{1/2} normalised by its largest column norm (Lucid's `color_correlation_normalized`)."""
    m = torch.tensor(COLOR_CORRELATION_SVD_SQRT, dtype=torch.float32)
    return m / m.norm(dim=0).max()


def fourier_scale(size: int) -> torch.Tensor:
    """(S, S // 2 + 1) scale 1 / max(|f|, 1 / S) of each frequency of an rfft2 spectrum."""
    fy = torch.fft.fftfreq(size, dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(size, dtype=torch.float64)[None, :]
    freqs = torch.sqrt(fx * fx + fy * fy)
    return (1.0 / torch.clamp(freqs, min=1.0 / size)).to(torch.float32)


def parameter_shape(param: str, size: int) -> tuple[int, ...]:
    """The shape of one image's parameters: a (3, S, S // 2 + 1, 2) spectrum or (3, S, S) pixels."""
    return (3, size, size // 2 + 1, 2) if param == "fourier" else (3, size, size)


def initial(param: str, size: int, generator: torch.Generator) -> torch.Tensor:
    """One image's initial parameters: N(0, INIT_STD^2) entries drawn from `generator`."""
    return torch.randn(parameter_shape(param, size), generator=generator, dtype=torch.float32) * INIT_STD


def to_rgb(params: torch.Tensor, param: str, size: int, decorrelate: bool) -> torch.Tensor:
    """(B, 3, S, S) images in [0, 1] from (B, *parameter_shape) parameters (differentiable)."""
    if param == "fourier":
        spectrum = torch.view_as_complex(params * fourier_scale(size).to(params.device)[None, None, :, :, None])
        image = torch.fft.irfftn(spectrum, s=(size, size), dim=(2, 3), norm="ortho") / FOURIER_DIVISOR
    else:
        image = params
    if decorrelate:
        image = torch.einsum("rc,bchw->brhw", color_matrix().to(image.device), image)
    return torch.sigmoid(image)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) [0, 1] floats -> (B, S, S, 3) uint8, rounded to nearest."""
    return torch.floor(images.detach() * 255.0 + 0.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()

