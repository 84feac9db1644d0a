"""Locally scaled ImageNet: detect → segment → inpaint → rescale → paste (paper Sec. 5.3).

``pipeline.generate`` is what ``lsbench generate imagenet`` calls; ``stages`` holds the backend
interface and registry, ``classical`` the offline backends, ``learned`` GroundingDINO/SAM/LaMa,
``sources`` the ILSVRC/ImageFolder readers, ``compose`` the rescale-and-paste geometry and
``cache`` the per-photo stage cache.
"""
