"""Known-answer tests for the streaming metrics (:mod:`lsbench.benchmark.metrics`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jsonschema
import pytest
import torch

from lsbench.benchmark import metrics as M
from lsbench.errors import ConfigError, DataError

F64 = torch.float64
SCHEMA = json.loads((Path(M.__file__).with_name("result.schema.json")).read_text())["properties"]["metrics"]


def meta(group=None, ref=False, scales=None, split="test", variant=0):
    out = {"split": split, "variant": variant, "reference": ref}
    if group is not None:
        out["group"] = group
    if scales is not None:
        out["scales"] = scales
    return out


def feed(metrics: M.Metrics, probs, targets, metas, sizes):
    """Feed a stream in batches of the given sizes."""
    start = 0
    for n in sizes:
        metrics.update(probs[start:start + n], targets[start:start + n], metas[start:start + n])
        start += n
    assert start == len(metas)


def scale_probs(s: float) -> list[float]:
    """A scale-sensitive 3-class model: p(s) = [s/2, (1 - s/2)/2, (1 - s/2)/2].

    Against the reference p(1) = [1/2, 1/4, 1/4]: ||p(s) - p(1)||² = (3/8)(s - 1)² and
    ||p(s) - p(1)|| / ||p(1)|| = |s - 1| (since ||p(1)|| = sqrt(3/8)).
    """
    return [s / 2, (1 - s / 2) / 2, (1 - s / 2) / 2]


# Groups: g0 reference first; g1 reference in the middle (a variant arrives before it); g2 has
# no reference; g3 ends the stream.  Variant scales 0.6, 1.4, 0.8, 1.2, 2.0 are scored.
STREAM = [
    (0, True, 1.0), (0, False, 0.6), (0, False, 1.4),
    (1, False, 0.8), (1, True, 1.0), (1, False, 1.2),
    (2, False, 0.5), (2, False, 1.5),
    (3, True, 1.0), (3, False, 2.0),
]
SCORED = [0.6, 1.4, 0.8, 1.2, 2.0]


def scale_stream(stream=STREAM, split="test"):
    probs = torch.tensor([scale_probs(s) for _, _, s in stream], dtype=F64)
    targets = torch.zeros(len(stream), dtype=torch.long)
    metas = [meta(g, ref, [s], split=split, variant=i) for i, (g, ref, s) in enumerate(stream)]
    return probs, targets, metas


# --------------------------------------------------------------------------------------------
# Accuracy and InvE
# --------------------------------------------------------------------------------------------


def test_constant_model_has_zero_inve():
    probs, targets, metas = scale_stream()
    probs = torch.tensor([0.2, 0.5, 0.3], dtype=F64).expand(len(metas), -1)
    m = M.Metrics("cls", 3)
    feed(m, probs, targets, metas, [4, 4, 2])
    out = m.compute()
    assert out["inve"] == 0 and out["inve_code"] == 0
    assert out["num_groups"] == 4 and out["groups_without_reference"] == 1


@pytest.mark.parametrize("labels, expected", [([0, 1, 2, 3] * 2, 0.25), ([2, 2, 2, 1, 0], 0.6)])
def test_input_ignoring_model_scores_the_frequency_of_its_argmax(labels, expected):
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(4, generator=g, dtype=F64), 0)
    p[2] = p.max() + 1  # make class 2 the argmax, then renormalise
    p = p / p.sum()
    m = M.Metrics("cls", 4)
    m.update(p.expand(len(labels), -1), torch.tensor(labels))
    assert m.compute()["accuracy"] == pytest.approx(expected, abs=1e-15)


@pytest.mark.parametrize("sizes", [[10], [1] * 10, [4, 4, 2], [3, 3, 3, 1], [2, 5, 3]])
def test_scale_sensitive_model_inve_by_hand(sizes):
    probs, targets, metas = scale_stream()
    m = M.Metrics("cls", 3)
    feed(m, probs, targets, metas, sizes)
    out = m.compute()
    assert out["inve"] == pytest.approx(100 * 3 / 8 * sum((s - 1) ** 2 for s in SCORED) / 5, rel=1e-12)
    assert out["inve"] == pytest.approx(10.5, rel=1e-12)  # ×10⁻² units: the mean squared distance is 0.105
    assert out["inve_code"] == pytest.approx(sum(abs(s - 1) for s in SCORED) / 5, rel=1e-12)
    assert out["num_groups"] == 4 and out["groups_without_reference"] == 1
    assert out["num_samples"] == 10


def test_seg_inve_by_hand():
    ref = torch.tensor([[[1.0, 0.5]], [[0.0, 0.5]]], dtype=F64)  # (K=2, H=1, W=2)
    var = torch.full((2, 1, 2), 0.5, dtype=F64)
    m = M.Metrics("seg", 2)
    m.update(torch.stack([ref, var]), torch.zeros(2, 1, 2, dtype=torch.long), [meta(7, True), meta(7, False)])
    out = m.compute()
    # Δ² summed over classes: 0.5 at pixel 0, 0 at pixel 1 → mean over pixels 0.25 → ×100.
    assert out["inve"] == pytest.approx(25.0)
    assert out["inve_code"] == pytest.approx(math.sqrt(0.5) / math.sqrt(1.5))


def test_interleaved_worker_streams_equal_the_sequential_stream():
    """A DataLoader with 2 workers interleaves their batches; groups still pair correctly."""
    a = scale_stream(split="test")
    b = scale_stream([(g + 10, ref, s) for g, ref, s in STREAM], split="test")

    def batches(stream, sizes):
        probs, targets, metas = stream
        start, out = 0, []
        for n in sizes:
            out.append((probs[start:start + n], targets[start:start + n], metas[start:start + n]))
            start += n
        return out

    worker_a, worker_b = batches(a, [4, 4, 2]), batches(b, [2, 5, 3])
    interleaved = [x for pair in zip(worker_a, worker_b) for x in pair]
    m = M.Metrics("cls", 3, streams=2)
    for batch in interleaved:
        m.update(*batch)
    seq = M.Metrics("cls", 3)
    for batch in worker_a + worker_b:
        seq.update(*batch)
    assert m.compute() == seq.compute()
    assert m.compute()["num_groups"] == 8

    too_few = M.Metrics("cls", 3, streams=1)
    with pytest.raises(DataError, match="reappears"):
        for batch in interleaved:
            too_few.update(*batch)


def test_two_references_in_a_group_raise():
    m = M.Metrics("cls", 2)
    p = torch.full((2, 2), 0.5)
    with pytest.raises(DataError, match="more than one reference"):
        m.update(p, torch.zeros(2, dtype=torch.long), [meta(0, True), meta(0, True)])


def test_ungrouped_samples_and_no_metas():
    m = M.Metrics("cls", 2)
    m.update(torch.tensor([[0.9, 0.1], [0.4, 0.6]]), torch.tensor([0, 0]))
    out = m.compute()
    assert out["num_groups"] == 0 and out["inve"] is None and out["accuracy"] == 0.5
    assert out["per_scale"][2]["count"] == 2  # scale 1.0 without metadata: the bin starting at 1.0


def test_bad_inputs_raise_clear_errors():
    m = M.Metrics("cls", 3)
    with pytest.raises(ConfigError, match="K=3"):
        m.update(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ConfigError, match="targets"):
        m.update(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(DataError, match="labels"):
        m.update(torch.full((1, 3), 1 / 3), torch.tensor([3]))
    with pytest.raises(ConfigError):
        M.Metrics("det", 3)
    with pytest.raises(ConfigError):
        M.Metrics("cls", 3, "nope")
    with pytest.raises(ConfigError):
        M.Metrics("cls", 3, {"edges": [1.0, 0.5]})


def test_update_under_inference_mode_then_compute():
    probs, targets, metas = scale_stream()
    m = M.Metrics("cls", 3)
    with torch.inference_mode():
        feed(m, probs, targets, metas, [3, 3, 4])
    assert m.compute()["inve"] == pytest.approx(10.5)


# --------------------------------------------------------------------------------------------
# Segmentation: confusion, mIoU, pixel accuracy
# --------------------------------------------------------------------------------------------


def one_hot_probs(pred: torch.Tensor, k: int) -> torch.Tensor:
    """0.7 on the predicted class, 0.1 on the others (k=4): (B, H, W) → (B, K, H, W)."""
    return torch.nn.functional.one_hot(pred, k).permute(0, 3, 1, 2).to(F64) * 0.6 + 0.1


SEG_TARGET = torch.tensor([[[0, 0, 1]], [[1, 2, 2]]])  # two samples (B=2, H=1, W=3)
SEG_PRED = torch.tensor([[[0, 1, 1]], [[1, 2, 0]]])


def test_miou_by_hand():
    m = M.Metrics("seg", 4)
    m.update(one_hot_probs(SEG_PRED, 4), SEG_TARGET, [meta(scales=[0.5]), meta(scales=[1.0])])
    out = m.compute()
    # class 0: TP 1, |T| 2, |P| 2 → 1/3; class 1: TP 2, |T| 2, |P| 3 → 2/3; class 2: 1/(2+1-1);
    # class 3 absent from both → None, excluded from the mean.
    assert out["per_class_iou"] == pytest.approx([1 / 3, 2 / 3, 1 / 2, None])
    assert out["miou"] == pytest.approx(0.5)
    assert out["accuracy"] == pytest.approx(4 / 6)
    # Per-scale for seg: the sample's pixel accuracy and mean p(target) (0.7 if right, 0.1 if wrong).
    bins = out["per_scale"]
    assert [b["count"] for b in bins] == [1, 0, 1, 0, 0, 0]
    assert bins[0]["accuracy"] == pytest.approx(2 / 3) and bins[2]["accuracy"] == pytest.approx(2 / 3)
    assert bins[0]["p_correct"] == pytest.approx(0.5) and bins[2]["p_correct"] == pytest.approx(0.5)


def test_ignore_index_is_left_out():
    target = SEG_TARGET.clone()
    target[0, 0, 1] = 255
    m = M.Metrics("seg", 4, ignore_index=255)
    m.update(one_hot_probs(SEG_PRED, 4), target, [meta(scales=[0.5]), meta(scales=[1.0])])
    out = m.compute()
    assert out["per_class_iou"] == pytest.approx([1 / 2, 1.0, 1 / 2, None])
    assert out["miou"] == pytest.approx(2 / 3) and out["accuracy"] == pytest.approx(4 / 5)
    assert out["per_scale"][0]["accuracy"] == 1.0 and out["per_scale"][0]["p_correct"] == pytest.approx(0.7)


def test_confusion_and_iou_functions():
    conf = M.confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]), 3)
    assert conf.tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 0]]
    per_class, miou = M.iou_from_confusion(conf)
    assert per_class == [0.5, 0.5, None] and miou == 0.5
    assert M.iou_from_confusion(torch.zeros(2, 2)) == ([None, None], None)


# --------------------------------------------------------------------------------------------
# Per-scale tables
# --------------------------------------------------------------------------------------------


def test_per_scale_edges_by_hand():
    rows = [  # (meta scales, p(class 0)); the target is always class 0
        ([0.5], 0.9),  # bin [0.4, 0.7), right
        ([0.7], 0.2),  # an edge belongs to the bin starting there: [0.7, 1.0), wrong
        ([1.0, 1.0], 0.6),  # reference: [1.0, 1.3), right
        ([0.5, 2.0], 0.4),  # geometric mean 1.0 → [1.0, 1.3), wrong
        (None, 0.8),  # no scales: 1.0 → [1.0, 1.3), right
        ([2.0, 4.5], 0.7),  # geometric mean 3.0 (up to rounding): last bin, closed [2.0, 3.0], right
        ([3.5], 0.9),  # out of range, right
        ([0.3], 0.1),  # out of range, wrong
        ([1.3], 0.3),  # [1.3, 1.6), wrong
    ]
    probs = torch.tensor([[p, 1 - p] for _, p in rows], dtype=F64)
    m = M.Metrics("cls", 2, "auto")
    m.update(probs, torch.zeros(len(rows), dtype=torch.long), [meta(scales=s) for s, _ in rows])
    out = m.compute()
    table = out["per_scale"]
    assert [(b["label"], b["lo"], b["hi"]) for b in table] == [
        ("[0.4, 0.7)", 0.4, 0.7), ("[0.7, 1)", 0.7, 1.0), ("[1, 1.3)", 1.0, 1.3),
        ("[1.3, 1.6)", 1.3, 1.6), ("[1.6, 2)", 1.6, 2.0), ("[2, 3]", 2.0, 3.0),
    ]
    assert [b["count"] for b in table] == [1, 1, 3, 1, 0, 1]
    assert [b["accuracy"] for b in table] == pytest.approx([1.0, 0.0, 2 / 3, 0.0, None, 1.0])
    assert [b["p_correct"] for b in table] == pytest.approx([0.9, 0.2, 0.6, 0.3, None, 0.7])
    assert out["scale_out_of_range"] == 2
    assert out["accuracy"] == pytest.approx(5 / 9)  # out-of-range samples still count overall
    # Population std of the 5 non-empty bin accuracies [1, 0, 2/3, 0, 1]: sqrt(46) / 15.
    assert out["accuracy_std_across_scales"] == pytest.approx(math.sqrt(46) / 15)


def test_per_scale_discrete_imagenet_values():
    scales = [0.7, 0.7000004, 1.3, 1.0, 0.75, 1.2999995, 0.9]
    correct = [1, 0, 1, 1, 1, 0, 1]
    probs = torch.tensor([[0.8, 0.2] if c else [0.3, 0.7] for c in correct], dtype=F64)
    m = M.Metrics("cls", 2, {"values": list(M.IMAGENET_SCALES)})
    m.update(probs, torch.zeros(len(scales), dtype=torch.long), [meta(scales=[s]) for s in scales])
    out = m.compute()
    table = out["per_scale"]
    assert [b["label"] for b in table] == ["0.7", "0.8", "0.9", "1", "1.1", "1.2", "1.3"]
    assert all(b["lo"] == b["hi"] for b in table)
    assert [b["count"] for b in table] == [2, 0, 1, 1, 0, 0, 2]
    assert [b["accuracy"] for b in table] == pytest.approx([0.5, None, 1.0, 1.0, None, None, 0.5])
    assert [b["p_correct"] for b in table] == pytest.approx([0.55, None, 0.8, 0.8, None, None, 0.55])
    assert out["scale_out_of_range"] == 1
    assert out["accuracy_std_across_scales"] == pytest.approx(0.25)  # pstdev of [0.5, 1, 1, 0.5]
    assert M.ScaleBins.parse("imagenet") == M.ScaleBins("values", M.IMAGENET_SCALES)


def test_std_across_scales_reproduces_paper_table3():
    """Table 3, Aug row: brackets 91.64 / 96.32 / 93.84 → "Overall ... ± 1.91" (population std)."""
    n, hits = 2500, [2291, 2408, 2346]  # 91.64 %, 96.32 %, 93.84 % of 2500
    metas, probs = [], []
    for scale, h in zip([0.7, 1.5, 2.5], hits):
        metas += [meta(scales=[scale])] * n
        probs += [[0.9, 0.1]] * h + [[0.1, 0.9]] * (n - h)
    m = M.Metrics("cls", 2, "table3")
    m.update(torch.tensor(probs), torch.zeros(3 * n, dtype=torch.long), metas)
    out = m.compute()
    assert [b["accuracy"] for b in out["per_scale"]] == pytest.approx([0.9164, 0.9632, 0.9384])
    assert 100 * out["accuracy_std_across_scales"] == pytest.approx(1.91, abs=5e-3)


def test_sample_scale_is_the_geometric_mean():
    assert M.sample_scale({}) == 1.0 and M.sample_scale({"scales": []}) == 1.0
    assert M.sample_scale({"scales": [0.7]}) == 0.7
    assert M.sample_scale({"scales": [1.0, 4.0]}) == pytest.approx(2.0)
    with pytest.raises(DataError):
        M.sample_scale({"scales": [0.0, 1.0]})


# --------------------------------------------------------------------------------------------
# EquE
# --------------------------------------------------------------------------------------------


def prob_maps(b=2, k=3, h=16, w=20, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(b, k, h, w, generator=g, dtype=F64), dim=1)


MIX = torch.tensor([[0.6, 0.2, 0.1], [0.3, 0.5, 0.1], [0.1, 0.3, 0.8]], dtype=F64)  # column-stochastic


@pytest.mark.parametrize("model_fn", [lambda x: x, lambda x: torch.einsum("kc,bchw->bkhw", MIX, x)],
                         ids=["identity", "linear-channel-mix"])
def test_pointwise_linear_segmenter_is_equivariant(model_fn):
    """Warping is linear per pixel, so a pointwise linear model commutes with it exactly."""
    sq, code = M.equivariance_errors(model_fn, prob_maps(), draws=3, generator=torch.Generator().manual_seed(1))
    assert sq.shape == code.shape == (2,)
    assert float(sq.max()) < 1e-10 and float(code.max()) < 1e-10


def shifted(x: torch.Tensor) -> torch.Tensor:
    return torch.roll(x, shifts=3, dims=-1)


def test_non_equivariant_segmenter_has_positive_eque():
    x = prob_maps()
    sq, code = M.equivariance_errors(shifted, x, draws=2, generator=torch.Generator().manual_seed(1))
    assert float(sq.min()) > 1e-3 and float(code.min()) > 1e-2
    # The identity scaling (strength 0) is exact for any model.
    sq0, code0 = M.equivariance_errors(shifted, x, draws=2, strength=0.0)
    assert float(sq0.abs().max()) == 0 and float(code0.abs().max()) == 0


def test_eque_code_form_and_reproducibility():
    x = prob_maps(b=3)
    sq, code = M.equivariance_errors(shifted, x, draws=1, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(code, sq.sqrt())  # one draw: sqrt(Σ Δ² / (H·W)) = sqrt(mean_pixels Σ_classes Δ²)
    again, _ = M.equivariance_errors(shifted, x, draws=1, generator=torch.Generator().manual_seed(5))
    assert torch.equal(sq, again)
    with pytest.raises(ConfigError):
        M.equivariance_errors(lambda t: t[:, 0], x)


def test_add_equivariance_reports_means_and_draws():
    m = M.Metrics("seg", 2)
    m.add_equivariance(torch.tensor([0.1, 0.3]), torch.tensor([0.2, 0.4]), draws=4)
    m.add_equivariance(torch.tensor([0.2]), torch.tensor([0.6]), draws=4)
    out = m.compute()
    assert out["eque"] == pytest.approx(0.2) and out["eque_code"] == pytest.approx(0.4)
    assert out["eque_draws"] == 4


# --------------------------------------------------------------------------------------------
# Merging and schema
# --------------------------------------------------------------------------------------------


def mixed_stream(seed=0):
    """12 groups of 1 reference + 3 variants, random scale-dependent probabilities, 5 classes."""
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(48, 5, generator=g, dtype=F64) * 2, 1)
    targets = torch.randint(0, 5, (48,), generator=g)
    scales = torch.empty(48).uniform_(0.4, 3.0, generator=g).tolist()
    metas = [meta(i // 4, i % 4 == 0, [1.0] if i % 4 == 0 else [s], variant=i % 4) for i, s in enumerate(scales)]
    return probs, targets, metas


def test_merging_halves_equals_one_stream():
    probs, targets, metas = mixed_stream()
    whole = M.Metrics("cls", 5)
    feed(whole, probs, targets, metas, [5, 7, 9, 11, 16])
    first, second = M.Metrics("cls", 5), M.Metrics("cls", 5)
    feed(first, probs[:24], targets[:24], metas[:24], [7, 17])  # groups 0-5
    feed(second, probs[24:], targets[24:], metas[24:], [24])  # groups 6-11
    first.merge(second.state())
    a, b = first.compute(), whole.compute()
    assert _close(a, b)
    # Without torch.distributed, all_reduce_state is a copy.
    state = whole.state()
    reduced = M.all_reduce_state(state)
    assert all(torch.equal(state[k], reduced[k]) for k in state)
    with pytest.raises(ConfigError):
        first.merge(M.Metrics("seg", 5).state())


def _close(a, b) -> bool:
    """Recursive equality with a relative tolerance on floats (sums in a different order)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        return all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        assert len(a) == len(b)
        return all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-12, abs=1e-15), (a, b)
        return True
    assert a == b, (a, b)
    return True


