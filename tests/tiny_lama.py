"""An FFC-ResNet inpainting generator in the shape of LaMa's big-lama, scriptable with ``torch.jit.script``.

LaMa (Suvorov et al. 2022, github.com/advimman/lama, ``saicinpainting/training/modules/ffc.py``) fills a
hole with a fast-Fourier-convolution ResNet.  big-lama's generator: reflection-pad + 7×7 conv (4 → 64
channels), three stride-2 3×3 downsamplings (64 → 128 → 256 → 512), 18 FFC ResNet blocks at 1/8
resolution with 75 % of the channels in the global (spectral) branch, three transposed-conv upsamplings
and a 7×7 conv to RGB with a sigmoid.  ``big-lama.pt`` (TorchScript) wraps it as
``forward(image (B,3,H,W) in [0,1], mask (B,1,H,W) {0,1}) -> (B,3,H,W) in [0,1]``: the masked image and
the mask are concatenated in, and the prediction is composited with the input outside the mask.

:class:`LamaLike` rebuilds that contract and layer layout (``lama_like(ngf=64, n_blocks=18)`` is
big-lama-sized, about 51 M parameters like the real one; the tests use a tiny width).  It is not the
released network (the downsampling layers here are plain convolutions with the last one split into the
local/global channels, as big-lama's ``ratio_gout`` does, and there is no LFU), so weights do not
transfer; the cost per pixel is the same order.  ``composite=False`` returns the raw prediction, to test
that the inpainter composites by itself.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn


class FourierUnit(nn.Module):
    """1×1 conv + BN + ReLU on the real/imaginary parts of the 2-D real FFT (LaMa's ``FourierUnit``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels * 2, channels * 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(channels * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        ff = torch.fft.rfftn(x, dim=(-2, -1), norm="ortho")  # (B, C, H, W//2+1) complex
        ff = torch.stack((ff.real, ff.imag), dim=2).reshape(b, c * 2, h, ff.shape[-1])
        ff = torch.relu(self.bn(self.conv(ff)))
        ff = ff.reshape(b, c, 2, h, ff.shape[-1])
        return torch.fft.irfftn(torch.complex(ff[:, :, 0], ff[:, :, 1]), s=(h, w), dim=(-2, -1), norm="ortho")


class SpectralTransform(nn.Module):
    """LaMa's global branch: 1×1 conv down to half, Fourier unit (residual), 1×1 conv out."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(cin, cout // 2, 1, bias=False), nn.BatchNorm2d(cout // 2), nn.ReLU())
        self.fu = FourierUnit(cout // 2)
        self.conv2 = nn.Conv2d(cout // 2, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        return self.conv2(x + self.fu(x))


class FFCBnAct(nn.Module):
    """One fast Fourier convolution (local↔global 3×3 convs + spectral global→global), BN + ReLU per branch."""

    def __init__(self, cl: int, cg: int):
        super().__init__()
        self.l2l = nn.Conv2d(cl, cl, 3, padding=1, padding_mode="reflect", bias=False)
        self.l2g = nn.Conv2d(cl, cg, 3, padding=1, padding_mode="reflect", bias=False)
        self.g2l = nn.Conv2d(cg, cl, 3, padding=1, padding_mode="reflect", bias=False)
        self.g2g = SpectralTransform(cg, cg)
        self.bn_l, self.bn_g = nn.BatchNorm2d(cl), nn.BatchNorm2d(cg)

    def forward(self, xl: torch.Tensor, xg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        yl = torch.relu(self.bn_l(self.l2l(xl) + self.g2l(xg)))
        yg = torch.relu(self.bn_g(self.l2g(xl) + self.g2g(xg)))
        return yl, yg


class FFCResBlock(nn.Module):
    def __init__(self, cl: int, cg: int):
        super().__init__()
        self.conv1, self.conv2 = FFCBnAct(cl, cg), FFCBnAct(cl, cg)

    def forward(self, xl: torch.Tensor, xg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        yl, yg = self.conv1(xl, xg)
        yl, yg = self.conv2(yl, yg)
        return xl + yl, xg + yg


def _conv_bn_relu(cin: int, cout: int, k: int, stride: int = 1, padding: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride=stride, padding=padding, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU())


class LamaLike(nn.Module):
    """``forward(image, mask)`` with LaMa's TorchScript contract; H and W must be multiples of 2**n_down."""

    def __init__(self, ngf: int = 64, n_down: int = 3, n_blocks: int = 18, ratio_g: float = 0.75,
                 composite: bool = True):
        super().__init__()
        self.composite = composite
        self.stem = nn.Sequential(nn.ReflectionPad2d(3), _conv_bn_relu(4, ngf, 7, padding=0))
        self.down = nn.Sequential(*[_conv_bn_relu(ngf * 2**i, ngf * 2 ** (i + 1), 3, 2) for i in range(n_down)])
        width = ngf * 2**n_down
        self.cg = int(width * ratio_g)
        self.cl = width - self.cg
        self.blocks = nn.ModuleList([FFCResBlock(self.cl, self.cg) for _ in range(n_blocks)])
        up: list[nn.Module] = []
        for i in range(n_down, 0, -1):
            cin, cout = ngf * 2**i, ngf * 2 ** (i - 1)
            up += [nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1), nn.BatchNorm2d(cout),
                   nn.ReLU()]
        self.up = nn.Sequential(*up)
        self.head = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(ngf, 3, 7), nn.Sigmoid())

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = torch.cat([image * (1 - mask), mask], dim=1)
        x = self.down(self.stem(x))
        xl, xg = x[:, : self.cl], x[:, self.cl :]
        for block in self.blocks:
            xl, xg = block(xl, xg)
        pred = self.head(self.up(torch.cat([xl, xg], dim=1)))
        if self.composite:
            return mask * pred + (1 - mask) * image
        return pred


def lama_like(ngf: int = 64, n_down: int = 3, n_blocks: int = 18, composite: bool = True, seed: int = 0
              ) -> torch.jit.ScriptModule:
    """A scripted, eval-mode :class:`LamaLike` with seeded random weights (BN statistics randomised too)."""
    torch.manual_seed(seed)
    net = LamaLike(ngf, n_down, n_blocks, composite=composite)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    with warnings.catch_warnings():  # torch.jit.script is deprecated, but big-lama.pt is TorchScript
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.script(net.eval())
