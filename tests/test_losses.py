"""Losses and building blocks of the methods: CARL's consistency/entropy terms, NT-Xent,
Sinkhorn, the EMA teacher, the queue, and forward/backward smoke tests of CARL and SimCLR."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from clusterssl.methods import carl, common
from clusterssl.methods.base import get_method


# --- CARL: consistency ---------------------------------------------------------------------
def test_consistency_loss_hand_computed_2x3():
    p = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    q = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    # p.q: 0.42 + 0.06 + 0.01 = 0.49 ; 0.02 + 0.02 + 0.48 = 0.52
    expected = -(math.log(0.49) + math.log(0.52)) / 2
    got = carl.consistency_loss(torch.log(p), torch.log(q))
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # and against a direct formula on random inputs
    torch.manual_seed(0)
    lp = F.log_softmax(torch.randn(5, 7), dim=1)
    t = F.softmax(torch.randn(5, 7), dim=1)
    ref = -torch.log((lp.exp() * t).sum(1)).mean()
    assert carl.consistency_loss(lp, torch.log(t)).item() == pytest.approx(ref.item(), rel=1e-5)


def test_consistency_loss_is_exact_on_unbounded_logits():
    """Confident targets (unbounded logits, low temperatures) against the formula in float64:
    no clamp caps a sample's loss (clamping q at 1e-12 before the log is 18 off here)."""
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(64, 50, generator=g) * 2, torch.randn(64, 50, generator=g) * 2
    lp, lq = F.log_softmax(student / 0.1, dim=1), F.log_softmax(teacher / 0.03, dim=1)
    # the formula in float64: log(p.q) = log sum_k exp(log p_k + log q_k), log p and log q exact
    exact = -torch.logsumexp(F.log_softmax(student.double() / 0.1, 1) + F.log_softmax(teacher.double() / 0.03, 1), 1).mean().item()
    assert carl.consistency_loss(lp, lq).item() == pytest.approx(exact, abs=1e-5)
    clamped = -torch.logsumexp(lp + torch.log(lq.exp().clamp_min(1e-12)), dim=1).mean().item()
    assert abs(clamped - exact) > 10  # the clamp caps each sample's loss


def test_collapse_term_averages_student_and_detached_target_views():
    """CARP's batch-mean assignment: all student views and the target views together; no
    gradient reaches the targets through it."""
    logits, targets = _views(v=3)
    targets = [t.clone().requires_grad_(True) for t in targets]
    logits = [s.clone().requires_grad_(True) for s in logits]
    out = carl.carl_loss(logits, targets, 0.1, 1.0)
    students = [F.softmax(s / 0.1, dim=1) for s in logits]
    both = carl.entropy_regulariser(torch.cat(students + [t.exp() for t in targets])).item()
    only_students = carl.entropy_regulariser(torch.cat(students)).item()
    assert out["entropy_kl"].item() == pytest.approx(both, rel=1e-5) and abs(both - only_students) > 1e-3
    out["loss"].backward()
    assert all(t.grad is None for t in targets) and all(s.grad.abs().sum() > 0 for s in logits)


def test_consistency_loss_zero_for_identical_one_hot():
    onehot = torch.eye(4)[[0, 2, 3, 1]]
    logp = torch.where(onehot > 0, torch.zeros(()), torch.full((), -1e4))
    assert carl.consistency_loss(logp, logp).item() == pytest.approx(0.0, abs=1e-6)
    # the same from logits at a very low temperature
    logits = torch.randn(6, 5) * 3
    logp = F.log_softmax(logits / 1e-3, dim=1)
    assert carl.consistency_loss(logp, logp).item() == pytest.approx(0.0, abs=1e-4)


@pytest.mark.parametrize("k", [2, 5, 100])
def test_consistency_loss_uniform_is_log_k(k):
    p = torch.full((3, k), 1.0 / k)
    assert carl.consistency_loss(torch.log(p), torch.log(p)).item() == pytest.approx(math.log(k), rel=1e-5)


