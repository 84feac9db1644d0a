"""Blender renderer for ``lsbench generate gso``: one ``bpy`` scene per worker process.

``bpy`` is imported here, lazily, by the process that renders (a runner worker, or the main
process with ``--workers 1``); it is not thread-safe, so each process owns one :class:`Renderer`
and renders whole shards.  Loaded meshes, textures and HDRIs are kept between renders (an LRU
of ``CACHE_OBJECTS`` objects) and hidden when a scene does not use them.

**Images.**  Cycles (or EEVEE) with the HDRI as the only light and background, ``samples`` per
pixel, optional OpenImageDenoise, AgX view transform, written as 8-bit RGB.

**Masks.**  A second Cycles render of the same scene in which every surface emits its object's
pass index (the object index, set to the class id) and the world is black: 1 sample, no
bounces, a 0.01-px pixel filter (so no anti-aliasing: each pixel holds the id of the surface
seen through its centre, occlusion resolved by the ray itself), written as a float32 EXR and
rounded.  It costs ~0.05 s at 256², whatever engine renders the image.

Blender's own console messages (to stdout) are swallowed; a failed render raises
:class:`~lsbench.errors.DataError` with Blender's last message.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import re
import shutil
import sys
import tempfile
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ...errors import ConfigError, DataError
from . import scene as sc
from .assets import HdriAsset, ObjectAsset
from .settings import DEVICES, ENGINES, VIEW_TRANSFORM, RenderSettings  # noqa: F401 - part of this module's API

CACHE_OBJECTS = 16
_BLENDER_SCRIPTS = re.compile(r"[\\/](bpy|blender)[\\/]\d+\.\d+[\\/]scripts([\\/]|$)")
WORLD_MAP_RESOLUTION = 512  # px: width of the HDRI's importance-sampling map


class RenderError(DataError):
    """Blender could not load an asset or render."""


def import_bpy():
    """``bpy`` or a :class:`ConfigError` that says how to install it."""
    if "bpy" not in sys.modules:
        # A process spawned by one that imported bpy inherits Blender's script folders on sys.path;
        # their Python-only ``bpy`` package would shadow the wheel's and fail on ``import _bpy``.
        sys.path[:] = [p for p in sys.path if not _BLENDER_SCRIPTS.search(p)]
    try:
        import bpy
    except ImportError as e:
        raise ConfigError(
            f"rendering GSO scenes needs Blender as a Python module (bpy==5.0.1, Python 3.11): "
            f"pip install 'lsbench[gso]' ({e})"
        ) from None
    return bpy


def require_bpy() -> None:
    """Raise :class:`ConfigError` (with the install command) unless ``bpy`` is importable; does not import it."""
    try:
        found = importlib.util.find_spec("bpy") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise ConfigError(
            "rendering GSO scenes needs Blender as a Python module (bpy==5.0.1, Python 3.11): "
            "pip install 'lsbench[gso]'"
        )


_PROBE = """
import sys
try:  # no orphan if the generate command is killed meanwhile
    from lsbench.processes import die_with_parent
    die_with_parent(int(sys.argv[2]))
except ImportError:
    pass
import bpy
prefs = bpy.context.preferences.addons["cycles"].preferences
kind = sys.argv[1]
try:
    prefs.compute_device_type = kind
    prefs.get_devices()
except TypeError:
    print("LSBENCH-DEVICES none")
else:
    print("LSBENCH-DEVICES " + ",".join(d.name for d in prefs.devices if d.type == kind))
