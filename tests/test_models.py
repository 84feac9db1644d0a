"""The model registry: all 36 ``{arch}_{method}`` models build, run and train; pretrained weights;
checkpoints; ``lsbench models``.

CPU only, ``size="micro"`` backbones at 28–64 px and batch 2.  Torch runs single-threaded here: on a
shared 2-core machine, two intra-op threads next to another busy process are many times slower.
"""

from __future__ import annotations

import math
import re
import socket
import time

import pytest
import torch
from conftest import assert_user_error

from lsbench.dec_models import archs, checkpoint, methods, registry
from lsbench.dec_models.latent import adapted_layers
from lsbench.errors import ConfigError

ALL_NAMES = registry.list_models()


def img_size(name: str, task: str = "cls") -> int:
    """Small input sizes: 32 px (cls) / 64 px (seg); DINOv2 (patch 14) 28 / 56 px."""
    if name.startswith("dinov2"):
        return 28 if task == "cls" else 56
    return 32 if task == "cls" else 64


def micro(name: str, num_classes: int = 3, task: str = "cls", **options) -> registry.LSModel:
    options.setdefault("img_size", img_size(name, task))
    return registry.create_model(name, num_classes, task=task, size="micro", **options)


def unused_ok(param_name: str, task: str) -> bool:
    """Parameters that legitimately get no gradient.

    Segmentation reads intermediate block outputs, so the backbone's final norm (applied only to the
    classifier's input) is unused, and the coarsest DPT fusion block has no coarser input, so its
    ``skip`` unit never runs (as in the original DPT).  Classification uses everything.
    """
    if task != "seg":
        return False
    return bool(re.fullmatch(r"backbone\.(norm|fc_norm)\.(weight|bias)|seg_head\.fusion\.3\.skip\..*", param_name))


# --------------------------------------------------------------------------- names and options


def test_model_names_are_36_unique_arch_method_pairs():
    names = registry.list_models()
    assert len(names) == 36
    assert len(set(names)) == 36
    assert {registry.parse_name(n) for n in names} == {(a, m) for a in registry.ARCHS for m in registry.METHODS}
    assert "swin_dec" in names and "vit_base" in names and "dinov2_augl" in names


@pytest.mark.parametrize("bad", ["", "resnet", "resnet_", "_dec", "resnet-dec", "vgg_dec", "resnet_foo",
                                 "Resnet_dec", "resnet_dec_x", "swin dec"])
def test_parse_name_rejects_bad_names(bad):
    with pytest.raises(ConfigError, match="unknown model"):
        registry.parse_name(bad)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"name": "resnet_foo"}, "unknown model"),
        ({"task": "det"}, "task must be one of"),
        ({"size": "huge"}, "size must be one of"),
        ({"num_classes": 0}, "num_classes must be at least 1"),
        ({"num_classes": -3}, "num_classes must be at least 1"),
        ({"colour": "red"}, "unknown model options: colour"),
        ({"dec_max_iters": 5}, "unknown model options: dec_max_iters"),
    ],
)
def test_create_model_rejects_bad_arguments(kwargs, needle):
    args = {"name": "resnet_base", "num_classes": 3, "task": "cls", "size": "micro", **kwargs}
    with pytest.raises(ConfigError, match=re.escape(needle)):
        registry.create_model(args.pop("name"), args.pop("num_classes"), **args)


# --------------------------------------------------------------------------- the registry


def test_list_functions_return_the_registry_content():
    assert registry.ARCHS == tuple(archs.list_archs()) == ("resnet", "vit", "deit", "swin", "beit", "dinov2")
    assert registry.METHODS == tuple(methods.list_methods()) == ("base", "aug", "canon", "invl", "augl", "dec")
    assert registry.list_models() == [f"{a}_{m}" for a in registry.ARCHS for m in registry.METHODS]
    assert registry.list_families() == ["timm"]
    assert archs.get_arch("resnet").sizes["micro"][0] == "resnet10t"
    assert archs.get_arch("resnet").any_input_size and not archs.get_arch("vit").any_input_size


