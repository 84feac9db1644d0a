"""Assets for ``lsbench generate gso``: Google Scanned Objects, HDRIs, and the embedded demo set.

Nothing here imports ``bpy``: discovery and validation run in the parent process, before any
worker starts, so a wrong folder ends in one clear line instead of a failed render.

**Objects.**  The Google Scanned Objects (GSO) layout: one folder *or* one ``.zip`` per object,
each holding ``meshes/model.obj``, ``materials/textures/texture.png`` and ``metadata.pbtxt``
(a zip may put all three under one top folder, as the GSO downloads do).  The object id is the
folder / zip name.  The texture is applied through the mesh's UVs by the renderer itself (GSO's
``model.mtl`` points at a ``texture.png`` beside the mesh, where it is not).

**HDRIs.**  A folder of ``.hdr`` / ``.exr`` files (e.g. Poly Haven's, CC0); the id is the file stem.

**Demo.**  Without ``--gso`` / ``--hdri``: the textured meshes that ship with ``pybullet_data``
(zlib licence) and the eight CC0 studio-light EXRs that ship with ``bpy``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import re
import warnings
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ...errors import DataError

GSO_MESH = "meshes/model.obj"
GSO_TEXTURE = "materials/textures/texture.png"
GSO_METADATA = "metadata.pbtxt"
GSO_LICENCE = "CC-BY-4.0"  # the licence Google released the Scanned Objects under
HDRI_SUFFIXES = (".hdr", ".exr")

# (id, OBJ path inside pybullet_data): the textured meshes of pybullet_data whose texture Blender reads.
DEMO_OBJECTS = (
    ("duck", "duck.obj"),
    ("soccerball", "soccerball.obj"),
    ("domino", "domino/domino.obj"),
    ("jenga", "jenga/jenga.obj"),
    ("tray", "tray/tray_textured.obj"),
    ("torus", "torus/torus_textured.obj"),
    ("table", "table/table.obj"),
)
DEMO_OBJECT_LICENCE = "zlib (pybullet_data, Erwin Coumans; cite PyBullet)"
DEMO_HDRI_LICENCE = "CC0 (Blender studio lights from Poly Haven, Greg Zaal)"


@dataclass(frozen=True)
class ObjectAsset:
    """One renderable object.  ``archive`` is the zip holding ``mesh``/``texture`` (members), if any."""

    id: str
    mesh: str  # path of the OBJ file (or member name inside ``archive``)
    texture: str  # path of the colour texture (or member name inside ``archive``)
    licence: str
    source: str  # "gso" or "pybullet_data"
    archive: str | None = None
    name: str | None = None  # human-readable name from metadata.pbtxt, if any

    def record(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class HdriAsset:
    """One environment map (equirectangular ``.hdr`` / ``.exr``)."""

    id: str
    path: str
    licence: str


# --------------------------------------------------------------------------- GSO


def _metadata_fields(text: str) -> tuple[str | None, str | None]:
    """(name, licence) from a ``metadata.pbtxt`` (text protobuf); ``None`` where absent."""
    name = re.search(r'^\s*name\s*:\s*"([^"]*)"', text, re.M)
    licence = re.search(r'licen[cs]e"?\s*[:{]?\s*(?:value\s*:\s*)?"([^"]+)"', text, re.I)
    if licence is None:  # e.g. annotations { key: "license" value: "CC-BY 4.0" }
        licence = re.search(r'key\s*:\s*"licen[cs]e"\s*value\s*:\s*"([^"]+)"', text, re.I)
    return (name.group(1) if name else None), (licence.group(1) if licence else None)


def _gso_folder(path: Path) -> ObjectAsset:
    mesh, texture = path / GSO_MESH, path / GSO_TEXTURE
    if not mesh.is_file():
        raise DataError(f"GSO object {path.name}: {mesh} is missing (each object folder needs {GSO_MESH})")
    if not texture.is_file():
        raise DataError(f"GSO object {path.name}: texture {texture} is missing (needs {GSO_TEXTURE})")
    meta = path / GSO_METADATA
    name, licence = _metadata_fields(meta.read_text(errors="replace")) if meta.is_file() else (None, None)
    return ObjectAsset(path.name, str(mesh), str(texture), licence or GSO_LICENCE, "gso", name=name)


def _gso_zip(path: Path) -> ObjectAsset:
    object_id = path.stem
    try:
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if not n.endswith("/")]
            meshes = [n for n in names if n == GSO_MESH or n.endswith("/" + GSO_MESH)]
            if not meshes:
                raise DataError(f"GSO object {object_id}: {path} holds no {GSO_MESH}")
            root = meshes[0][: -len(GSO_MESH)]
            if root + GSO_TEXTURE not in names:
                raise DataError(f"GSO object {object_id}: texture {root + GSO_TEXTURE} is missing in {path}")
            name = licence = None
            if root + GSO_METADATA in names:
                name, licence = _metadata_fields(z.read(root + GSO_METADATA).decode("utf-8", "replace"))
    except zipfile.BadZipFile:
        raise DataError(f"GSO object {object_id}: {path} is not a readable zip file") from None
    return ObjectAsset(
        object_id, root + GSO_MESH, root + GSO_TEXTURE, licence or GSO_LICENCE, "gso", archive=str(path), name=name
    )


def discover_gso(folder: Path) -> list[ObjectAsset]:
    """Every object in a GSO folder (sub-folders and ``.zip`` files), sorted by id, validated.

    Raises :class:`DataError` for a missing or empty folder and for an object without its mesh or
    texture.  Entries that are neither folders nor zips (READMEs, licences) are ignored.
    """
    folder = Path(folder)
    if not folder.exists():
        raise DataError(f"--gso folder {folder} does not exist")
    if not folder.is_dir():
        raise DataError(f"--gso {folder} is not a folder (give the folder holding one folder or zip per object)")
    if (folder / GSO_MESH).is_file():
        raise DataError(f"--gso {folder} is a single object; give the folder that holds the object folders")
    entries = sorted(p for p in folder.iterdir() if p.is_dir() or p.suffix.lower() == ".zip")
    if not entries:
        raise DataError(
            f"--gso folder {folder} holds no objects (expected one folder or .zip per object with {GSO_MESH})"
        )
    objects = [(_gso_zip if p.is_file() else _gso_folder)(p) for p in entries]
    seen: set[str] = set()
    for o in objects:
        if o.id in seen:
            raise DataError(f"--gso folder {folder}: object {o.id} is there twice (as a folder and as a zip)")
        seen.add(o.id)
    return objects


# --------------------------------------------------------------------------- demo objects


def _pybullet_data() -> Path:
    spec = importlib.util.find_spec("pybullet_data")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the demo meshes come from pybullet_data: pip install 'lsbench[gso]' (or pass --gso DIR)")
    return Path(list(spec.submodule_search_locations)[0])


def mtl_texture(obj: Path) -> Path:
    """The diffuse texture (``map_Kd``) of an OBJ's first material file; raises :class:`DataError`."""
    text = obj.read_text(errors="replace")
    lib = re.search(r"^\s*mtllib\s+(.+?)\s*$", text, re.M)
    if lib is None:
        raise DataError(f"{obj} names no material library (mtllib), so it has no texture")
    mtl = obj.parent / lib.group(1)
    if not mtl.is_file():
        raise DataError(f"material file {mtl} of {obj} is missing")
    kd = re.search(r"^\s*map_Kd\s+(?:-\S+\s+\S+\s+)*(.+?)\s*$", mtl.read_text(errors="replace"), re.M)
    if kd is None:
        raise DataError(f"{mtl} has no diffuse texture (map_Kd)")
    texture = mtl.parent / kd.group(1)
    if not texture.is_file():
        raise DataError(f"texture {texture} of {obj} is missing")
    return texture