def _rank_worker(rank: int, world: int, store_path: str, out_path: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.FileStore(store_path, world), rank=rank, world_size=world)
    try:
        probs, targets, metas = mixed_stream()
        half = slice(0, 24) if rank == 0 else slice(24, 48)
        m = M.Metrics("cls", 5)
        feed(m, probs[half], targets[half], metas[half], [10, 14])
        result = m.compute_from(M.all_reduce_state(m.state()))
        if rank == 0:
            Path(out_path).write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def test_all_reduce_state_over_two_processes(tmp_path):
    import torch.multiprocessing as mp

    out = tmp_path / "result.json"
    mp.spawn(_rank_worker, args=(2, str(tmp_path / "store"), str(out)), nprocs=2, join=True)
    whole = M.Metrics("cls", 5)
    feed(whole, *mixed_stream(), [48])
    assert _close(json.loads(out.read_text()), whole.compute())


def test_compute_validates_against_the_result_schema():
    probs, targets, metas = mixed_stream()
    cls = M.Metrics("cls", 5)
    cls.update(probs, targets, metas)
    seg = M.Metrics("seg", 4)
    seg.update(one_hot_probs(SEG_PRED, 4), SEG_TARGET, [meta(0, True), meta(0, False, [0.5, 0.9])])
    seg.add_equivariance(*M.equivariance_errors(shifted, prob_maps(k=4), draws=2), draws=2)
    outs = [cls.compute(), seg.compute(), M.Metrics("cls", 3, "imagenet").compute()]
    for out in outs:
        jsonschema.validate(out, SCHEMA)
    assert outs[0]["miou"] is None and outs[0]["eque"] is None and outs[0]["eque_draws"] == 0
    assert outs[1]["eque"] > 0 and outs[1]["eque_draws"] == 2
    assert outs[2]["num_samples"] == 0 and outs[2]["accuracy"] is None
