"""Scene sampling for ``lsbench generate gso``: pure numpy, no ``bpy`` (unit-testable).

**Frames.**  World: metres, Z up.  The camera sits at the origin looking along +Y with +Z up
(Blender rotation ``(90°, 0, 0)``), a pinhole with ``focal_mm`` on a ``sensor_mm``-wide sensor,
square images of ``size`` px: ``fx = fy = focal_mm / sensor_mm * size``, ``cx = cy = size / 2``
(pixel ``(col, row)`` covers ``[col, col + 1) × [row, row + 1)``, rows top to bottom).  Camera
frame as OpenCV: x right, y down, z forward; ``world_to_camera`` maps world points into it.

**Objects** are normalised by the renderer to a bounding sphere of radius ``OBJECT_RADIUS``
around their bounding-box centre, so the sampler reasons about spheres: two objects never
intersect when their spheres do not, and an object's projection lies inside its sphere's disc.

**Groups.**  The reference scene places each object at a pixel position and a distance chosen so
its disc has a random radius; every variant moves each object along the camera ray through its
reference position (so it stays where it is in the image) to ``distance = reference / scale``
with its own ``scale`` drawn from the scale range: its apparent size is ``scale`` × the
reference's.  The HDRI, its rotation, the camera and the objects' orientations stay fixed.
Positions are redrawn until, in *every* variant, the spheres keep a gap, each disc lies inside
the image, and at most ``max_occlusion`` of the farther object's disc is covered by the nearer one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

OBJECT_RADIUS = 0.1  # m: bounding-sphere radius every object is normalised to
FOCAL_MM = 50.0
SENSOR_MM = 36.0
# Reference disc radius as a fraction of the image side: objects span ~16–28 % of the image at scale 1.
REF_RADIUS_FRAC = (0.08, 0.14)
MAX_OCCLUSION = 0.35  # at most this fraction of the farther object's disc may be covered by the nearer
GAP = 0.1  # spheres keep at least GAP * (r1 + r2) between them
POSITION_TRIES = 200
SCALE_TRIES = 50

# OpenCV camera frame from the world frame for a camera at the origin looking along +Y, Z up.
WORLD_TO_CAMERA_R = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


class SceneError(ValueError):
    """No valid placement found (options too extreme for two objects in the image)."""


def intrinsics(size: int, focal_mm: float = FOCAL_MM, sensor_mm: float = SENSOR_MM) -> np.ndarray:
    """Pinhole matrix K (3, 3) in pixels for a ``size`` × ``size`` image."""
    f = focal_mm / sensor_mm * size
    return np.array([[f, 0.0, size / 2], [0.0, f, size / 2], [0.0, 0.0, 1.0]])


def world_to_camera() -> np.ndarray:
    """4×4 world → OpenCV camera transform (the camera is fixed at the origin)."""
    m = np.eye(4)
    m[:3, :3] = WORLD_TO_CAMERA_R
    return m


def blender_camera_matrix() -> np.ndarray:
    """4×4 ``matrix_world`` of the Blender camera (local -Z forward, +Y up): rotation (90°, 0, 0)."""
    return np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])


def project(points: np.ndarray, K: np.ndarray) -> np.ndarray:
    """World points (N, 3) → pixel coordinates (N, 2) as (col, row) (points must be in front)."""
    cam = np.asarray(points, float) @ WORLD_TO_CAMERA_R.T
    uvw = cam @ K.T
    return uvw[:, :2] / uvw[:, 2:3]


def ray(pixel: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Unit world direction (3,) of the camera ray through pixel coordinates ``(col, row)``."""
    d = np.array([(pixel[0] - K[0, 2]) / K[0, 0], (pixel[1] - K[1, 2]) / K[1, 1], 1.0])
    return WORLD_TO_CAMERA_R.T @ (d / np.linalg.norm(d))


def disc_radius_px(distance: float, K: np.ndarray, off_axis: float = 0.0, radius: float = OBJECT_RADIUS) -> float:
    """Radius (px) of the disc centred on the sphere centre's projection that holds the projection of
    a sphere of ``radius`` m at ``distance`` m whose centre is ``off_axis`` rad from the optical axis.

    The sphere subtends a cone of half-angle ``a = asin(radius / distance)``; its image reaches
    farthest from the centre's projection radially outwards, at ``f · (tan(off_axis + a) − tan(off_axis))``
    (infinite once the cone reaches 90° from the axis)."""
    half = math.asin(min(radius / distance, 0.999))
    if off_axis + half >= math.pi / 2:
        return math.inf
    return K[0, 0] * (math.tan(off_axis + half) - math.tan(off_axis))


def distance_for_radius(r_px: float, K: np.ndarray, radius: float = OBJECT_RADIUS) -> float:
    """Distance (m) at which an on-axis sphere of ``radius`` projects to a disc of ``r_px`` px."""
    return radius / math.sin(math.atan(r_px / K[0, 0]))


