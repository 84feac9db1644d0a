"""GSO-LS: scene geometry (no Blender), asset discovery and one-line errors, and real Blender renders.

The render tests (``slow``) build two tiny datasets (64×64, 4 samples) once per module: one from the
embedded demo assets through two worker processes, one from a GSO-layout folder (folders and zips)
and an HDRI folder.  They check what the issue asks: non-empty masks, mask area ratio ≈ scale²,
fixed background, boxes that enclose masks, metadata that agrees with image and mask.
"""

from __future__ import annotations

import math
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from card_checks import assert_cards_load
from conftest import assert_user_error, generate_gso, read_json, shard_files

from lsbench import dataset
from lsbench.errors import ConfigError, DataError
from lsbench.generators import gso
from lsbench.generators.gso import assets, render, scene

PYBULLET = Path(assets._pybullet_data())
STUDIO = assets.bpy_studio_lights()
SIZE = 64
TINY = dict(size=SIZE, train=2, test=6, variants=2, samples=4, shard_size=3, scale_range=(0.6, 1.6))
TINY_CLI = ["--size", "64", "--train", "2", "--test", "6", "--variants", "2", "--samples", "4",
            "--shard-size", "3", "--scale-range", "0.6", "1.6"]


# --------------------------------------------------------------------------- helpers


def make_gso(folder: Path, objects: dict[str, str], *, zipped: tuple[str, ...] = (),
             licence: str | None = None) -> Path:
    """A folder in the Google Scanned Objects layout built from pybullet_data meshes: object id →
    OBJ path inside pybullet_data; ids in ``zipped`` become ``id.zip`` with a top folder, like GSO's."""
    folder.mkdir(parents=True, exist_ok=True)
    for object_id, rel in objects.items():
        obj = PYBULLET / rel
        root = folder / object_id
        (root / "meshes").mkdir(parents=True)
        (root / "materials" / "textures").mkdir(parents=True)
        shutil.copy(obj, root / "meshes" / "model.obj")
        shutil.copy(assets.mtl_texture(obj), root / "materials" / "textures" / "texture.png")
        lic = f'annotations {{\n  key: "license"\n  value: "{licence}"\n}}\n' if licence else ""
        (root / "metadata.pbtxt").write_text(f'name: "{object_id.title()}"\nversion: 1\n{lic}')
        if object_id in zipped:
            with zipfile.ZipFile(folder / f"{object_id}.zip", "w") as z:
                for p in sorted(root.rglob("*")):
                    if p.is_file():
                        z.write(p, f"{object_id}/{p.relative_to(root)}")
            shutil.rmtree(root)
    return folder


def make_hdris(folder: Path, names=("city", "forest", "studio")) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        shutil.copy(STUDIO / f"{n}.exr", folder / f"{n}.exr")
    return folder


def groups(directory: Path, split: str = "test") -> list[list[dict]]:
    out: list[list[dict]] = []
    for s in dataset.read_split(directory, split):
        if s["meta"]["variant"] == 0:
            out.append([])
        out[-1].append(s)
    return out


def dilate(mask: np.ndarray, r: int) -> np.ndarray:
    out = mask.copy()
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            out |= np.roll(np.roll(mask, dy, 0), dx, 1)
    return out


# --------------------------------------------------------------------------- scene geometry (no Blender)


def sample(seed=0, grouped=True, **kw):
    args = dict(num_objects=7, num_hdris=5, size=256, scale_range=(0.5, 2.0), variants=4, grouped=grouped) | kw
    return scene.sample_group(np.random.default_rng(seed), **args)


def test_intrinsics_and_rays_round_trip():
    K = scene.intrinsics(256)
    assert K[0, 0] == pytest.approx(50 / 36 * 256) and K[0, 2] == 128 and K[1, 2] == 128
    pixels = np.array([[0.5, 0.5], [128, 128], [200.25, 17.5], [255.5, 255.5]])
    back = scene.project(np.stack([3.0 * scene.ray(p, K) for p in pixels]), K)
    np.testing.assert_allclose(back, pixels, atol=1e-9)
    # The optical axis is world +Y, image right is +X, image down is -Z.
    np.testing.assert_allclose(scene.ray(np.array([128, 128]), K), [0, 1, 0], atol=1e-12)
    assert scene.project(np.array([[1.0, 10.0, 0.0]]), K)[0, 0] > 128
    assert scene.project(np.array([[0.0, 10.0, 1.0]]), K)[0, 1] < 128