def demo_objects() -> list[ObjectAsset]:
    """The embedded demo objects (textured meshes of ``pybullet_data``), sorted by id."""
    root = _pybullet_data()
    out = []
    for object_id, rel in DEMO_OBJECTS:
        mesh = root / rel
        if not mesh.is_file():
            raise DataError(f"demo mesh {mesh} is missing; reinstall pybullet (pip install 'lsbench[gso]')")
        out.append(ObjectAsset(object_id, str(mesh), str(mtl_texture(mesh)), DEMO_OBJECT_LICENCE, "pybullet_data"))
    return sorted(out, key=lambda o: o.id)


# --------------------------------------------------------------------------- HDRIs


def discover_hdris(folder: Path, licence: str = "see the HDRI source (Poly Haven's are CC0)") -> list[HdriAsset]:
    """Every ``.hdr`` / ``.exr`` file directly in ``folder``, sorted by id; raises :class:`DataError`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"--hdri folder {folder} does not exist or is not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in HDRI_SUFFIXES)
    if not files:
        raise DataError(f"--hdri folder {folder} holds no .hdr or .exr files")
    ids = [p.stem for p in files]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise DataError(f"--hdri folder {folder}: {dup[0]} is there twice (as .hdr and .exr); keep one")
    for p in files:
        with open(p, "rb") as f:
            head = f.read(10)
        ok = head.startswith(b"\x76\x2f\x31\x01") if p.suffix.lower() == ".exr" else head.startswith(b"#?")
        if not ok:
            kind = "OpenEXR" if p.suffix.lower() == ".exr" else "Radiance HDR"
            raise DataError(f"HDRI {p} is not a {kind} file")
    return [HdriAsset(p.stem, str(p), licence) for p in files]


def bpy_studio_lights() -> Path:
    """Blender's studio-light world folder, located without importing ``bpy`` (equals
    ``bpy.utils.system_resource('DATAFILES', path='studiolights/world')``)."""
    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("rendering GSO scenes needs Blender as a Python module: pip install 'lsbench[gso]'")
    root = Path(list(spec.submodule_search_locations)[0])
    found = sorted(root.glob("*/datafiles/studiolights/world"))
    if not found:
        raise DataError(f"bpy in {root} ships no studio-light HDRIs; reinstall it (pip install 'lsbench[gso]')")
    return found[-1]


def demo_hdris() -> list[HdriAsset]:
    """Blender's eight CC0 studio-light EXRs."""
    return discover_hdris(bpy_studio_lights(), DEMO_HDRI_LICENCE)


