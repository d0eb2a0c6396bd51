"""AMP and SAM against independent, hand-written references (plain tensor ops, float64)."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from flatness.core.errors import FlatnessError
from flatness.training.optim import AMP, SAM

LR, MOM, WD = 0.1, 0.9, 1e-2


def make_problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    x = torch.randn(8, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (8,), generator=g)
    return model, x, y


def ref_loss(params, x, y):
    w1, b1, w2, b2 = params
    logits = torch.tanh(x @ w1.T + b1) @ w2.T + b2
    logp = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    return -logp[torch.arange(len(y)), y].mean()


def ref_grad(params, x, y):
    leaves = [p.detach().clone().requires_grad_(True) for p in params]
    return list(torch.autograd.grad(ref_loss(leaves, x, y), leaves))


def ref_sgd(params, grads, bufs, lr=LR, mom=MOM, wd=WD, nesterov=True):
    """torch.optim.SGD's documented update, written out (dampening 0)."""
    out, new_bufs = [], []
    for p, g, b in zip(params, grads, bufs):
        d = g + wd * p
        b = d.clone() if b is None else mom * b + d
        step = d + mom * b if nesterov else b
        out.append(p - lr * step)
        new_bufs.append(b)
    return out, new_bufs


def ref_amp_step(params, x, y, eps, inner_lr, inner_iter, ball):
    g0 = ref_grad(params, x, y)
    delta = [torch.zeros_like(p) for p in params]
    for k in range(inner_iter):
        g = g0 if k == 0 else ref_grad([p + d for p, d in zip(params, delta)], x, y)
        delta = [d + inner_lr * gi for d, gi in zip(delta, g)]
        if ball == "tensor":
            delta = [d * min(1.0, eps / float(torch.sqrt((d * d).sum()))) for d in delta]
        else:
            total = float(torch.sqrt(sum((d * d).sum() for d in delta)))
            delta = [d * min(1.0, eps / total) for d in delta]
    return ref_grad([p + d for p, d in zip(params, delta)], x, y), float(ref_loss(params, x, y)), delta


def closure_for(model, opt, x, y, counter=None):
    def closure():
        if counter is not None:
            counter[0] += 1
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return closure


@pytest.mark.parametrize("ball", ["tensor", "global"])
@pytest.mark.parametrize("inner_iter", [1, 2])
@pytest.mark.parametrize("eps", [0.05, 5.0])
def test_amp_matches_reference(ball, inner_iter, eps):
    model, x, y = make_problem()
    params = [p.detach().clone() for p in model.parameters()]
    opt = AMP(
        model.parameters(),
        epsilon=eps,
        inner_lr=0.7,
        inner_iter=inner_iter,
        ball=ball,
        lr=LR,
        momentum=MOM,
        nesterov=True,
        weight_decay=WD,
    )
    bufs = [None] * len(params)
    for _ in range(3):  # several steps: momentum buffers matter too
        calls = [0]
        loss = opt.step(closure_for(model, opt, x, y, calls))
        assert calls[0] == 1 + inner_iter  # the first inner step reuses g0
        g, ref_l, delta = ref_amp_step(params, x, y, eps, 0.7, inner_iter, ball)
        assert float(loss.detach()) == pytest.approx(ref_l, abs=1e-12)
        # the step's ‖δ‖ (metrics.jsonl's perturbation_norm), L2 over all parameters
        assert float(opt.perturbation_norm) == pytest.approx(float(torch.sqrt(sum((d * d).sum() for d in delta))))
        params, bufs = ref_sgd(params, g, bufs)
        for p, q in zip(model.parameters(), params):
            torch.testing.assert_close(p.detach(), q, rtol=1e-10, atol=1e-12)