def test_reference_and_variants():
    s = sample(3)
    assert s.scales.shape == (5, 2)
    np.testing.assert_array_equal(s.scales[0], [1.0, 1.0])
    assert ((s.scales[1:] >= 0.5) & (s.scales[1:] <= 2.0)).all()
    np.testing.assert_allclose(s.distances, s.reference_distances[None] / s.scales)
    assert len(set(s.objects)) == 2 and all(0 <= o < 7 for o in s.objects)
    np.testing.assert_allclose(np.linalg.norm(s.rotations, axis=1), 1.0)
    train = sample(3, grouped=False)
    assert train.scales.shape == (1, 2) and not np.allclose(train.scales, 1.0)


def test_variants_move_objects_along_their_rays():
    """Every variant keeps each object's image position; distance × scale is the reference distance."""
    s = sample(5)
    K = scene.intrinsics(256)
    pos = s.positions(K)
    for v in range(len(s.scales)):
        np.testing.assert_allclose(scene.project(pos[v], K), s.pixels, atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(pos[v], axis=1) * s.scales[v], s.reference_distances)


def test_every_variant_is_a_valid_placement():
    K = scene.intrinsics(128)
    for seed in range(40):
        s = sample(seed, size=128)
        for v, pos in enumerate(s.positions(K)):
            assert np.linalg.norm(pos[0] - pos[1]) >= 2 * scene.OBJECT_RADIUS  # spheres never intersect
            assert scene.placement_ok(s.pixels, s.distances[v], K, 128)
            for p, d in zip(s.pixels, s.distances[v]):
                r = scene.disc_radius_px(float(d), K)
                assert r <= p[0] <= 128 - r and r <= p[1] <= 128 - r


