"""The compared methods (CoKe, CueCo-style, CC, CADC, SwAV, BYOL, MoCo v2): each loss on
hand-made inputs, the properties that matter for it (stop-gradients, marginals, CoKe's minimum
cluster size, EMA updates), and a forward/backward pass of every registered method."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import yaml

from clusterssl import paths, registry
from clusterssl.config import load_schema
from clusterssl.methods import byol, cadc, cc, coke, common, cueco, swav
from clusterssl.methods.base import REGISTRY, get_method
from clusterssl.train import make_optimizer
from conftest import PARAMS_YAML


BUILT_IN = ["carl", "coke", "cueco", "cc", "cadc", "simclr", "swav", "byol", "moco_v2"]


def _batch(n=6, views=2, size=8, seed=0, clean=False, epoch=0):
    g = torch.Generator().manual_seed(seed)
    b = {"views": [torch.randn(n, 1, size, size, generator=g) for _ in range(views)], "index": torch.arange(n), "epoch": epoch}
    if clean:
        b["clean"] = torch.randn(n, 1, size, size, generator=g)
    return b


# --- registry -------------------------------------------------------------------------------


def test_registry_schema_and_all_agree():
    names = list(registry.methods())
    # the report's order: CARL, the clustering methods, the contrastive and distillation baselines
    assert [n for n in names if n in BUILT_IN] == BUILT_IN
    assert [registry.method(n).order for n in names] == sorted(registry.method(n).order for n in names)
    for name in names:  # importing a method's module registers the class its source declares
        cls, spec = get_method(name), registry.method(name)
        assert cls.name == name and (cls.provenance, cls.defaults, cls.params_schema) == (spec.provenance, spec.defaults, spec.params_schema)
    schema = load_schema()
    schema_names = schema["properties"]["methods"]["oneOf"][1]["items"]["enum"]
    assert set(REGISTRY) == set(paths.all_methods()) == set(schema_names) == set(schema["properties"]["method_params"]["properties"])
    assert paths.methods({"methods": "all"}) == names
    assert paths.methods({"methods": ["simclr"]}) == ["simclr"]


def test_each_methods_defaults_are_what_params_yaml_runs():
    """params.yaml spells out the built-in methods' params: each block equals the method's declared
    defaults but for its recipe (`augment` / `pretrain`), so the file shows what runs."""
    own = yaml.safe_load(PARAMS_YAML.read_text())["method_params"]
    assert set(BUILT_IN) <= set(own)
    for name, block in own.items():
        assert {k: v for k, v in block.items() if k not in ("augment", "pretrain")} == registry.method(name).defaults, name


@pytest.mark.parametrize("name", paths.all_methods())
def test_every_method_trains_and_documents_itself(tiny_backbone, method_params, name):
    cls = get_method(name)
    assert cls.provenance and cls.__module__ and (cls.__doc__ or __import__(cls.__module__, fromlist=["x"]).__doc__)
    model = cls(tiny_backbone(), method_params[name], 10, 6)
    model.on_epoch_start(0, lambda: torch.randn(40, model.feat_dim))
    model.train()
    out = model.training_step(_batch(clean=model.view_spec.clean))
    assert torch.isfinite(out["loss"]) and out["loss"].requires_grad
    out["loss"].backward()
    grads = [p.grad for p in model.backbone.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0
    # parameters of EMA targets never reach the optimiser
    opt_ids = {id(p) for g in model.parameter_groups() for p in g["params"]}
    for module in model.modules():
        if isinstance(module, common.EMATeacher):
            assert not opt_ids & {id(p) for p in module.parameters()}
    model.after_optimizer_step(0.5)
    model.on_epoch_end(0)
    model.eval()
    logits = model.cluster_logits(model.backbone(torch.randn(3, 1, 8, 8)))
    if name in ("cc", "cadc", "coke"):
        assert logits.shape == (3, 10)  # a head with one cluster per class
    elif name == "carl":
        assert logits.shape == (3, method_params["carl"]["num_prototypes"])
    else:
        assert logits is None


# --- InfoNCE (MoCo v2, CueCo) -----------------------------------------------------------------


def test_info_nce_hand_computed():
    q = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    k = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    queue = torch.tensor([[0.0, 1.0], [-3.0, 0.0]])
    t = 0.5
    # row 0: pos cos 1, negatives cos 0, -1; row 1: pos cos 1/sqrt2, negatives cos 1, 0
    rows = [[1.0, 0.0, -1.0], [1 / math.sqrt(2), 1.0, 0.0]]
    expected = sum(-r[0] / t + math.log(sum(math.exp(v / t) for v in r)) for r in rows) / 2
    assert common.info_nce(q, k, queue, t).item() == pytest.approx(expected, rel=1e-5)


def test_info_nce_no_gradient_into_keys_or_queue():
    q = torch.randn(4, 3, requires_grad=True)
    k = torch.randn(4, 3, requires_grad=True)
    queue = torch.randn(5, 3, requires_grad=True)
    common.info_nce(q, k, queue, 0.2).backward()
    assert q.grad is not None and k.grad is None and queue.grad is None


def test_info_nce_empty_queue_is_zero():
    assert common.info_nce(torch.randn(3, 4), torch.randn(3, 4), torch.zeros(0, 4), 0.2).item() == pytest.approx(0.0)


def test_moco_keeps_one_queue_per_view_in_solo_learns_order(tiny_backbone, method_params):
    """View 1's queries meet earlier view-2 keys and view 2's meet earlier view-1 keys; then each
    view's keys join its own queue (solo-learn's MoCo v2+)."""
    cfg = dict(method_params["moco_v2"], queue_size=32)
    model = get_method("moco_v2")(tiny_backbone(), cfg, 10, 6)
    assert [int(q.filled) for q in model.queues] == [32, 32]  # full of random unit keys, as in MoCo
    batch = _batch(n=6)
    before = [q.get().clone() for q in model.queues]
    with torch.no_grad():
        (q1, q2), (k1, k2) = model.queries_and_keys(batch["views"])
        t = cfg["temperature"]
        expected = (common.info_nce(q1, k2, before[1], t) + common.info_nce(q2, k1, before[0], t)) / 2
        mixed = (common.info_nce(q1, k2, torch.cat(before), t) + common.info_nce(q2, k1, torch.cat(before), t)) / 2
    loss = model.training_step(batch)["loss"]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5) and abs(loss.item() - mixed.item()) > 1e-3
    assert torch.allclose(model.queues[0].items[:6], k1) and torch.allclose(model.queues[1].items[:6], k2)
    assert torch.equal(model.queues[0].items[6:], before[0][6:])
    model.training_step(_batch(n=6, seed=1))
    assert [int(q.ptr) for q in model.queues] == [12, 12]


@pytest.mark.parametrize("name", ["byol", "moco_v2", "cueco"])
def test_ema_target_update_equals_formula(tiny_backbone, method_params, name):
    model = get_method(name)(tiny_backbone(), method_params[name], 10, 6)
    teacher = next(m for m in model.modules() if isinstance(m, common.EMATeacher))
    online = model.online() if name == "byol" else model.query_encoder()
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
    before = [p.clone() for p in teacher.parameters()]
    model.after_optimizer_step(0.3)
    m = common.ema_momentum(method_params[name]["ema_momentum"], 0.3)
    for t, old, s in zip(teacher.parameters(), before, online.parameters()):
        torch.testing.assert_close(t, m * old + (1 - m) * s.detach())


# --- BYOL -------------------------------------------------------------------------------------


def test_byol_loss_known_values_and_stop_gradient():
    a = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    assert byol.byol_loss(a, a * 2).item() == pytest.approx(0.0, abs=1e-6)  # same direction
    assert byol.byol_loss(a, -a).item() == pytest.approx(4.0)
    assert byol.byol_loss(a, a.flip(1)).item() == pytest.approx(2.0)  # orthogonal
    p = torch.randn(5, 4, requires_grad=True)
    t = torch.randn(5, 4, requires_grad=True)
    byol.byol_loss(p, t).backward()
    assert p.grad is not None and t.grad is None


# --- SwAV -------------------------------------------------------------------------------------


def test_swapped_prediction_hand_computed():
    s1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    s2 = torch.tensor([[0.5, 0.5], [1.0, -1.0]])
    q1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    q2 = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    t = 0.5
    ce = lambda q, s: -(q * F.log_softmax(s / t, dim=1)).sum(1).mean()
    expected = (ce(q1, s2) + ce(q2, s1)) / 2
    assert swav.swapped_prediction_loss([s1, s2], [q1, q2], t).item() == pytest.approx(expected.item())


def test_swav_codes_carry_no_gradient_and_local_views_predict_globals():
    scores = [torch.randn(4, 3, requires_grad=True) for _ in range(3)]
    codes = [torch.softmax(s, 1) for s in scores[:2]]  # built from scores: must not pass gradient
    loss = swav.swapped_prediction_loss(scores, codes, 0.1)
    grads = torch.autograd.grad(loss, scores)
    # d loss / d s_i comes only through log_softmax(s_i): it sums to zero over each row
    for g in grads:
        torch.testing.assert_close(g.sum(dim=1), torch.zeros(4), atol=1e-6, rtol=0)
    # 2 code views x (3 - 1) predicting views = 4 terms
    manual = sum(-(codes[j].detach() * F.log_softmax(scores[i] / 0.1, 1)).sum(1).mean() for j in range(2) for i in range(3) if i != j) / 4
    assert loss.item() == pytest.approx(manual.item())


def test_swav_prototypes_frozen_first_epoch_then_trained_and_unit_norm(tiny_backbone, method_params):
    cfg = dict(method_params["swav"], freeze_prototypes_epochs=1, num_prototypes=5)
    model = get_method("swav")(tiny_backbone(), cfg, 10, 6)
    model.training_step(_batch(epoch=0))["loss"].backward()
    assert model.prototypes.weight.grad is None
    model.training_step(_batch(epoch=1))["loss"].backward()
    assert model.prototypes.weight.grad is not None and model.prototypes.weight.grad.abs().sum() > 0
    with torch.no_grad():
        model.prototypes.weight.mul_(3)
    model.after_optimizer_step(0.5)
    torch.testing.assert_close(model.prototypes.weight.norm(dim=1), torch.ones(5))


def test_swav_queue_joins_sinkhorn_once_full(tiny_backbone, method_params):
    cfg = dict(method_params["swav"], queue_size=12, num_prototypes=5)
    model = get_method("swav")(tiny_backbone(), cfg, 10, 6)
    for seed in range(3):
        out = model.training_step(_batch(n=6, seed=seed))
        assert torch.isfinite(out["loss"])
    assert all(int(q.filled) == 12 for q in model.queues)


# --- Contrastive Clustering -------------------------------------------------------------------


def test_cc_cluster_loss_known_values():
    m = 3
    p = torch.eye(m).repeat(2, 1)  # 6 samples, each cluster used twice, one-hot
    out = cc.cc_cluster_loss(p, p.clone(), temperature=1.0)
    assert out["cluster_balance"].item() == pytest.approx(0.0, abs=1e-6)
    # columns are orthogonal unit vectors: positive cos 1, the 2M - 2 negatives cos 0
    expected = -1.0 + math.log(math.exp(1.0) + (2 * m - 2) * math.exp(0.0))
    assert out["cluster_contrast"].item() == pytest.approx(expected, rel=1e-5)
    collapsed = torch.zeros(6, m)
    collapsed[:, 0] = 1
    assert cc.cc_cluster_loss(collapsed, collapsed, 1.0)["cluster_balance"].item() == pytest.approx(2 * math.log(m), rel=1e-5)


def test_cc_cluster_loss_gradient_reaches_both_views():
    logits = [torch.randn(8, 4, requires_grad=True) for _ in range(2)]
    out = cc.cc_cluster_loss(*(F.softmax(x, 1) for x in logits), temperature=1.0)
    (out["cluster_contrast"] + out["cluster_balance"]).backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in logits)


# --- CADC -------------------------------------------------------------------------------------


def test_student_t_assignment_known_values():
    centres = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    h = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    q = cadc.student_t_assignment(h, centres)
    # point 0: distances^2 0 and 1 -> kernel 1 and 1/2; point 1: 9 and 4 -> 1/10 and 1/5
    torch.testing.assert_close(q, torch.tensor([[2 / 3, 1 / 3], [1 / 3, 2 / 3]]))


def test_dec_target_sharpens_and_is_detached():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.5, 0.1], [0.3, 0.2, 1.5]], requires_grad=True)
    q = F.softmax(logits, 1)
    p = cadc.dec_target(q)
    assert not p.requires_grad
    torch.testing.assert_close(p.sum(1), torch.ones(3))
    assert (p.max(1).values >= q.max(1).values - 1e-7).all()  # sharper
    w = q.detach() ** 2 / q.detach().sum(0)
    torch.testing.assert_close(p, w / w.sum(1, keepdim=True))


def test_cadc_loss_properties():
    q = F.softmax(torch.randn(5, 3), 1)
    out = cadc.cadc_loss(q, [q.clone(), q.clone()])
    assert out["anchor"].item() == pytest.approx(0.0, abs=1e-6)
    assert out["clustering"].item() >= 0
    clean_logits = torch.randn(5, 3, requires_grad=True)
    aug_logits = torch.randn(5, 3, requires_grad=True)
    anchor = cadc.cadc_loss(F.softmax(clean_logits, 1), [F.softmax(aug_logits, 1)])["anchor"]
    anchor.backward()
    assert clean_logits.grad is None and aug_logits.grad is not None  # q(x) is the detached anchor


def test_cadc_centres_start_at_kmeans_of_the_features(tiny_backbone, method_params):
    model = get_method("cadc")(tiny_backbone(), dict(method_params["cadc"], num_clusters=3, kmeans_epoch=0), 10, 6)
    g = torch.Generator().manual_seed(0)
    blobs = torch.tensor([[0.0] * model.feat_dim, [10.0] * model.feat_dim, [-10.0] * model.feat_dim])
    feats = torch.cat([b + 0.01 * torch.randn(20, model.feat_dim, generator=g) for b in blobs])
    model.on_epoch_start(0, lambda: feats)
    found = sorted(model.centres.detach()[:, 0].tolist())
    assert found == pytest.approx([-10.0, 0.0, 10.0], abs=0.05)


def test_cadc_kmeans_epoch_trains_instance_loss_alone_until_the_centres_exist(tiny_backbone, method_params):
    model = get_method("cadc")(tiny_backbone(), dict(method_params["cadc"], kmeans_epoch=2), 10, 6)
    never = lambda: pytest.fail("k-means ran before kmeans_epoch")
    model.on_epoch_start(0, never)
    model.on_epoch_start(1, never)
    warm = model.training_step(_batch(clean=True, epoch=1))
    assert warm["loss"].item() == warm["instance"].item() and warm["clustering"].item() == 0.0
    feats = torch.randn(40, model.feat_dim)
    model.on_epoch_start(2, lambda: feats)
    assert model.centres.detach().abs().sum() > 0  # k-means put the centres on the features
    on = model.training_step(_batch(clean=True, epoch=2))
    assert on["clustering"].item() > 0 and on["loss"].item() > on["instance"].item()


def test_cadc_centres_skip_weight_decay_and_weight_scales_cluster_terms(tiny_backbone, method_params):
    cfg = dict(method_params["cadc"], cluster_weight=0.25, kmeans_epoch=0)
    model = get_method("cadc")(tiny_backbone(), cfg, 10, 6)
    model.on_epoch_start(0, lambda: torch.randn(40, model.feat_dim))
    opt = make_optimizer(model, {"weight_decay": 0.1, "optimizer": "sgd", "momentum": 0.9}, 0.1)
    centre_groups = [g for g in opt.param_groups if any(p is model.centres for p in g["params"])]
    assert len(centre_groups) == 1 and centre_groups[0]["weight_decay"] == 0.0
    out = model.training_step(_batch(clean=True))
    assert out["clustering"] > 0
    expected = out["instance"] + 0.25 * (out["clustering"] + out["anchor"])
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)

# --- CoKe -------------------------------------------------------------------------------------


def _skewed_batch(b=200, k=4, seed=0):
    """90% of the points near centre 0, the rest spread: plain k-means would starve clusters."""
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.eye(k, 8), dim=1)
    near = centres[0] + 0.3 * torch.randn(int(0.9 * b), 8, generator=g)
    spread = torch.randn(b - len(near), 8, generator=g)
    return centres, F.normalize(torch.cat([near, spread]), dim=1)


@pytest.mark.parametrize("dual_lr", [20.0, 0.0])
def test_coke_dual_update_keeps_minimum_cluster_size(dual_lr):
    k, b, gamma = 4, 200, 0.4
    centres, x = _skewed_batch(b, k)
    head = coke.ConstrainedKMeans(8, k, num_train=b, dual_lr=dual_lr, min_fraction=gamma)
    head.current.copy_(centres)
    sizes = []
    for _ in range(60):
        labels = head.assign(x)
        sizes.append(torch.bincount(labels, minlength=k).float())
        head.dual_step(sizes[-1], b)
    mean_size = torch.stack(sizes[-30:]).mean(0)
    minimum = gamma * b / k
    if dual_lr:
        assert (mean_size >= minimum - 1).all(), mean_size  # every cluster at its lower bound
        assert (head.duals >= 0).all()
    else:
        assert mean_size.min() < minimum  # without the duals the skew starves clusters


def test_coke_update_is_dual_step_plus_running_mean():
    head = coke.ConstrainedKMeans(2, 3, num_train=4, dual_lr=10.0, min_fraction=0.6)
    head.current.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    x = F.normalize(torch.tensor([[1.0, 0.2], [1.0, -0.2], [0.1, 1.0], [1.0, 0.0]]), dim=1)
    labels = head.assign(x)
    assert labels.tolist() == [0, 0, 1, 0]
    head.update(x, labels)
    # rho_k = max(0, 0 + 10 * (0.6 / 3 - n_k / 4)): n = (3, 1, 0)
    torch.testing.assert_close(head.duals, torch.tensor([0.0, 0.0, 2.0]))
    torch.testing.assert_close(head.current[0], F.normalize(x[[0, 1, 3]].mean(0), dim=0))
    torch.testing.assert_close(head.current[1], x[2])
    torch.testing.assert_close(head.current[2], torch.tensor([-1.0, 0.0]))  # no members: unchanged
    previous = head.previous.clone()
    head.next_epoch()
    torch.testing.assert_close(head.previous, head.current)
    assert not torch.equal(previous, head.previous) and head.counts.sum() == 0


def test_coke_loss_hand_computed_and_targets_detached():
    l1 = torch.tensor([[2.0, 0.0], [0.0, 1.0]], requires_grad=True)
    l2 = torch.tensor([[1.0, 1.0], [0.5, 0.0]], requires_grad=True)
    soft = [F.softmax(l1, 1), F.softmax(l2, 1)]
    y = torch.tensor([0, 1])
    a = 0.2
    ce = lambda lg, q: -(q * F.log_softmax(lg, 1)).sum(1).mean()
    expected = (a * F.cross_entropy(l1, y) + (1 - a) * ce(l1, soft[1]) + a * F.cross_entropy(l2, y) + (1 - a) * ce(l2, soft[0])) / 2
    loss = coke.coke_loss([l1, l2], soft, y, a)
    assert loss.item() == pytest.approx(expected.item())
    # the soft targets are constants: the gradient equals the one with explicitly detached targets
    g = torch.autograd.grad(loss, [l1, l2])
    g_ref = torch.autograd.grad(coke.coke_loss([l1, l2], [s.detach() for s in soft], y, a), [l1, l2])
    for x, r in zip(g, g_ref):
        torch.testing.assert_close(x, r)


def test_coke_uses_previous_epoch_labels_as_targets(tiny_backbone, method_params):
    model = get_method("coke")(tiny_backbone(), method_params["coke"], 10, 6)
    batch = _batch(n=6)
    model.training_step(batch)
    first = [h.labels.clone() for h in model.heads]
    model.on_epoch_end(0)
    batch["epoch"] = 1
    seen = {}
    original = F.cross_entropy

    def spy(logits, target, *a, **kw):
        seen.setdefault("targets", []).append(target.clone())
        return original(logits, target, *a, **kw)

    try:
        F.cross_entropy = spy
        model.training_step(batch)
    finally:
        F.cross_entropy = original
    # head 0's targets in epoch 2 are the labels stored in epoch 1 for these indices
    assert torch.equal(seen["targets"][0], first[0][batch["index"]])


# --- CueCo-style ------------------------------------------------------------------------------


def test_cueco_centroid_update_formula():
    c = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0]]), dim=1)
    keys = F.normalize(torch.tensor([[1.0, 1.0], [1.0, -1.0], [0.0, 1.0]]), dim=1)
    assign = torch.tensor([0, 0, 1])
    expected0 = F.normalize(0.9 * c[0] + 0.1 * keys[:2].mean(0), dim=0)
    expected1 = F.normalize(0.9 * c[1] + 0.1 * keys[2], dim=0)
    unchanged = c[2].clone()
    cueco.update_centroids(c, keys, assign, 0.9)
    torch.testing.assert_close(c[0], expected0)
    torch.testing.assert_close(c[1], expected1)
    torch.testing.assert_close(c[2], unchanged)


def test_cueco_cluster_pull_hand_computed_and_centroids_detached():
    q = torch.tensor([[2.0, 0.0]], requires_grad=True)
    cents = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    t = 0.5
    loss = cueco.cluster_pull_loss(q, cents, torch.tensor([1]), t)
    assert loss.item() == pytest.approx(-0.0 / t + math.log(math.exp(1 / t) + math.exp(0.0)))
    loss.backward()
    assert q.grad is not None and cents.grad is None


def test_cueco_centroids_start_from_keys_and_stay_unit(tiny_backbone, method_params):
    cfg = dict(method_params["cueco"], num_clusters=5)
    model = get_method("cueco")(tiny_backbone(), cfg, 10, 6)
    assert not model.centroids_ready
    out = model.training_step(_batch())
    assert model.centroids_ready and {"info_nce", "cluster"} <= set(out)
    torch.testing.assert_close(model.centroids.norm(dim=1), torch.ones(5))


def test_tiny_preset_covers_every_method():
    """The tiny preset, as the end-to-end tests run it, has a block for every registered method:
    those it shrinks, and the others from their declared defaults."""
    from clusterssl.config import load_params

    tiny = load_params(PARAMS_YAML, PARAMS_YAML.parent / "config" / "presets" / "tiny.yaml")
    assert set(tiny["method_params"]) == set(paths.all_methods())
    assert tiny["method_params"]["carl"]["projector_out"] == 32 and "pretrain" not in tiny["method_params"]["coke"]