# --------------------------------------------------------------------------- validation and identity


def _open_member(asset: ObjectAsset, member: str):
    if asset.archive is None:
        return open(member, "rb")
    return zipfile.ZipFile(asset.archive).open(member)


def check_and_hash_object(asset: ObjectAsset, h: Any) -> None:
    """Feed the object's mesh and texture bytes into ``h`` (a hashlib object) while checking that the
    OBJ has vertices, texture coordinates and faces and the texture is a PNG/JPEG; raises :class:`DataError`."""
    where = f"{asset.archive}:{asset.mesh}" if asset.archive else asset.mesh
    has_v = has_vt = has_f = False
    tail = b"\n"
    with _open_member(asset, asset.mesh) as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            text = tail + chunk
            has_v = has_v or b"\nv " in text
            has_vt = has_vt or b"\nvt " in text
            has_f = has_f or b"\nf " in text
            tail = chunk[-3:]  # a marker split between chunks is still found
    if not (has_v and has_f):
        raise DataError(f"GSO object {asset.id}: {where} is not a usable OBJ mesh (no vertices or no faces)")
    if not has_vt:
        raise DataError(f"GSO object {asset.id}: {where} has no texture coordinates (vt lines) to map its texture")
    texture = io.BytesIO()
    with _open_member(asset, asset.texture) as f:
        head = f.read(8)
        h.update(head)
        texture.write(head)
        while chunk := f.read(1 << 20):
            h.update(chunk)
            texture.write(chunk)
    if not (head.startswith(b"\x89PNG") or head.startswith(b"\xff\xd8")):
        raise DataError(f"GSO object {asset.id}: texture {asset.texture} is not a PNG or JPEG image")
    problem = _texture_problem(texture)
    if problem:
        raise DataError(f"GSO object {asset.id}: texture {asset.texture} {problem}; re-download the object")


def _texture_problem(data: io.BytesIO) -> str | None:
    """Why a PNG/JPEG texture cannot be decoded (None: it can), cheaply: the header within PIL's pixel
    limit, then a PNG's chunk checksums (no inflating) or a JPEG decoded at 1/8 scale — Blender would
    otherwise load a garbage body as no texture, and the object would render untextured."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(data) as im:
                w, h = im.size
                if im.format == "PNG":
                    im.verify()
                else:
                    im.draft("RGB", (max(1, w // 8), max(1, h // 8)))
                    im.load()
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        return f"is too large to decode safely (over {Image.MAX_IMAGE_PIXELS:,} px)"
    except Exception as e:  # noqa: BLE001 - PIL raises many types for corrupt files
        detail = (str(e).splitlines() or ["corrupt"])[0]
        return f"cannot be decoded ({type(e).__name__}: {detail})"
    return None


def assets_digest(objects: list[ObjectAsset], hdris: list[HdriAsset]) -> str:
    """sha256 over every chosen object's mesh and texture and every HDRI, in order (checks them too)."""
    h = hashlib.sha256()
    for o in objects:
        h.update(o.id.encode() + b"\0")
        check_and_hash_object(o, h)
    for e in hdris:
        h.update(e.id.encode() + b"\0")
        with open(e.path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()