def test_disc_radius_holds_the_projected_sphere():
    """Off the optical axis a sphere's image stretches outwards by more than 1/cos² of its on-axis size:
    the disc used for placement must still hold every projected point of the sphere."""
    K = scene.intrinsics(256)
    u = np.random.default_rng(0).normal(size=(20000, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    for pixel in ([128.0, 128.0], [20.0, 20.0], [230.0, 40.0], [5.0, 128.0]):
        direction = scene.ray(np.array(pixel), K)
        off_axis = math.acos(min(1.0, direction[1]))
        for d in (0.35, 0.6, 1.0, 2.0):
            uv = scene.project(d * direction + scene.OBJECT_RADIUS * u, K)
            reach = np.linalg.norm(uv - pixel, axis=1).max()
            r = scene.disc_radius_px(d, K, off_axis)
            assert reach <= r * (1 + 1e-9) and reach >= 0.99 * r, (pixel, d, reach, r)


def test_placement_rejects_intersection_occlusion_and_leaving_the_image():
    K = scene.intrinsics(256)
    d = scene.distance_for_radius(20, K)
    assert scene.placement_ok(np.array([[60.0, 128], [190, 128]]), np.array([d, d]), K, 256)
    assert not scene.placement_ok(np.array([[128.0, 128], [130, 128]]), np.array([d, d * 1.5]), K, 256)  # occluded
    assert not scene.placement_ok(np.array([[128.0, 128], [129, 128]]), np.array([d, d + 0.01]), K, 256)  # touch
    assert not scene.placement_ok(np.array([[5.0, 128], [190, 128]]), np.array([d, d]), K, 256)  # outside


def test_sampling_is_deterministic_and_varies_with_the_seed():
    a, b, c = sample(11), sample(11), sample(12)
    np.testing.assert_array_equal(a.pixels, b.pixels)
    np.testing.assert_array_equal(a.scales, b.scales)
    assert a.render_seed == b.render_seed and not np.array_equal(a.pixels, c.pixels)


def test_impossible_scale_range_is_refused():
    with pytest.raises(scene.SceneError, match="lower the top of --scale-range"):
        sample(0, size=256, scale_range=(2.9, 3.0))


def test_circle_overlap():
    assert scene.circle_overlap(np.array([0, 0]), 1, np.array([3, 0]), 1) == 0
    assert scene.circle_overlap(np.array([0, 0]), 1, np.array([0, 0]), 2) == pytest.approx(math.pi)
    # Two unit discs one radius apart: 2π/3 − √3/2.
    assert scene.circle_overlap(np.array([0, 0]), 1, np.array([1, 0]), 1) == pytest.approx(
        2 * math.pi / 3 - math.sqrt(3) / 2)


def test_projected_box_of_a_rotated_cube():
    K = scene.intrinsics(100)
    cube = np.array([[x, y, z] for x in (-0.1, 0.1) for y in (-0.1, 0.1) for z in (-0.1, 0.1)])
    q = np.array([math.cos(math.pi / 8), 0, 0, math.sin(math.pi / 8)])  # 45° about Z
    box = render.projected_box(cube, q, np.array([0, 2.0, 0]), K, 100)
    half = K[0, 0] * 0.1 * math.sqrt(2) / 2.0  # the corners (±0.1√2, 0, ±0.1) are the widest, at depth 2
    assert box[0] == math.floor(50 - half) and box[2] == math.ceil(50 + half)


# --------------------------------------------------------------------------- assets (no Blender)


def test_demo_assets():
    objects, hdris = assets.demo_objects(), assets.demo_hdris()
    assert [o.id for o in objects] == sorted(o.id for o in objects) and len(objects) == 7
    assert all(Path(o.texture).is_file() and "zlib" in o.licence for o in objects)
    assert len(hdris) == 8 and all(h.path.endswith(".exr") and "CC0" in h.licence for h in hdris)


def test_gso_folder_and_zip_layout(tmp_path):
    folder = make_gso(tmp_path / "gso", {"duck": "duck.obj", "jenga": "jenga/jenga.obj", "ball": "soccerball.obj"},
                      zipped=("jenga",), licence="CC-BY 4.0")
    (folder / "README.txt").write_text("not an object")
    found = assets.discover_gso(folder)
    assert [o.id for o in found] == ["ball", "duck", "jenga"]
    jenga = found[2]
    assert jenga.archive.endswith("jenga.zip") and jenga.mesh == "jenga/meshes/model.obj"
    assert all(o.licence == "CC-BY 4.0" and o.source == "gso" for o in found)
    assert found[1].name == "Duck"
    h = assets.assets_digest(found, assets.discover_hdris(make_hdris(tmp_path / "hdri")))
    assert len(h) == 64


def test_objects_and_hdris_are_drawn_deterministically():
    objs = assets.demo_objects()
    a = gso.choose_objects(objs, 4, seed=1)
    assert a == gso.choose_objects(objs, 4, seed=1) and [o.id for o in a] == sorted(o.id for o in a)
    assert gso.choose_objects(objs, None, seed=1) == objs  # default 100 → all 7
    train, test = gso.split_hdris(assets.demo_hdris(), seed=0)
    assert len(test) == 2 and len(train) == 6 and not {h.id for h in train} & {h.id for h in test}
    with pytest.raises(DataError, match="lower --objects"):
        gso.choose_objects(objs, 8, seed=0)
    with pytest.raises(ConfigError):
        gso.choose_objects(objs, 1, seed=0)


def test_manifest_identity_describes_a_segmentation_task():
    objs = assets.demo_objects()[:3]
    train, test = gso.split_hdris(assets.demo_hdris(), 0)
    cfg = gso.GsoConfig(object_assets=tuple(objs), hdris_train=tuple(train), hdris_test=tuple(test), threads=2)
    ident = cfg.identity()
    assert ident["task"] == "seg" and ident["num_classes"] == 4
    assert ident["classes"] == ["background"] + [o.id for o in objs]
    assert [o["class_id"] for o in ident["objects"]] == [1, 2, 3] and all("licence" in o for o in ident["objects"])
    assert "threads" not in ident and "mesh" not in ident["objects"][0]  # paths and threads are not the dataset


# --------------------------------------------------------------------------- one-line errors (CLI, no rendering)


@pytest.mark.parametrize(
    "setup, needle",
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.mkdir(), "holds no objects"),
        (lambda p: (p / "mug" / "meshes").mkdir(parents=True), "meshes/model.obj is missing"),
        (lambda p: (make_gso(p, {"duck": "duck.obj"}), (p / "duck/materials/textures/texture.png").unlink()),
         "texture"),
        (lambda p: (make_gso(p, {"duck": "duck.obj", "ball": "soccerball.obj"}),
                    (p / "duck/meshes/model.obj").write_text("# empty\nmtllib model.mtl\n")), "not a usable OBJ"),
        (lambda p: (make_gso(p, {"duck": "duck.obj", "ball": "soccerball.obj"}),
                    (p / "duck/meshes/model.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")),
         "no texture coordinates"),
        (lambda p: (p.mkdir(), (p / "x.zip").write_bytes(b"no zip")), "not a readable zip"),
    ],
    ids=["missing", "empty", "no-mesh", "no-texture", "broken-obj", "no-uv", "bad-zip"],
)
def test_bad_gso_folder_is_one_line(cli, tmp_path, setup, needle):
    folder = tmp_path / "gso"
    setup(folder)
    result = cli("generate", "gso", "--gso", folder, "--out", tmp_path / "ds", *TINY_CLI)
    assert_user_error(result, needle)
    assert not (tmp_path / "ds").exists()