def test_a_registered_method_is_found_by_name():
    dec, canon, aug = (methods.get_method(n) for n in ("dec", "canon", "aug"))
    assert dec.name == "dec" and dec.canonicalizer is methods.dec_canonicalizer and dec.loss is methods.plain_loss
    assert canon.defaults == {"canon_candidates": 64, "canon_width": 16, "canon_resolution": 8}
    assert aug.canonicalizer is None and aug.loss is methods.aug_loss
    for name in ("base", "aug", "invl", "augl"):
        assert methods.get_method(name).canonicalizer is None
    with pytest.raises(ConfigError, match="unknown method 'foo'"):
        methods.get_method("foo")


def test_a_models_config_takes_its_methods_defaults():
    for name in registry.METHODS:
        cfg = micro(f"resnet_{name}").config
        for key, value in methods.get_method(name).defaults.items():
            assert getattr(cfg, key) == value, (name, key)
    assert micro("resnet_aug", aug_strength=0.5).config.aug_strength == 0.5


def test_a_new_method_registered_by_name_builds_and_trains(monkeypatch):
    """Adding a method is one registration: names, building and the training loss follow."""
    monkeypatch.setitem(methods._METHODS, "toy", methods.Method("toy", methods.plain_loss, defaults={"grid": 2}))
    assert "resnet_toy" in registry.list_models()
    model = micro("resnet_toy")
    assert model.config.method == "toy" and model.config.grid == 2
    loss, logs = methods.get_method("toy").loss(model, torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))
    assert loss.ndim == 0 and set(logs) == {"task_loss"}


@pytest.mark.parametrize("call", [registry.parse_name, lambda n: registry.create_model(n, 3, size="micro")])
def test_unknown_name_gives_the_close_match_hint_once(call):
    with pytest.raises(ConfigError) as info:
        call("resnet_decc")
    message = str(info.value)
    assert "did you mean resnet_dec" in message and message.count("did you mean") == 1
    assert "\n" not in message and "timm:NAME" in message
    with pytest.raises(ConfigError) as info:
        call("timm:resnet10tt")
    assert "did you mean timm:resnet10t" in str(info.value) and str(info.value).count("did you mean") == 1


def test_timm_family_resolves_and_builds(tmp_path):
    import timm

    assert registry.parse_name("timm:resnet10t") == ("timm", "resnet10t")
    torch.manual_seed(0)
    path = tmp_path / "r10t.pth"
    state = timm.create_model("resnet10t", num_classes=4).state_dict()
    torch.save(state, path)
    model = registry.create_model("timm:resnet10t", 4, pretrained=path, img_size=32)
    assert model.config == {"name": "timm:resnet10t", "timm_name": "resnet10t", "num_classes": 4, "img_size": 32,
                            "pretrained_tag": None, "weights": str(path)}  # a tag only for published weights
    assert all(torch.equal(model.net.state_dict()[k], v) for k, v in state.items())
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4) and model.solver_stats() == {}
    own_size = timm.create_model("resnet10t").pretrained_cfg["input_size"][-1]  # 176 px
    assert registry.create_model("timm:resnet10t", 4).config["img_size"] == own_size
    with pytest.raises(ConfigError, match=r"does not fit timm:resnet10t with 5 classes"):
        registry.create_model("timm:resnet10t", 5, pretrained=path)
    with pytest.raises(ConfigError, match="plain timm models are classifiers"):
        registry.create_model("timm:resnet10t", 4, task="seg")
    with pytest.raises(ConfigError, match="timm:resnet10t takes no grid"):
        registry.create_model("timm:resnet10t", 4, grid=4)


# --------------------------------------------------------------------------- every model builds and trains


@pytest.mark.parametrize("task", ["cls", "seg"])
@pytest.mark.parametrize("name", ALL_NAMES)
def test_every_model_builds_runs_and_backpropagates(name, task):
    torch.manual_seed(0)
    k = 3
    # Few Canon candidates keep the test fast; the search itself is the same.
    model = micro(name, k, task, canon_candidates=8)
    s = img_size(name, task)
    assert model.config.name == name and model.config.task == task and model.config.size == "micro"
    model.train()
    x = torch.randn(2, 3, s, s)
    out = model(x)
    assert out.shape == ((2, k) if task == "cls" else (2, k, s, s))
    assert torch.isfinite(out).all()
    if registry.parse_name(name)[1] in ("canon", "dec"):
        assert len(adapted_layers(model.backbone)) == len(model.config.layers) > 0
    else:
        assert not adapted_layers(model.backbone)
    # Classification/segmentation loss, so every parameter on the path to the logits is used.
    y = torch.randint(0, k, (2,) if task == "cls" else (2, s, s))
    torch.nn.functional.cross_entropy(out, y).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None and not unused_ok(n, task)]
    assert not missing, f"{name}/{task}: {len(missing)} parameters get no gradient, e.g. {missing[:6]}"
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients in {bad[:6]}"
    # Something actually learns: the gradient is not zero everywhere.
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("name", ["resnet_base", "resnet_dec"])
def test_resnet_segmentation_builds_at_small_input_size(name):
    """A 32-px ResNet segmentation model (layer4 map 1×1) builds: building must not run the backbone
    in training mode on a batch of one (BatchNorm refuses a single value per channel)."""
    model = micro(name, 3, "seg", img_size=32)
    model.train()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3, 32, 32)