"""


def probe_device(device: str) -> list[str]:
    """Names of the Cycles ``device`` (cuda/optix) devices Blender sees, asked in a separate process
    (before any shard is planned, so a wrong ``--device`` leaves nothing behind); raises
    :class:`ConfigError` when there are none."""
    import subprocess

    kind = device.upper()
    try:
        done = subprocess.run([sys.executable, "-c", _PROBE, kind, str(os.getpid())], capture_output=True, text=True,
                              timeout=300)
    except subprocess.TimeoutExpired:
        raise ConfigError(f"Blender took over 5 minutes to list {kind} devices; use --device cpu") from None
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("LSBENCH-DEVICES ")), None)
    if line is None:
        raise ConfigError(f"Blender could not list {kind} devices ({(done.stderr.strip().splitlines() or ['?'])[-1]})")
    names = line.split(" ", 1)[1]
    if names == "none":
        raise ConfigError(f"this bpy build has no {kind} support; use --device cpu")
    if not names:
        raise ConfigError(f"Blender sees no {kind} device on this machine; use --device cpu (or another device)")
    return names.split(",")


# What Blender decodes of each HDRI, in a separate process (as the device probe): the renderer loads an
# HDRI with a valid header and a garbage body as an image of 0x0 px without raising, and lights every
# render with nothing (almost black).  ~0.7 s to start bpy, then ~0.03 s per 1024x512 EXR (measured).
_HDRI_PROBE = """
import json, sys
try:
    from lsbench.processes import die_with_parent
    die_with_parent(int(sys.argv[1]))
except ImportError:
    pass
import numpy as np
import bpy
for path in sys.argv[3:]:
    out = {"path": path}
    try:
        image = bpy.data.images.load(path)
    except RuntimeError as e:
        out["error"] = (str(e).strip().splitlines() or ["cannot read"])[-1]
        print("LSBENCH-HDRI " + json.dumps(out), flush=True)
        continue
    w, h = image.size
    out.update(width=w, height=h)
    if w and h and image.has_data and image.channels >= 3:
        cap = int(sys.argv[2])
        if w > cap:  # bounded: statistics of a downscaled copy (a 16K EXR is 2 GB as float)
            image.scale(cap, max(1, round(h * cap / w)))
        px = np.empty(image.size[0] * image.size[1] * image.channels, np.float32)
        image.pixels.foreach_get(px)
        rgb = px.reshape(-1, image.channels)[:, :3]
        finite = np.isfinite(rgb).all(axis=1)
        out.update(finite=float(finite.mean()), lit=float((rgb[finite].max(axis=1, initial=0) > 1e-3).mean())
                   if finite.any() else 0.0)
    bpy.data.images.remove(image)
    print("LSBENCH-HDRI " + json.dumps(out), flush=True)
