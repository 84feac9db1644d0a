"""OpenCV's one import point for the ImageNet pipeline (offline backends, compositing, mask dilation).

OpenCV comes with the ``[imagenet]`` extra; :func:`import_cv2` imports it on first use and, if it
is missing, says in one line how to install it (also when only the learned backends are chosen:
the compositing needs OpenCV too).
"""

from __future__ import annotations

from types import ModuleType

from ...errors import ConfigError


def import_cv2() -> ModuleType:
    """The ``cv2`` module, or a :class:`ConfigError` naming the extra that provides it."""
    try:
        import cv2
    except ImportError:
        raise ConfigError("the offline backends need OpenCV: pip install 'lsbench[imagenet]'") from None
    return cv2