def test_dec_model_records_solver_stats():
    model = micro("vit_dec", 4)
    model(torch.randn(2, 3, 32, 32))
    stats = model.solver_stats()
    assert set(stats) == {"deq_iterations", "deq_residual"}
    assert all(math.isfinite(v) for v in stats.values())
    assert micro("vit_base", 4).solver_stats() == {}


# --------------------------------------------------------------------------- pretrained weights


def _save_state(state: dict, path):
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)


def _unwrapped_state(model: registry.LSModel) -> dict[str, torch.Tensor]:
    """The backbone state dict with CanonicalizedLayer wrappers removed from the keys (plain timm names)."""
    out = {}
    for key, value in model.backbone.state_dict().items():
        if ".canonicalizer." in key:
            continue
        for path in model.config.layers or []:
            key = key.replace(f"{path}.layer.", f"{path}.", 1) if key.startswith(f"{path}.layer.") else key
        out[key] = value
    return out


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
@pytest.mark.parametrize(
    ("name", "task"),
    [("resnet_base", "cls"), ("vit_base", "cls"), ("resnet_dec", "cls"), ("vit_base", "seg"), ("resnet_base", "seg")],
)
def test_pretrained_file_loads_into_backbone(tmp_path, name, task, fmt):
    arch = registry.parse_name(name)[0]
    torch.manual_seed(1)
    donor = micro(f"{arch}_base", 7, "cls", img_size=img_size(name, task))  # same timm architecture, 7 classes
    saved = {k: v.clone() for k, v in donor.backbone.state_dict().items()}
    path = tmp_path / f"backbone.{fmt}"
    _save_state(saved, path)

    torch.manual_seed(2)  # a different random init, so equality proves the load
    model = micro(name, 3, task, pretrained=path)
    loaded = _unwrapped_state(model)
    head = {k for k in saved if k.startswith(("fc.", "head."))}
    assert head, "the donor has a classifier head"
    checked = 0
    for key, value in saved.items():
        if key in head:
            continue  # 7-class head: skipped (cls) or absent (seg)
        assert key in loaded, key
        assert torch.equal(loaded[key], value), f"{name}/{task}: {key} differs from the pretrained file"
        checked += 1
    assert checked >= len(saved) - 2
    for key in head & set(loaded):  # the 3-class head keeps its own init and shape
        assert loaded[key].shape[0] == 3


def test_pretrained_file_of_other_architecture_is_refused(tmp_path):
    other = micro("vit_base", 3).backbone.state_dict()
    path = tmp_path / "vit.pth"
    torch.save(other, path)
    n_own = len(micro("resnet_base", 3).backbone.state_dict())
    with pytest.raises(ConfigError, match=rf"matches only \d+ of {n_own} tensors") as info:
        micro("resnet_base", 3, pretrained=path)
    assert str(path) in str(info.value)


def test_pretrained_file_wrapped_in_state_dict_key(tmp_path):
    torch.manual_seed(3)
    saved = micro("resnet_base", 3).backbone.state_dict()
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": saved, "epoch": 3}, path)
    model = micro("resnet_base", 3, pretrained=path)
    for key, value in saved.items():
        assert torch.equal(model.backbone.state_dict()[key], value), key


def test_missing_pretrained_file_names_it(tmp_path):
    path = tmp_path / "nowhere" / "resnet10t.pth"
    with pytest.raises(ConfigError) as info:
        micro("resnet_base", 3, pretrained=path)
    assert str(path) in str(info.value) and "not found" in str(info.value)


def test_unreadable_pretrained_file_is_a_config_error(tmp_path):
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ConfigError, match="cannot read pretrained checkpoint"):
        micro("resnet_base", 3, pretrained=path)


