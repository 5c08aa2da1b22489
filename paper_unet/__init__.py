"""paper_unet: a faithful PyTorch reproduction of the U-Net paper (Ronneberger et al., MICCAI 2015)."""

from paper_unet.model import PaddedUNet, UNet

__version__ = "0.1.0"
__all__ = ["UNet", "PaddedUNet", "__version__"]