def test_bad_hdri_folder_is_one_line(cli, tmp_path):
    (tmp_path / "hdri").mkdir()
    (tmp_path / "hdri" / "notes.txt").write_text("x")
    assert_user_error(cli("generate", "gso", "--hdri", tmp_path / "hdri", "--out", tmp_path / "ds"), "no .hdr or .exr")
    (tmp_path / "hdri" / "fake.exr").write_bytes(b"not an exr")
    assert_user_error(cli("generate", "gso", "--hdri", tmp_path / "hdri", "--out", tmp_path / "ds"), "not a OpenEXR")
    one = make_hdris(tmp_path / "one", ("city",))
    assert_user_error(cli("generate", "gso", "--hdri", one, "--out", tmp_path / "ds"), "at least 2 HDRIs")


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--engine", "luxcore"], "--engine must be one of cycles, eevee"),
        (["--device", "metal"], "--device must be one of cpu, cuda, optix"),
        (["--test", "7"], "not a multiple of the group size 3"),
        (["--samples", "0"], "--samples"),
        (["--scale-range", "2", "1"], "--scale-range"),
        (["--objects", "9"], "lower --objects"),
        (["--size", "32"], "size × minimum scale"),  # would stop mid-build: objects of a few pixels
        (["--scale-range", "0.2", "1.0"], "raise --size or the --scale-range minimum"),
        (["--demo", "--hdri", "."], "--demo uses the embedded assets"),
    ],
)
def test_bad_options_are_one_line(cli, tmp_path, args, needle):
    result = cli("generate", "gso", "--out", tmp_path / "ds", *TINY_CLI, *args)
    assert_user_error(result, needle)


def test_missing_bpy_says_how_to_install(cli, tmp_path, monkeypatch):
    real = render.importlib.util.find_spec
    monkeypatch.setattr(render.importlib.util, "find_spec", lambda name, *a: None if name == "bpy" else real(name, *a))
    assert_user_error(cli("generate", "gso", "--out", tmp_path / "ds", *TINY_CLI), "pip install 'lsbench[gso]'")


# --------------------------------------------------------------------------- real renders (Blender)


@pytest.fixture(scope="module")
def demo_ds(tmp_path_factory) -> Path:
    """The tiny demo dataset rendered through two worker processes (3 shards)."""
    out = tmp_path_factory.mktemp("gso") / "demo"
    result = generate_gso(out, workers=2, **TINY)
    assert result.complete and result.shards_written == 3
    return out