def test_consistency_loss_no_gradient_into_target():
    torch.manual_seed(0)
    logits = torch.randn(4, 6, requires_grad=True)
    target = F.log_softmax(torch.randn(4, 6), dim=1).requires_grad_(True)
    carl.consistency_loss(F.log_softmax(logits, dim=1), target).backward()
    assert target.grad is None or torch.count_nonzero(target.grad) == 0
    assert logits.grad is not None and logits.grad.abs().sum() > 0


# --- CARL: entropy regulariser ---------------------------------------------------------------
def test_entropy_regulariser_zero_for_uniform_usage():
    k = 6
    perm = torch.eye(k)[torch.randperm(k)]
    assert carl.entropy_regulariser(perm).item() == pytest.approx(0.0, abs=1e-6)
    # not one-hot, but balanced on average
    probs = torch.tensor([[0.7, 0.3], [0.3, 0.7]])
    assert carl.entropy_regulariser(probs).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("k", [2, 10])
def test_entropy_regulariser_collapse_is_log_k(k):
    probs = torch.zeros(7, k)
    probs[:, 0] = 1
    assert carl.entropy_regulariser(probs).item() == pytest.approx(math.log(k), rel=1e-6)


def test_entropy_regulariser_nonnegative_and_matches_kl():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        probs = F.softmax(torch.randn(8, 5, generator=g) * 3, dim=1)
        val = carl.entropy_regulariser(probs).item()
        assert val >= -1e-6
        pbar = probs.mean(0)
        kl = (pbar * torch.log(pbar * 5)).sum().item()
        assert val == pytest.approx(kl, abs=1e-5)