def test_amp_tiny_epsilon_equals_sgd():
    model, x, y = make_problem(1)
    twin = copy.deepcopy(model)
    amp = AMP(model.parameters(), epsilon=1e-12, lr=LR, momentum=MOM, weight_decay=WD)
    sgd = torch.optim.SGD(twin.parameters(), lr=LR, momentum=MOM, weight_decay=WD)
    for _ in range(3):
        amp.step(closure_for(model, amp, x, y))
        sgd.zero_grad()
        F.cross_entropy(twin(x), y).backward()
        sgd.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_matches_definition(adaptive):
    model, x, y = make_problem(2)
    params = [p.detach().clone() for p in model.parameters()]
    rho = 0.3
    opt = SAM(model.parameters(), rho=rho, adaptive=adaptive, lr=LR, momentum=MOM, nesterov=True, weight_decay=WD)
    bufs = [None] * len(params)
    for _ in range(2):
        loss = opt.step(closure_for(model, opt, x, y))
        assert float(loss.detach()) == pytest.approx(float(ref_loss(params, x, y)), abs=1e-12)
        g = ref_grad(params, x, y)
        t = [p.abs() if adaptive else torch.ones_like(p) for p in params]
        norm = torch.sqrt(sum(((ti * gi) ** 2).sum() for ti, gi in zip(t, g)))
        delta = [rho * ti * ti * gi / norm for ti, gi in zip(t, g)]
        g_adv = ref_grad([p + d for p, d in zip(params, delta)], x, y)
        assert float(opt.perturbation_norm) == pytest.approx(float(torch.sqrt(sum((d * d).sum() for d in delta))))
        params, bufs = ref_sgd(params, g_adv, bufs)
        for p, q in zip(model.parameters(), params):
            torch.testing.assert_close(p.detach(), q, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize(
    "make", [lambda ps: AMP(ps, lr=0.1, momentum=0.9, epsilon=0.1), lambda ps: SAM(ps, lr=0.1, momentum=0.9, rho=0.1)]
)
def test_scheduler_and_state_dict_round_trip(make):
    model, x, y = make_problem(3)
    opt = make(model.parameters())
    assert opt.param_groups is opt.base_optimizer.param_groups
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[1], gamma=0.1)
    opt.step(closure_for(model, opt, x, y))
    sched.step()
    assert opt.base_optimizer.param_groups[0]["lr"] == pytest.approx(0.01)
    state = copy.deepcopy(opt.state_dict())
    sched_state = sched.state_dict()
    twin = copy.deepcopy(model)
    opt2 = make(twin.parameters())
    sched2 = torch.optim.lr_scheduler.MultiStepLR(opt2, milestones=[1], gamma=0.1)
    opt2.load_state_dict(state)
    sched2.load_state_dict(sched_state)
    assert opt2.param_groups is opt2.base_optimizer.param_groups
    assert opt2.state is opt2.base_optimizer.state
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.01)
    assert all("momentum_buffer" in opt2.state[p] for p in twin.parameters())
    for _ in range(2):
        opt.step(closure_for(model, opt, x, y))
        sched.step()
        opt2.step(closure_for(twin, opt2, x, y))
        sched2.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)


def test_grad_clip_applies_to_base_step_only():
    model, x, y = make_problem(4)
    params = [p.detach().clone() for p in model.parameters()]
    clip = 1e-3
    opt = AMP(model.parameters(), epsilon=0.5, inner_lr=1.0, lr=LR, grad_clip=clip)
    opt.step(closure_for(model, opt, x, y))
    g, _, _ = ref_amp_step(params, x, y, 0.5, 1.0, 1, "tensor")  # δ built from unclipped gradients
    total = float(torch.sqrt(sum((gi**2).sum() for gi in g)))
    expected = [p - LR * gi * (clip / (total + 1e-6)) for p, gi in zip(params, g)]
    for p, q in zip(model.parameters(), expected):
        torch.testing.assert_close(p.detach(), q, rtol=1e-8, atol=1e-12)


def test_grad_reduce_called_on_perturbation_gradients():
    model, x, y = make_problem(5)
    seen = []
    opt = AMP(model.parameters(), epsilon=0.1, inner_iter=2, lr=0.1, grad_reduce=lambda gs: seen.append(len(gs)))
    opt.step(closure_for(model, opt, x, y))
    assert seen == [4, 4]  # g0 and the second inner pass; not the final (base-step) gradient
    seen.clear()
    opt = SAM(model.parameters(), rho=0.1, lr=0.1, grad_reduce=lambda gs: seen.append(len(gs)))
    opt.step(closure_for(model, opt, x, y))
    assert seen == [4]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(epsilon=0),
        dict(epsilon=-1),
        dict(inner_iter=0),
        dict(inner_iter=1.5),
        dict(inner_lr=0),
        dict(ball="box"),
        dict(grad_clip=0),
    ],
)
def test_amp_bad_args(kwargs):
    model, _, _ = make_problem()
    with pytest.raises(FlatnessError):
        AMP(model.parameters(), lr=0.1, **kwargs)


@pytest.mark.parametrize("kwargs", [dict(rho=0), dict(rho=-0.1), dict(base_optimizer="sgd")])
def test_sam_bad_args(kwargs):
    model, _, _ = make_problem()
    with pytest.raises(FlatnessError):
        SAM(model.parameters(), lr=0.1, **kwargs)


def test_step_needs_closure():
    model, _, _ = make_problem()
    with pytest.raises(FlatnessError):
        AMP(model.parameters(), lr=0.1).step()