@pytest.mark.slow
def test_demo_dataset_is_valid_and_a_segmentation_set(demo_ds):
    assert dataset.validate(demo_ds) == []
    manifest = read_json(demo_ds / "manifest.json")
    assert manifest["generator"] == "gso" and manifest["config"]["task"] == "seg"
    assert manifest["config"]["num_classes"] == 8 and manifest["splits"]["test"]["group_size"] == 3
    from lsbench.benchmark.data import loader
    from lsbench.dataset import open_dataset

    info = open_dataset(demo_ds)
    assert info.task == "seg" and info.num_classes == 8
    images, masks, metas = next(iter(loader(info, "test", size=32, task="seg", batch_size=3, train=False)))
    assert images.shape == (3, 3, 32, 32) and masks.shape == (3, 32, 32) and int(masks.max()) <= 7


@pytest.mark.slow
def test_demo_cards_load_masks_in_croissant_and_hugging_face(demo_ds, tmp_path):
    """A segmentation set's cards: mlcroissant and HF datasets read masks equal to lsbench's."""
    card = read_json(demo_ds / "croissant.json")
    assert {r["@id"] for r in card["recordSet"]} >= {"test_masks", "train_masks", "test_images"}
    assert "https://opensource.org/licenses/Zlib" in card["license"]  # pybullet_data's meshes
    assert "task_categories:\n  - image-segmentation" in (demo_ds / "README.md").read_text()
    assert_cards_load(demo_ds, tmp_path)


@pytest.mark.slow
def test_masks_boxes_and_metadata_agree(demo_ds):
    K = np.array(next(dataset.read_split(demo_ds, "test"))["meta"]["camera"]["K"])
    for split in ("train", "test"):
        for s in dataset.read_split(demo_ds, split):
            meta, mask, image = s["meta"], s["mask"], s["image"]
            assert image.shape == (SIZE, SIZE, 3) and mask.shape == (SIZE, SIZE) and mask.dtype == np.uint8
            assert set(np.unique(mask)) <= {0, *meta["classes"]}
            assert meta["reference"] == (split == "test" and meta["variant"] == 0)
            for obj, box, vbox in zip(meta["objects"], meta["boxes"], meta["visible_boxes"]):
                m = mask == obj["class_id"]
                assert m.sum() == obj["visible_pixels"] > 0  # each object visible
                rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
                assert vbox == [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]
                # The box from projecting the mesh with the recorded K encloses the rendered mask.
                assert box[0] <= vbox[0] and box[1] <= vbox[1] and box[2] >= vbox[2] and box[3] >= vbox[3]
                assert (box[2] - box[0]) <= (vbox[2] - vbox[0]) + 3 and (box[3] - box[1]) <= (vbox[3] - vbox[1]) + 3
                np.testing.assert_allclose(scene.project(np.array([obj["position"]]), K)[0], obj["pixel"], atol=1e-2)
                assert obj["distance"] * obj["scale"] == pytest.approx(obj["reference_distance"], rel=1e-5)
            assert meta["scales"] == [o["scale"] for o in meta["objects"]]
            assert meta["label"] == "+".join(o["id"] for o in meta["objects"])
            assert meta["classes"] == [o["class_id"] for o in meta["objects"]]
            # The object is textured: its pixels are not one flat colour.
            assert image[mask > 0].std() > 3


@pytest.mark.slow
def test_mask_area_follows_scale_squared(demo_ds):
    checked = 0
    for grp in groups(demo_ds):
        ref = grp[0]
        assert ref["meta"]["reference"] and ref["meta"]["scales"] == [1.0, 1.0]
        for var in grp[1:]:
            assert var["meta"]["hdri"] == ref["meta"]["hdri"] and var["meta"]["camera"] == ref["meta"]["camera"]
            for k, obj in enumerate(var["meta"]["objects"]):
                other = [b for j, b in enumerate(var["meta"]["boxes"]) if j != k]
                other_ref = [b for j, b in enumerate(ref["meta"]["boxes"]) if j != k]
                if any(_overlap(var["meta"]["boxes"][k], b) for b in other) or any(
                        _overlap(ref["meta"]["boxes"][k], b) for b in other_ref):
                    continue  # possibly occluded: the visible area is not the object's area
                ratio = obj["visible_pixels"] / ref["meta"]["objects"][k]["visible_pixels"]
                assert ratio == pytest.approx(obj["scale"] ** 2, rel=0.2), (obj, ratio)
                checked += 1
    assert checked >= 4


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