# --- CARL: full loss ---------------------------------------------------------------------------
def _views(n=6, k=5, v=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = [torch.randn(n, k, generator=g) for _ in range(v)]
    targets = [F.log_softmax(torch.randn(n, k, generator=g) / 0.5, dim=1) for _ in range(2)]
    return logits, targets


def test_carl_loss_keys_and_composition():
    logits, targets = _views()
    for w in (0.0, 0.5, 2.0):
        out = carl.carl_loss(logits, targets, temperature=0.1, entropy_weight=w)
        assert set(out) == {"loss", "consistency", "entropy_kl"}
        assert out["loss"].item() == pytest.approx(out["consistency"].item() + w * out["entropy_kl"].item(), rel=1e-5)
        assert torch.isfinite(out["loss"])


def test_carl_loss_hand_computed_two_views():
    logits, targets = _views()
    t = 0.1
    lp = [F.log_softmax(s / t, dim=1) for s in logits]
    cons = (carl.consistency_loss(lp[0], targets[1]) + carl.consistency_loss(lp[1], targets[0])) / 2
    ent = carl.entropy_regulariser(torch.cat([x.exp() for x in lp + targets]))
    out = carl.carl_loss(logits, targets, t, 0.7)
    assert out["consistency"].item() == pytest.approx(cons.item(), rel=1e-5)
    assert out["entropy_kl"].item() == pytest.approx(ent.item(), rel=1e-5)


def test_carl_loss_symmetric_over_views():
    logits, targets = _views()
    a = carl.carl_loss(logits, targets, 0.1, 1.0)
    b = carl.carl_loss(logits[::-1], targets[::-1], 0.1, 1.0)
    for key in a:
        assert a[key].item() == pytest.approx(b[key].item(), rel=1e-5)


def test_carl_loss_with_local_views():
    logits, targets = _views(v=3)
    t = 0.1
    out = carl.carl_loss(logits, targets, t, 1.0)
    lp = [F.log_softmax(s / t, dim=1) for s in logits]
    # ordered pairs (student i, target j), i != j: (0,1), (1,0), (2,0), (2,1)
    pairs = [(0, 1), (1, 0), (2, 0), (2, 1)]
    cons = sum(carl.consistency_loss(lp[i], targets[j]) for i, j in pairs) / len(pairs)
    assert out["consistency"].item() == pytest.approx(cons.item(), rel=1e-5)
    ent = carl.entropy_regulariser(torch.cat([x.exp() for x in lp + targets]))
    assert out["entropy_kl"].item() == pytest.approx(ent.item(), rel=1e-5)
    assert torch.isfinite(out["loss"])


# --- NT-Xent --------------------------------------------------------------------------------
def nt_xent_reference(z1, z2, t):
    z = F.normalize(torch.cat([z1, z2]).double(), dim=1)
    n = len(z1)
    losses = []
    for i in range(2 * n):
        pos = (i + n) % (2 * n)
        num = torch.exp(z[i] @ z[pos] / t)
        den = sum(torch.exp(z[i] @ z[j] / t) for j in range(2 * n) if j != i)
        losses.append(-torch.log(num / den))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("n,d,t", [(2, 3, 0.5), (5, 4, 0.2), (8, 16, 0.1)])
def test_nt_xent_matches_reference(n, d, t):
    g = torch.Generator().manual_seed(n)
    z1, z2 = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    assert common.nt_xent(z1, z2, t).item() == pytest.approx(nt_xent_reference(z1, z2, t).item(), rel=1e-4)


def test_nt_xent_lower_for_identical_views():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    assert common.nt_xent(z1, z1.clone(), 0.2) < common.nt_xent(z1, z2, 0.2)


def test_nt_xent_scale_invariant():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    base = common.nt_xent(z1, z2, 0.3).item()
    for c in (0.01, 3.0, 100.0):
        assert common.nt_xent(c * z1, c * z2, 0.3).item() == pytest.approx(base, rel=1e-4)


def test_nt_xent_single_pair_is_zero():
    z = torch.randn(1, 4)
    assert common.nt_xent(z, z.clone(), 0.1).item() == pytest.approx(0.0, abs=1e-6)


def test_nt_xent_gradient_flows():
    z1 = torch.randn(4, 3, requires_grad=True)
    z2 = torch.randn(4, 3, requires_grad=True)
    common.nt_xent(z1, z2, 0.2).backward()
    assert z1.grad.abs().sum() > 0 and z2.grad.abs().sum() > 0


# --- Sinkhorn -------------------------------------------------------------------------------
@pytest.mark.parametrize("n,k", [(16, 4), (12, 3), (10, 10)])
def test_sinkhorn_marginals(n, k):
    g = torch.Generator().manual_seed(0)
    scores = (torch.randn(n, k, generator=g) * 0.1).requires_grad_(True)
    q = common.sinkhorn(scores, epsilon=0.05, iterations=50)
    assert q.shape == (n, k)
    assert not q.requires_grad
    assert (q >= 0).all()
    torch.testing.assert_close(q.sum(1), torch.ones(n), atol=1e-3, rtol=0)
    torch.testing.assert_close(q.sum(0), torch.full((k,), n / k), atol=1e-3, rtol=0)


def test_sinkhorn_prefers_high_scores():
    # a clear, balanced preference: sample i likes prototype i % k
    n, k = 8, 4
    scores = torch.full((n, k), -1.0)
    scores[torch.arange(n), torch.arange(n) % k] = 1.0
    q = common.sinkhorn(scores, epsilon=0.05, iterations=10)
    assert torch.equal(q.argmax(1), torch.arange(n) % k)


# --- EMA teacher -----------------------------------------------------------------------------
def test_ema_momentum_schedule():
    assert common.ema_momentum(0.99, 0) == pytest.approx(0.99)
    assert common.ema_momentum(0.99, 1) == pytest.approx(1.0)
    assert common.ema_momentum(0.99, 0.5) == pytest.approx(0.995)
    values = [common.ema_momentum(0.9, p / 20) for p in range(21)]
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert values[0] < values[-1]
    # progress is clamped to [0, 1]
    assert common.ema_momentum(0.9, -1) == pytest.approx(0.9)
    assert common.ema_momentum(0.9, 2) == pytest.approx(1.0)


def test_ema_teacher_update():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    teacher = common.EMATeacher(student, base_momentum=0.9)
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in student.parameters())
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
        student[1].running_mean.fill_(0.25)
    old = [p.clone() for p in teacher.parameters()]
    m = teacher.update(student, 0.3)
    assert m == pytest.approx(common.ema_momentum(0.9, 0.3))
    for t, o, s in zip(teacher.parameters(), old, student.parameters()):
        torch.testing.assert_close(t, m * o + (1 - m) * s)
        assert not t.requires_grad
    torch.testing.assert_close(teacher.module[1].running_mean, torch.full((4,), 0.25))
    # at progress 1 the momentum is 1: the teacher no longer moves
    frozen = [p.clone() for p in teacher.parameters()]
    teacher.update(student, 1.0)
    for t, f in zip(teacher.parameters(), frozen):
        torch.testing.assert_close(t, f)