"""
HDRI_CHECK_WIDTH = 2048  # px: HDRIs wider than this are checked on a downscaled copy
MIN_LIT_FRACTION = 0.01  # an HDRI with fewer pixels above 1e-3 than this lights a scene (almost) black


def check_hdris(hdris: list[HdriAsset]) -> None:
    """Decode every HDRI as the renderer will (Blender, in a child process) and raise :class:`DataError`
    naming the unusable ones (no pixels decoded, NaN/infinite pixels, almost black), in one line, before
    anything is written."""
    import json
    import subprocess

    if not hdris:
        return
    paths = [h.path for h in hdris]
    try:
        done = subprocess.run([sys.executable, "-c", _HDRI_PROBE, str(os.getpid()), str(HDRI_CHECK_WIDTH), *paths],
                              capture_output=True, text=True, timeout=120 + 30 * len(paths))
    except subprocess.TimeoutExpired:
        raise DataError(f"Blender took too long to decode the {len(paths)} HDRIs; check them with Blender") from None
    found = {}
    for line in done.stdout.splitlines():
        if line.startswith("LSBENCH-HDRI "):
            record = json.loads(line.split(" ", 1)[1])
            found[record["path"]] = record
    bad = []
    for h in hdris:
        r = found.get(h.path)
        if r is None:
            why = f"Blender stopped before reading it ({(done.stderr.strip().splitlines() or ['?'])[-1]})"
        elif r.get("error"):
            why = f"Blender cannot read it ({r['error']})"
        elif not (r.get("width") and r.get("height")) or "finite" not in r:
            why = "Blender decodes no pixels: its body is damaged or truncated"
        elif r["finite"] < 1:
            why = f"{1 - r['finite']:.1%} of its pixels are NaN or infinite"
        elif r["lit"] < MIN_LIT_FRACTION:
            why = f"almost black ({r['lit']:.2%} of its pixels above 0.001)"
        else:
            continue
        bad.append(f"{Path(h.path).name}: {why if len(why) <= 80 else why[:79] + '…'}")
    if bad:  # the list last: the CLI keeps an error to one line of 400 characters
        listed = "; ".join(bad[:3]) + ("; ..." if len(bad) > 3 else "")
        raise DataError(f"{len(bad)} of the {len(hdris)} HDRIs are unusable; replace or remove them (nothing was "
                        f"written): {listed}")


@contextlib.contextmanager
def _quiet_stdout(stderr: bool = False):
    """Send what Blender prints on file descriptor 1 (and 2 with ``stderr``: EEVEE's EGL chatter) to a
    scratch file while the block runs."""
    fds = (1, 2) if stderr else (1,)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(fd) for fd in fds]
    with tempfile.TemporaryFile() as sink:
        for fd in fds:
            os.dup2(sink.fileno(), fd)
        try:
            yield sink
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, old in zip(fds, saved):
                os.dup2(old, fd)
                os.close(old)


def _last_line(sink) -> str:
    sink.seek(0)
    lines = [ln.strip() for ln in sink.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _node_tree(block):
    """The shader node tree of a material/world (Blender 5 always has one; older versions need use_nodes)."""
    if block.node_tree is None:
        block.use_nodes = True
    return block.node_tree


class Renderer:
    """One Blender scene (camera, HDRI world, object cache) rendering GSO groups."""

    def __init__(self, settings: RenderSettings):
        self.settings = settings
        self.bpy = bpy = import_bpy()
        self.tmp = Path(tempfile.mkdtemp(prefix="lsbench-gso-"))
        atexit.register(shutil.rmtree, self.tmp, True)
        self._extracted = 0  # zip extractions so far (each gets its own folder)
        # asset → (bpy object, verts); keyed by the whole asset (paths too), not its id: one process may
        # render several datasets whose objects share ids (a GSO "duck" and the demo's).
        self.objects: OrderedDict[ObjectAsset, tuple[object, np.ndarray]] = OrderedDict()
        with _quiet_stdout():
            bpy.ops.wm.read_factory_settings(use_empty=True)
        scene = self.scene = bpy.context.scene
        s = settings
        scene.render.resolution_x = scene.render.resolution_y = s.size
        scene.render.resolution_percentage = 100
        scene.render.dither_intensity = 0.0
        scene.render.threads_mode = "FIXED" if s.threads else "AUTO"
        if s.threads:
            scene.render.threads = s.threads
        scene.view_settings.view_transform = VIEW_TRANSFORM
        scene.view_settings.look = "None"
        scene.cycles.device = "CPU"
        if s.device != "cpu":
            self._enable_gpu(s.device)
        cam = bpy.data.cameras.new("camera")
        cam.lens, cam.sensor_width, cam.sensor_fit = sc.FOCAL_MM, sc.SENSOR_MM, "HORIZONTAL"
        cam.clip_start, cam.clip_end = 0.01, 100.0
        cam_obj = bpy.data.objects.new("camera", cam)
        import mathutils  # ships with bpy

        cam_obj.matrix_world = mathutils.Matrix(sc.blender_camera_matrix().tolist())
        scene.collection.objects.link(cam_obj)
        scene.camera = cam_obj
        # World: environment texture, rotated about Z by a Mapping node.
        world = self.world = bpy.data.worlds.new("hdri")
        nt = _node_tree(world)
        coords = nt.nodes.new("ShaderNodeTexCoord")
        self.mapping = nt.nodes.new("ShaderNodeMapping")
        self.env = nt.nodes.new("ShaderNodeTexEnvironment")
        nt.links.new(coords.outputs["Generated"], self.mapping.inputs["Vector"])
        nt.links.new(self.mapping.outputs["Vector"], self.env.inputs["Vector"])
        nt.links.new(self.env.outputs["Color"], nt.nodes["Background"].inputs["Color"])
        # Cycles' automatic importance map (1024 px wide) is rebuilt on every render and costs ~1.2 s on
        # 2 cores; a 512-px map is ample for the HDRI as the only light and costs ~0.05 s.
        world.cycles.sampling_method = "MANUAL"
        world.cycles.sample_map_resolution = WORLD_MAP_RESOLUTION
        scene.world = world
        # Mask material: emission = object pass index (the class id).
        mask = self.mask_material = bpy.data.materials.new("lsbench-object-index")
        mt = _node_tree(mask)
        for node in list(mt.nodes):
            mt.nodes.remove(node)
        info, emit, out = (mt.nodes.new(t) for t in ("ShaderNodeObjectInfo", "ShaderNodeEmission",
                                                      "ShaderNodeOutputMaterial"))
        mt.links.new(info.outputs["Object Index"], emit.inputs["Color"])
        emit.inputs["Strength"].default_value = 1.0
        mt.links.new(emit.outputs["Emission"], out.inputs["Surface"])

    # ------------------------------------------------------------------ setup

    def _enable_gpu(self, device: str) -> None:
        prefs = self.bpy.context.preferences.addons["cycles"].preferences
        kind = device.upper()
        try:
            prefs.compute_device_type = kind
            prefs.get_devices()
        except TypeError:
            raise ConfigError(f"this bpy build has no {kind} support; use --device cpu") from None
        gpus = [d for d in prefs.devices if d.type == kind]
        if not gpus:
            raise ConfigError(f"Blender sees no {kind} device on this machine; use --device cpu (or another device)")
        for d in prefs.devices:
            d.use = d.type == kind
        self.scene.cycles.device = "GPU"

    def _load_image(self, path: str):
        with _quiet_stdout() as sink:
            try:
                return self.bpy.data.images.load(path, check_existing=True)
            except RuntimeError:
                raise RenderError(f"Blender cannot read the image {path} ({_last_line(sink)})") from None

    def _local_files(self, asset: ObjectAsset) -> tuple[str, str]:
        """Mesh and texture paths on disk (zip members are extracted into this renderer's temp folder)."""
        if asset.archive is None:
            return asset.mesh, asset.texture
        dst = self.tmp / "objects" / f"{self._extracted}-{asset.id}"  # unique: images are cached by path
        self._extracted += 1
        paths = []
        with zipfile.ZipFile(asset.archive) as z:
            for member, name in ((asset.mesh, "model.obj"), (asset.texture, "texture" + Path(asset.texture).suffix)):
                target = dst / name
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(member) as src, open(target, "wb") as f:
                    shutil.copyfileobj(src, f)
                paths.append(str(target))
        return paths[0], paths[1]

    def _textured_material(self, asset: ObjectAsset, texture: str):
        bpy = self.bpy
        mat = bpy.data.materials.new(f"lsbench-{asset.id}")
        nt = _node_tree(mat)
        bsdf = nt.nodes["Principled BSDF"]
        bsdf.inputs["Roughness"].default_value = 0.6
        tex = nt.nodes.new("ShaderNodeTexImage")
        tex.image = self._load_image(texture)
        tex.interpolation = "Linear"
        nt.links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
        return mat

    def _load_object(self, asset: ObjectAsset):
        """Import, join, normalise (bounding sphere of radius OBJECT_RADIUS at the origin) and texture."""
        bpy = self.bpy
        mesh_path, texture = self._local_files(asset)
        where = f"{asset.archive}:{asset.mesh}" if asset.archive else asset.mesh
        before = set(bpy.data.objects)
        with _quiet_stdout() as sink:
            try:
                bpy.ops.wm.obj_import(filepath=mesh_path)
            except RuntimeError:
                raise RenderError(f"object {asset.id}: Blender cannot import {where} ({_last_line(sink)})") from None
        new = [o for o in bpy.data.objects if o not in before]
        meshes = [o for o in new if o.type == "MESH" and len(o.data.polygons) > 0]
        if not meshes:
            for o in new:
                bpy.data.objects.remove(o)
            raise RenderError(f"object {asset.id}: importing {where} yields no mesh with faces (broken OBJ?)")
        for o in new:
            if o not in meshes:
                bpy.data.objects.remove(o)
        if len(meshes) > 1:
            with bpy.context.temp_override(active_object=meshes[0], selected_editable_objects=meshes,
                                           selected_objects=meshes):
                bpy.ops.object.join()
        obj = meshes[0]
        obj.name = f"lsbench-{asset.id}"
        bpy.context.view_layer.update()
        # Bake the import transform (axis conversion) into the vertices, then centre and scale.
        mesh = obj.data
        mesh.transform(obj.matrix_world)
        obj.matrix_world.identity()
        verts = np.empty(len(mesh.vertices) * 3, np.float64)
        mesh.vertices.foreach_get("co", verts)
        verts = verts.reshape(-1, 3)
        centre = (verts.min(0) + verts.max(0)) / 2
        extent = float(np.linalg.norm(verts - centre, axis=1).max())
        if not np.isfinite(extent) or extent <= 0:
            raise RenderError(f"object {asset.id}: the mesh in {where} is degenerate (all vertices coincide)")
        factor = sc.OBJECT_RADIUS / extent
        verts = (verts - centre) * factor
        mesh.vertices.foreach_set("co", verts.astype(np.float32).ravel())
        mesh.update()
        if not mesh.uv_layers:
            raise RenderError(f"object {asset.id}: {where} has no texture coordinates (vt) for its texture")
        material = self._textured_material(asset, texture)
        imported = [m for m in mesh.materials if m is not None]  # the OBJ's own (.mtl) materials
        mesh.materials.clear()
        mesh.materials.append(material)
        self._remove_unused(imported)  # else every (re)load leaves them behind
        for poly in mesh.polygons:
            poly.material_index = 0
        obj.rotation_mode = "QUATERNION"
        return obj, verts

    def _object(self, asset: ObjectAsset):
        if asset in self.objects:
            self.objects.move_to_end(asset)
            return self.objects[asset]
        while len(self.objects) >= CACHE_OBJECTS:
            _, (old, _) = self.objects.popitem(last=False)
            self._drop(old)
        entry = self.objects[asset] = self._load_object(asset)
        return entry

    def _drop(self, obj) -> None:
        bpy = self.bpy
        mesh = obj.data
        mats = list(mesh.materials)
        bpy.data.objects.remove(obj)
        bpy.data.meshes.remove(mesh)
        self._remove_unused(mats)

    def _remove_unused(self, materials) -> None:
        """Remove those of ``materials`` no longer used, and their images once unused."""
        bpy = self.bpy
        for m in {m for m in materials if m is not None}:
            if m.users:
                continue
            nodes = m.node_tree.nodes if m.node_tree else []
            images = {n.image for n in nodes if n.type == "TEX_IMAGE" and n.image}
            bpy.data.materials.remove(m)
            for im in images:
                if im.users == 0:
                    bpy.data.images.remove(im)

    # ------------------------------------------------------------------ rendering

    def _render(self, path: Path) -> None:
        self.scene.render.filepath = str(path)
        with _quiet_stdout(stderr=self.scene.render.engine != "CYCLES") as sink:
            try:
                self.bpy.ops.render.render(write_still=True)
            except RuntimeError as e:
                raise RenderError(f"Blender failed to render ({_last_line(sink) or e})") from None
        if not path.is_file():
            engine = self.scene.render.engine
            hint = "; use --engine cycles" if engine != "CYCLES" else ""
            raise RenderError(f"Blender ({engine}) rendered no image ({_last_line(sink)}){hint}")

    def _set_image_mode(self, seed: int) -> None:
        s, scene = self.settings, self.scene
        scene.render.engine = ENGINES[s.engine]
        scene.world = self.world
        self.bpy.context.view_layer.material_override = None
        cy = scene.cycles
        cy.samples, cy.use_denoising, cy.filter_width, cy.max_bounces = s.samples, s.denoise, 1.5, 12
        cy.seed = seed
        if s.engine == "eevee":
            scene.eevee.taa_render_samples = s.samples
        img = scene.render.image_settings
        img.file_format, img.color_mode, img.color_depth = "PNG", "RGB", "8"

    def _set_mask_mode(self) -> None:
        scene = self.scene
        scene.render.engine = "CYCLES"
        scene.world = None
        self.bpy.context.view_layer.material_override = self.mask_material
        cy = scene.cycles
        cy.samples, cy.use_denoising, cy.filter_width, cy.max_bounces = 1, False, 0.01, 0
        cy.seed = 0
        img = scene.render.image_settings
        img.file_format, img.color_mode, img.color_depth, img.exr_codec = "OPEN_EXR", "RGB", "32", "NONE"

    def _read_mask(self, path: Path) -> np.ndarray:
        im = self._load_image(str(path))
        try:
            w, h = im.size
            px = np.empty(w * h * 4, np.float32)
            im.pixels.foreach_get(px)
        finally:
            self.bpy.data.images.remove(im)
        ids = np.rint(px.reshape(h, w, 4)[::-1, :, 0])  # Blender's rows run bottom to top
        return np.clip(ids, 0, 255).astype(np.uint8)

    def place(self, assets: list[ObjectAsset], class_ids: list[int], hdri: HdriAsset, hdri_rotation: float,
              rotations: np.ndarray) -> list[np.ndarray]:
        """Set up a group's scene: only ``assets`` visible (pass index = class id), the HDRI rotated by
        ``hdri_rotation`` rad about Z.  Returns each object's normalised vertices (N, 3) in m."""
        wanted = [self._object(a) for a in assets]  # may evict others: load before hiding
        used = set(assets)
        for asset, (obj, _) in self.objects.items():
            obj.hide_render = asset not in used
        for (obj, _), cid, q in zip(wanted, class_ids, rotations):
            obj.pass_index = int(cid)
            obj.rotation_quaternion = [float(x) for x in q]
        previous = self.env.image
        self.env.image = self._load_image(hdri.path)
        if previous is not None and previous != self.env.image:
            self.bpy.data.images.remove(previous)  # one HDRI in memory (a 4K EXR is 128 MB as float)
        self.mapping.inputs["Rotation"].default_value = (0.0, 0.0, float(hdri_rotation))
        self._placed = [obj for obj, _ in wanted]
        return [verts for _, verts in wanted]

    def move(self, positions: np.ndarray) -> None:
        """Put the placed objects' centres at ``positions`` (k, 3) in m."""
        for obj, p in zip(self._placed, positions):
            obj.location = [float(x) for x in p]

    def render_mask(self) -> np.ndarray:
        """(size, size) uint8 class ids of the current scene (0 = background)."""
        self._set_mask_mode()
        path = self.tmp / "mask.exr"
        path.unlink(missing_ok=True)
        self._render(path)
        return self._read_mask(path)

    def render_image(self, seed: int) -> np.ndarray:
        """(size, size, 3) uint8 RGB of the current scene."""
        from PIL import Image

        self._set_image_mode(seed)
        path = self.tmp / "image.png"
        path.unlink(missing_ok=True)
        self._render(path)
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))


_RENDERER: Renderer | None = None


def renderer(settings: RenderSettings) -> Renderer:
    """This process's renderer for ``settings`` (created on first use, rebuilt if settings change)."""
    global _RENDERER
    if _RENDERER is None or _RENDERER.settings != settings:
        _RENDERER = Renderer(settings)
    return _RENDERER


def rotation_matrix(q: np.ndarray) -> np.ndarray:
    """3×3 rotation of a unit quaternion (w, x, y, z)."""
    w, x, y, z = q
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def projected_box(verts: np.ndarray, q: np.ndarray, position: np.ndarray, K: np.ndarray, size: int) -> list[int]:
    """Pixel box [x0, y0, x1, y1] (x1/y1 exclusive, clipped to the image) of an object's projected
    vertices (N, 3), rotated by quaternion ``q`` and centred at ``position`` (m)."""
    world = verts @ rotation_matrix(q).T + position
    uv = sc.project(world, K)
    x0, y0 = np.floor(uv.min(0)).astype(int)
    x1, y1 = np.ceil(uv.max(0)).astype(int)
    return [int(np.clip(x0, 0, size)), int(np.clip(y0, 0, size)), int(np.clip(x1, 0, size)), int(np.clip(y1, 0, size))]