@pytest.mark.slow
def test_background_is_fixed_within_a_group(demo_ds):
    for grp in groups(demo_ds):
        ref = grp[0]
        for var in grp[1:]:
            objects = dilate((ref["mask"] > 0) | (var["mask"] > 0), 3)
            far = ~objects
            assert far.sum() > 0.3 * SIZE * SIZE
            diff = np.abs(ref["image"].astype(int) - var["image"].astype(int))[far]
            # Exact without denoising (see the GSO-layout test); OIDN's wide receptive field moves some
            # pixels slightly (measured at 4 spp: mean 0.2–0.4, 99th percentile 2–3 of 255).
            assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 6, (diff.mean(), diff.max())
            # ... while the objects' pixels do change.
            near = (ref["mask"] > 0) ^ (var["mask"] > 0)
            assert np.abs(ref["image"].astype(int) - var["image"].astype(int))[near].mean() > 5


@pytest.mark.slow
def test_same_images_with_one_worker_and_resume(demo_ds, tmp_path):
    out = tmp_path / "one"
    generate_gso(out, workers=1, **TINY)
    assert shard_files(out) == shard_files(demo_ds)  # byte-identical whatever the worker count
    (out / "test-000001.tar").unlink()
    (out / "train-000000.tar").unlink()
    # Worker processes spawned by a process that has imported bpy (it rendered above) must work too.
    again = generate_gso(out, workers=2, **TINY)
    assert again.shards_written == 2 and again.shards_reused == 1 and shard_files(out) == shard_files(demo_ds)


@pytest.mark.slow
def test_gso_layout_and_hdri_folder_end_to_end(cli, tmp_path):
    folder = make_gso(tmp_path / "gso", {"duck": "duck.obj", "ball": "soccerball.obj", "jenga": "jenga/jenga.obj"},
                      zipped=("ball",))
    hdri = make_hdris(tmp_path / "hdri")
    out = tmp_path / "ds"
    result = cli("generate", "gso", "--gso", folder, "--hdri", hdri, "--out", out, "--objects", "2", "--size", "48",
                 "--train", "1", "--test", "2", "--variants", "1", "--samples", "2", "--no-denoise", "--seed", "4")
    assert result.exit_code == 0, result.output
    assert "demo" not in result.stderr and "2 shards written" in result.stdout
    assert dataset.validate(out) == []
    config = read_json(out / "manifest.json")["config"]
    assert config["source"] == "gso+hdri" and len(config["objects"]) == 2 and not config["denoise"]
    assert {h["id"] for h in config["hdris"]["test"]}.isdisjoint({h["id"] for h in config["hdris"]["train"]})
    ref, var = groups(out)[0]
    for s in (ref, var):
        assert s["meta"]["hdri"]["id"] in {h["id"] for h in config["hdris"]["test"]}
        assert all((s["mask"] == c).any() for c in s["meta"]["classes"])
    # Without the denoiser, background pixels 3 px away from the objects are bit-identical across variants.
    far = ~dilate((ref["mask"] > 0) | (var["mask"] > 0), 3)
    assert far.sum() > 0.3 * 48 * 48
    np.testing.assert_array_equal(ref["image"][far], var["image"][far])


@pytest.mark.slow
def test_demo_notice_and_broken_mesh_from_blender(cli, tmp_path):
    """An OBJ that passes the text check but gives Blender no faces fails the render in one line."""
    folder = make_gso(tmp_path / "gso", {"duck": "duck.obj", "ball": "soccerball.obj"})
    (folder / "duck" / "meshes" / "model.obj").write_text("v 0 0 0\nv 1 0 0\nvt 0 0\nf 1 2 7\n")
    result = cli("generate", "gso", "--gso", folder, "--out", tmp_path / "ds", *TINY_CLI, "--seed", "1")
    assert_user_error(result, "object duck", "yields no mesh")
    assert "pybullet" not in result.stderr and "studio-light" in result.stderr  # HDRIs still the demo's