def test_ema_teacher_is_a_copy():
    student = nn.Linear(2, 2)
    teacher = common.EMATeacher(student, 0.5)
    with torch.no_grad():
        student.weight.add_(1.0)
    assert not torch.equal(teacher.module.weight, student.weight)


# --- Queue ----------------------------------------------------------------------------------
def test_queue_partial_fill():
    q = common.Queue(5, 2)
    assert q.get().shape == (0, 2)
    q.push(torch.ones(2, 2))
    assert q.get().shape == (2, 2)
    q.push(2 * torch.ones(1, 2))
    torch.testing.assert_close(q.get()[:, 0], torch.tensor([1.0, 1.0, 2.0]))


def test_queue_wraps_fifo():
    q = common.Queue(4, 1)
    for start in (0, 3):  # push 0,1,2 then 3,4,5: the oldest two (0, 1) are overwritten
        q.push(torch.arange(start, start + 3, dtype=torch.float32).view(-1, 1))
    items = q.get()
    assert items.shape == (4, 1)
    assert sorted(items.view(-1).tolist()) == [2.0, 3.0, 4.0, 5.0]
    assert int(q.ptr) == 2 and int(q.filled) == 4
    # the next push overwrites the oldest remaining item (2)
    q.push(torch.tensor([[6.0]]))
    assert sorted(q.get().view(-1).tolist()) == [3.0, 4.0, 5.0, 6.0]


def test_queue_single_push_larger_than_size_keeps_newest():
    q = common.Queue(4, 1)
    q.push(torch.arange(6, dtype=torch.float32).view(-1, 1))
    assert sorted(q.get().view(-1).tolist()) == [2.0, 3.0, 4.0, 5.0]


# --- methods: forward + backward smoke tests -----------------------------------------------
def _batch(n=4, views=2, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"views": [torch.randn(n, 1, size, size, generator=g) for _ in range(views)], "index": torch.arange(n)}