def circle_overlap(c1: np.ndarray, r1: float, c2: np.ndarray, r2: float) -> float:
    """Area (px²) where two discs overlap."""
    d = float(np.linalg.norm(np.asarray(c1) - np.asarray(c2)))
    if d >= r1 + r2:
        return 0.0
    if d <= abs(r1 - r2):
        return math.pi * min(r1, r2) ** 2
    a1 = r1**2 * math.acos((d**2 + r1**2 - r2**2) / (2 * d * r1))
    a2 = r2**2 * math.acos((d**2 + r2**2 - r1**2) / (2 * d * r2))
    tri = 0.5 * math.sqrt(max(0.0, (-d + r1 + r2) * (d + r1 - r2) * (d - r1 + r2) * (d + r1 + r2)))
    return a1 + a2 - tri


def random_quaternion(rng: np.random.Generator) -> np.ndarray:
    """Uniformly random rotation as a unit quaternion (w, x, y, z), w ≥ 0."""
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    return q if q[0] >= 0 else -q


@dataclass
class GroupScene:
    """One group's scene: shared by all its variants except ``distances``/``scales`` (per variant).

    ``objects``: indices into the dataset's object list (class id = index + 1); ``pixels``: each
    object's reference image position (col, row) in px; ``rotations``: unit quaternions (w, x, y, z);
    ``reference_distances``: m; ``scales``/``distances``: (variants, objects); ``render_seed``: the
    Cycles seed (one per group, so every variant sees the same sampling noise).
    """

    objects: list[int]
    hdri: int
    hdri_rotation: float  # rad about world Z
    rotations: np.ndarray  # (k, 4)
    pixels: np.ndarray  # (k, 2)
    reference_distances: np.ndarray  # (k,)
    scales: np.ndarray  # (v, k)
    render_seed: int
    attempt: int = 0

    @property
    def distances(self) -> np.ndarray:
        """(variants, objects) distances in m: reference / scale."""
        return self.reference_distances[None, :] / self.scales

    def positions(self, K: np.ndarray) -> np.ndarray:
        """(variants, objects, 3) world positions of the objects' centres in m."""
        dirs = np.stack([ray(p, K) for p in self.pixels])
        return self.distances[:, :, None] * dirs[None]


def placement_ok(pixels: np.ndarray, distances: np.ndarray, K: np.ndarray, size: int,
                 max_occlusion: float = MAX_OCCLUSION, radius: float = OBJECT_RADIUS) -> bool:
    """Whether one variant's placement is valid: discs inside the image, spheres apart, occlusion bounded.

    ``pixels`` (k, 2) reference positions (col, row); ``distances`` (k,) in m.
    """
    k = len(pixels)
    dirs = np.stack([ray(p, K) for p in pixels])
    centres = distances[:, None] * dirs
    off = [math.acos(min(1.0, float(d[1]))) for d in dirs]  # angle to the optical axis (+Y)
    radii = [disc_radius_px(float(distances[i]), K, off[i], radius) for i in range(k)]
    for i in range(k):
        (u, v), r = pixels[i], radii[i]
        if u - r < 0 or v - r < 0 or u + r > size or v + r > size:
            return False
    for i in range(k):
        for j in range(i + 1, k):
            if np.linalg.norm(centres[i] - centres[j]) < (2 + 2 * GAP) * radius:
                return False
            near, far = (i, j) if distances[i] < distances[j] else (j, i)
            covered = circle_overlap(pixels[near], radii[near], pixels[far], radii[far])
            if covered > max_occlusion * math.pi * radii[far] ** 2:
                return False
    return True


def sample_group(
    rng: np.random.Generator,
    *,
    num_objects: int,
    num_hdris: int,
    size: int,
    scale_range: tuple[float, float],
    variants: int,
    grouped: bool,
    per_image: int = 2,
    attempt: int = 0,
) -> GroupScene:
    """Draw one group's scene.  ``grouped``: variant 0 is the reference (all scales 1) followed by
    ``variants`` scaled ones; otherwise a single image with drawn scales.  Raises :class:`SceneError`
    when no valid placement is found (the scale range is too wide for the image)."""
    if num_objects < per_image:
        raise SceneError(f"need at least {per_image} objects, have {num_objects}")
    K = intrinsics(size)
    lo, hi = scale_range
    objects = [int(i) for i in rng.choice(num_objects, size=per_image, replace=False)]
    hdri = int(rng.integers(num_hdris))
    hdri_rotation = float(rng.uniform(0.0, 2 * math.pi))
    rotations = np.stack([random_quaternion(rng) for _ in range(per_image)])
    render_seed = int(rng.integers(0, 2**31 - 1))
    for _ in range(SCALE_TRIES):
        r_ref = rng.uniform(*REF_RADIUS_FRAC, size=per_image) * size
        ref_d = np.array([distance_for_radius(float(r), K) for r in r_ref])
        drawn = rng.uniform(lo, hi, size=(variants if grouped else 1, per_image))
        scales = np.concatenate([np.ones((1, per_image)), drawn]) if grouped else drawn
        scales = np.round(scales, 6)
        for _ in range(POSITION_TRIES):
            pixels = rng.uniform(0, size, size=(per_image, 2))
            if all(placement_ok(pixels, ref_d / s, K, size) for s in scales):
                return GroupScene(objects, hdri, hdri_rotation, rotations, pixels, ref_d, scales, render_seed, attempt)
    raise SceneError(
        f"found no placement of {per_image} objects inside {size}×{size} px for scales up to {hi}; "
        "lower the top of --scale-range"
    )