@pytest.mark.slow
def test_renderer_cache_tells_apart_objects_with_the_same_id(tmp_path):
    """One process may render several datasets whose objects share an id (a GSO "duck" that is not the
    demo's duck, a re-extracted zip): the loaded mesh must be the asset's own, not a cached namesake."""
    first = make_gso(tmp_path / "a", {"duck": "duck.obj", "ball": "soccerball.obj"}, zipped=("ball",))
    second = make_gso(tmp_path / "b", {"duck": "jenga/jenga.obj", "ball": "domino/domino.obj"}, zipped=("ball",))
    r = render.renderer(render.RenderSettings(32, samples=1))
    hdri = assets.demo_hdris()[0]
    rot = np.array([[1.0, 0, 0, 0]] * 2)
    verts = {}
    for folder in (first, second):
        objs = assets.discover_gso(folder)
        verts[folder] = r.place(objs, [1, 2], hdri, 0.0, rot)
    for a, b in zip(verts[first], verts[second]):
        assert a.shape != b.shape  # duck ≠ jenga, soccer ball ≠ domino


@pytest.mark.slow
def test_renderer_cache_does_not_leak_materials(monkeypatch):
    """Loading an object through the OBJ importer also creates its .mtl materials: evicting and reloading
    objects (100 GSO objects through a 16-object cache) must not pile them up in Blender."""
    monkeypatch.setattr(render, "CACHE_OBJECTS", 2)
    r = render.renderer(render.RenderSettings(32, samples=1))
    objs, hdri = assets.demo_objects(), assets.demo_hdris()[0]
    rot = np.array([[1.0, 0, 0, 0]] * 2)
    counts = []
    for _ in range(3):
        for a, b in ((0, 1), (2, 3), (4, 5)):
            r.place([objs[a], objs[b]], [1, 2], hdri, 0.0, rot)
        counts.append((len(r.bpy.data.materials), len(r.bpy.data.images)))
    assert counts[0] == counts[-1], counts


@pytest.mark.slow
def test_mask_resolves_occlusion_exactly():
    """Where two objects overlap in the image the mask holds the nearer one; elsewhere each object's
    pixels are exactly those it covers when rendered alone (pixel-centre rays, no anti-aliasing)."""
    size = 64
    K = scene.intrinsics(size)
    r = render.renderer(render.RenderSettings(size, samples=1))
    objs = assets.demo_objects()
    r.place([objs[1], objs[3]], [3, 9], assets.demo_hdris()[0], 0.0, np.array([[1.0, 0, 0, 0]] * 2))
    near = 0.8 * scene.ray(np.array([29.0, 32.0]), K)  # duck in front of the soccer ball
    far = 1.2 * scene.ray(np.array([35.0, 32.0]), K)
    away = np.array([0.0, -5.0, 0.0])  # behind the camera
    r.move(np.stack([near, far]))
    both = r.render_mask()
    r.move(np.stack([near, away]))
    alone_near = r.render_mask()
    r.move(np.stack([away, far]))
    alone_far = r.render_mask()
    assert set(np.unique(alone_near)) == {0, 3} and set(np.unique(alone_far)) == {0, 9}
    overlap = (alone_near == 3) & (alone_far == 9)
    assert overlap.sum() > 20  # the test means something
    expected = np.where(alone_near == 3, 3, np.where(alone_far == 9, 9, 0))
    np.testing.assert_array_equal(both, expected)


@pytest.mark.slow
def test_eevee_renders_headless(tmp_path):
    out = tmp_path / "eevee"
    generate_gso(out, engine="eevee", size=32, train=1, test=2, variants=1, samples=2, scale_range=(0.8, 1.2))
    assert dataset.validate(out) == []
    for s in dataset.read_split(out, "test"):
        assert s["meta"]["render"]["engine"] == "eevee" and s["image"].std() > 3
        assert all((s["mask"] == c).any() for c in s["meta"]["classes"])


@pytest.mark.slow
def test_gpu_device_without_gpu_is_one_line(cli, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible: --device cuda renders here")
    for device in ("cuda", "optix"):
        result = cli("generate", "gso", "--out", tmp_path / "ds", *TINY_CLI, "--device", device)
        assert_user_error(result, device.upper(), "--device cpu")
        assert not (tmp_path / "ds").exists()  # refused before anything is written