@pytest.mark.parametrize("none", [None, "none", "None"])
def test_pretrained_none_is_random_init(none):
    assert micro("resnet_base", 3, pretrained=none).config.name == "resnet_base"


def test_pretrained_timm_for_micro_has_no_published_weights():
    with pytest.raises(ConfigError, match="no published weights"):
        micro("resnet_base", 3, pretrained="timm")


def _empty_hf_cache(tmp_path, monkeypatch):
    home = tmp_path / "hf"
    hub = home / "hub"
    hub.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    return hub


def test_pretrained_timm_with_empty_cache_says_where_to_put_the_model(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants
    import timm

    hub = _empty_hf_cache(tmp_path, monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads these at import time; patch them too so this test can never download.
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(hub))
    with pytest.raises(ConfigError) as info:
        registry.create_model("resnet_base", 3, size="tiny", pretrained="timm")
    message = str(info.value)
    assert "\n" not in message
    assert str(hub) in message, message
    # The folder timm reads is named after the Hugging Face repo of the default pretrained tag
    # (e.g. timm/resnet18.a1_in1k), so that is the folder the message must name.
    hub_id = timm.create_model("resnet18", pretrained=False).pretrained_cfg["hf_hub_id"]
    folder = "models--" + hub_id.replace("/", "--")
    assert str(hub / folder) in message, message


def test_pretrained_timm_never_reaches_for_the_network(tmp_path, monkeypatch):
    """The registry promises weights never come from the network, even without HF_HUB_OFFLINE set."""
    _empty_hf_cache(tmp_path, monkeypatch)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    attempts: list[str] = []

    def no_network(host, *args, **kwargs):
        attempts.append(str(host))
        raise socket.gaierror(socket.EAI_NONAME, "network disabled by the test")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(time, "sleep", lambda _s: None)  # skip the client's retry back-off
    with pytest.raises(ConfigError, match="not in the local cache"):
        registry.create_model("resnet_base", 3, size="tiny", pretrained="timm")
    assert not attempts, f"pretrained='timm' tried to reach {sorted(set(attempts))}"


# --------------------------------------------------------------------------- checkpoints


def _randomise(model: torch.nn.Module) -> None:
    """Perturb every parameter and buffer (zero-initialised DEC heads included), so a reload that
    silently kept a fresh init would show."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
        persistent = set(model.state_dict())  # not Canon's candidate set: it is rebuilt, not saved
        for name, b in model.named_buffers():
            if name not in persistent:
                continue
            if b.is_floating_point() and "running_var" in name:
                b.mul_(1.5)
            elif b.is_floating_point():
                b.add_(0.01 * torch.randn(b.shape, generator=g))


@pytest.mark.parametrize(
    ("name", "task", "options"),
    [
        ("resnet_dec", "cls", {"dec_backward": "phantom"}),
        ("vit_canon", "seg", {"canon_candidates": 8}),
        ("swin_augl", "cls", {"grid": 3}),
        ("dinov2_dec", "cls", {"latent_mode": "invariant"}),
    ],
)
def test_checkpoint_round_trip(tmp_path, name, task, options):
    torch.manual_seed(0)
    model = micro(name, 4, task, **options)
    _randomise(model)
    model.eval()
    s = img_size(name, task)
    x = torch.randn(2, 3, s, s)
    with torch.no_grad():
        expected = model(x)
    path = checkpoint.save(tmp_path / "sub" / "model.pt", model, epoch=3, metrics={"accuracy": 0.5})
    assert path.is_file()
    assert not [p for p in path.parent.iterdir() if ".tmp-" in p.name]

    raw = torch.load(path, map_location="cpu", weights_only=True)  # plain types and tensors only
    assert raw["format"] == checkpoint.FORMAT
    assert raw["model_config"]["name"] == name and raw["model_config"]["task"] == task
    for key, value in options.items():
        assert raw["model_config"][key] == value
    assert raw["epoch"] == 3 and raw["metrics"] == {"accuracy": 0.5}

    torch.manual_seed(123)  # reload must not depend on the init RNG
    loaded, ckpt = checkpoint.load_model(path)
    assert ckpt["model_config"] == registry.config_dict(model)
    assert registry.config_dict(loaded) == registry.config_dict(model)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)


def test_checkpoint_records_dec_backward(tmp_path):
    for backward in ("implicit", "phantom"):
        path = checkpoint.save(tmp_path / f"{backward}.pt", micro("vit_dec", 3, dec_backward=backward))
        assert torch.load(path, weights_only=True)["model_config"]["dec_backward"] == backward
        model, _ = checkpoint.load_model(path)
        layers = adapted_layers(model.backbone)
        assert layers and all(layer.canonicalizer.backward == backward for layer in layers)


def test_canonicalizer_sizes_are_recorded():
    dec = adapted_layers(micro("resnet_dec", 3).backbone)[0].canonicalizer
    assert dec.body[0].out_channels == 32 and dec.body[3].out_channels == 64 and dec.resolution == 8
    canon = adapted_layers(micro("resnet_canon", 3).backbone)[0].canonicalizer
    assert canon.project.out_channels == 16 and canon.resolution == 8
    assert adapted_layers(micro("resnet_canon", 3, canon_width=0).backbone)[0].canonicalizer.project is None


@pytest.mark.parametrize("name, first_design", [
    ("resnet_dec", {"dec_width": 64, "dec_resolution": 32}),
    ("resnet_canon", {"canon_width": 0, "canon_resolution": 32}),
])
def test_a_checkpoint_from_before_the_size_options_loads_as_it_was(tmp_path, name, first_design):
    """Checkpoints written before the fields existed hold the first design (DEC 64/128 channels at
    32 px; Canon on all channels at 32 px)."""
    assert all(getattr(micro(name, 3).config, k) != v for k, v in first_design.items())
    old = micro(name, 3, **first_design)
    _randomise(old)
    path = checkpoint.save(tmp_path / "old.pt", old.eval())
    raw = torch.load(path, weights_only=True)
    for key in first_design:
        del raw["model_config"][key]
    torch.save(raw, path)
    loaded, _ = checkpoint.load_model(path)
    assert all(getattr(loaded.config, k) == v for k, v in first_design.items())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), old(x))


def test_truncated_checkpoint_is_a_config_error(tmp_path):
    path = checkpoint.save(tmp_path / "model.pt", micro("resnet_base", 3))
    data = path.read_bytes()
    for cut in (len(data) // 2, 100):
        path.write_bytes(data[:cut])
        with pytest.raises(ConfigError, match="cannot read checkpoint") as info:
            checkpoint.load_model(path)
        assert str(path) in str(info.value)


def test_garbage_and_foreign_files_are_config_errors(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00\x01 definitely not a torch file")
    with pytest.raises(ConfigError, match="cannot read checkpoint"):
        checkpoint.load_model(garbage)

    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": micro("resnet_base", 3).state_dict()}, foreign)
    with pytest.raises(ConfigError, match="not an lsbench checkpoint"):
        checkpoint.load_model(foreign)

    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(ConfigError, match="not an lsbench checkpoint"):
        checkpoint.read(tensor)

    with pytest.raises(ConfigError, match="not found"):
        checkpoint.load_model(tmp_path / "missing.pt")


# --------------------------------------------------------------------------- CLI


def test_cli_models_lists_all_names_with_counts(cli):
    result = cli("models", "--size", "micro", "--num-classes", "10")
    assert result.exit_code == 0, result.output
    for name in ALL_NAMES:
        assert re.search(rf"\b{name}\b", result.stdout), name
    assert "resnet10t" in result.stdout and "vit_small_patch14_reg4_dinov2" in result.stdout
    assert len(re.findall(r"\d+\.\d\d M", result.stdout)) == 36


def test_cli_models_no_counts(cli):
    result = cli("models", "--size", "micro", "--no-counts")
    assert result.exit_code == 0, result.output
    for name in ALL_NAMES:
        assert re.search(rf"\b{name}\b", result.stdout), name
    assert not re.search(r"\d+\.\d\d M", result.stdout)


def test_cli_models_bad_size_is_one_error_line(cli):
    result = cli("models", "--size", "huge")
    assert_user_error(result, "size must be one of")


def test_method_names_without_torch_match_the_registry():
    """``names.METHOD_NAMES`` (what the torch-free leaderboard splits names with) is the registry's list."""
    from lsbench.dec_models.methods import list_methods
    from lsbench.dec_models.names import METHOD_NAMES

    assert tuple(list_methods()) == METHOD_NAMES