def _backbone_grad(model):
    grads = [p.grad for p in model.backbone.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    assert all(torch.isfinite(g).all() for g in grads)
    return sum(g.abs().sum() for g in grads)


@pytest.mark.parametrize("target", ["ema", "stopgrad"])
def test_carl_forward_backward(tiny_backbone, method_params, target):
    cfg = dict(method_params["carl"], target=target)
    model = get_method("carl")(tiny_backbone(), cfg, 10, 64)
    model.train()
    out = model.training_step(_batch())
    assert {"loss", "consistency", "entropy_kl"} <= set(out)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert _backbone_grad(model) > 0
    assert model.head.projector[0].weight.grad is not None
    if target == "ema":
        assert model.teacher is not None
        assert all(p.grad is None for p in model.teacher.parameters())
        assert all(not p.requires_grad for p in model.teacher.parameters())
        # teacher parameters are not handed to the optimiser
        group_ids = {id(p) for g in model.parameter_groups() for p in g["params"]}
        assert not group_ids & {id(p) for p in model.teacher.parameters()}
    else:
        assert model.teacher is None


def test_carl_with_local_views(tiny_backbone, method_params):
    model = get_method("carl")(tiny_backbone(), method_params["carl"], 10, 64)
    batch = _batch()
    batch["local_views"] = [torch.randn(4, 1, 4, 4) for _ in range(2)]
    out = model.training_step(batch)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert _backbone_grad(model) > 0


def test_carl_ema_teacher_follows_student(tiny_backbone, method_params):
    cfg = dict(method_params["carl"], target="ema")
    model = get_method("carl")(tiny_backbone(), cfg, 10, 64)
    opt = torch.optim.SGD([p for g in model.parameter_groups() for p in g["params"]], lr=0.1)
    teacher_before = [p.clone() for p in model.teacher.parameters()]
    model.training_step(_batch())["loss"].backward()
    opt.step()
    student_after = [p.detach().clone() for p in carl._Net(model.backbone, model.head).parameters()]
    model.after_optimizer_step(0.25)
    m = common.ema_momentum(cfg["ema_momentum"], 0.25)
    changed = False
    for t, old, s in zip(model.teacher.parameters(), teacher_before, student_after):
        torch.testing.assert_close(t, m * old + (1 - m) * s)
        changed |= not torch.equal(t, old)
        assert t.grad is None
    assert changed
    # eval_encoder: online backbone by default, the teacher's when asked
    assert model.eval_encoder() is model.backbone
    model.cfg = dict(cfg, eval_teacher=True)
    assert model.eval_encoder() is model.teacher.module.backbone


def test_simclr_forward_backward(tiny_backbone, method_params):
    model = get_method("simclr")(tiny_backbone(), method_params["simclr"], 10, 64)
    out = model.training_step(_batch())
    assert torch.isfinite(out["loss"])
    assert out["nt_xent"].item() == pytest.approx(out["loss"].item())
    out["loss"].backward()
    assert _backbone_grad(model) > 0


def test_get_method_unknown_names_choices():
    from clusterssl.io import UserError

    with pytest.raises(UserError, match="nosuch") as info:
        get_method("nosuch")
    assert "carl" in str(info.value) and "simclr" in str(info.value)


# --- CARP-style random partitions ----------------------------------------------------------
def test_partitioned_loss_is_the_mean_over_blocks():
    from clusterssl.methods.carl import carl_loss, partition

    torch.manual_seed(0)
    s1, s2, t1, t2 = (torch.randn(6, 8) for _ in range(4))
    blocks = torch.randperm(8).view(2, 4)
    q = lambda t, b: torch.softmax(partition(t, b) / 0.05, dim=-1)
    whole = carl_loss([partition(s1, blocks), partition(s2, blocks)], [q(t1, blocks), q(t2, blocks)], 0.1, 1.0)
    per_block = [
        carl_loss([s1[:, b], s2[:, b]], [torch.softmax(t1[:, b] / 0.05, -1), torch.softmax(t2[:, b] / 0.05, -1)], 0.1, 1.0)
        for b in blocks
    ]
    for key in ("loss", "consistency", "entropy_kl"):
        assert torch.allclose(whole[key], sum(r[key] for r in per_block) / 2, atol=1e-6), key


def test_random_blocks_cover_distinct_prototypes():
    from clusterssl.methods.carl import CARL

    cfg = {"num_prototypes": 10, "partition_size": 3}
    blocks = CARL.random_blocks(type("M", (), {"cfg": cfg})(), "cpu")
    assert blocks.shape == (3, 3) and blocks.unique().numel() == 9
    assert CARL.random_blocks(type("M", (), {"cfg": {"num_prototypes": 10, "partition_size": None}})(), "cpu") is None
