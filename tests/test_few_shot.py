"""The few-shot task's science, each part against an independent reference: the SVG path
parser against Bézier points written out, the renderer and its cache, task sampling, the
second-order meta-gradient against a plain autograd loop and finite differences, the adapted
learner against plain SGD, MAML-stop's loss against the geometric posterior written out, real
adaptive cost, the Omniglot loader and the bad inputs that exit 2."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stopwise.cli import main
from stopwise.config import DataError
from stopwise.experiments import get_experiment, resolve_config
from stopwise.inference import ScoreThreshold, run_adaptive
from stopwise.tasks.few_shot.data import (
    ClassSplit,
    glyph_splits,
    omniglot_characters,
    omniglot_problem,
    omniglot_splits,
    parse_path,
    render_glyph,
    sample_classification_tasks,
    sample_sinusoid_tasks,
    stroke_paths,
)
from stopwise.tasks.few_shot.experiment import jobs as few_shot_jobs
from stopwise.tasks.few_shot.methods import (
    adapt_group,
    adapt_task,
    build_models,
    maml_losses,
    maml_stop_losses,
    sample_step,
)
from stopwise.tasks.few_shot.models import (
    AdaptedLearner,
    Conv4,
    SetPolicy,
    SineMLP,
    SupportLossStop,
    measure_task,
    task_loss,
)

torch.set_num_threads(1)


def batched(task):
    return tuple(t.unsqueeze(0) for t in task)


def maml_task_loss(learner, task, steps, lr):
    """The MAML loss of one task (a group of one)."""
    return maml_losses(learner, batched(task), steps, lr)[0]


# ---------------------------------------------------------------- SVG paths


def cubic(p0, p1, p2, p3, s):
    """A cubic Bézier point written out from its Bernstein form."""
    return tuple(
        (1 - s) ** 3 * a + 3 * (1 - s) ** 2 * s * b + 3 * (1 - s) * s**2 * c + s**3 * d
        for a, b, c, d in zip(p0, p1, p2, p3, strict=True)
    )


def test_absolute_and_relative_cubics_give_the_bezier_points():
    absolute = parse_path("M10,20C20,20,30,40,40,50", points_per_curve=4)
    relative = parse_path("M10,20c10,0,20,20,30,30", points_per_curve=4)
    expected = [(10.0, 20.0)] + [
        cubic((10, 20), (20, 20), (30, 40), (40, 50), s) for s in (0.25, 0.5, 0.75, 1.0)
    ]
    for got in (absolute, relative):
        assert len(got) == 1
        np.testing.assert_allclose(got[0], expected, atol=1e-12)


def test_smooth_cubic_reflects_the_previous_control_point_and_numbers_need_no_separators():
    # KanjiVG writes "c" pairs with implicit repetition and numbers like "-1.5-2" and ".5.5".
    path = parse_path("M0,0c0,10,10,10,10,0s10,-10,10,0", points_per_curve=2)[0]
    # the S curve starts at (10, 0); its first control point reflects (10, 10) to (10, -10)
    np.testing.assert_allclose(path[3], cubic((10, 0), (10, -10), (20, -10), (20, 0), 0.5))
    np.testing.assert_allclose(path[-1], (20, 0))
    repeated = parse_path("M0,0c1-1.5.5.5,2,2 1,1,1,1,1,1", points_per_curve=1)[0]
    np.testing.assert_allclose(repeated, [(0, 0), (2, 2), (3, 3)])


def test_move_starts_a_new_polyline_and_extra_pairs_are_lines():
    lines = parse_path("M0,0 10,0 10,10 m5,5 l1,1 z", points_per_curve=3)
    assert lines[0] == [(0, 0), (10, 0), (10, 10)]
    assert lines[1] == [(15, 15), (16, 16), (15, 15)]


def test_every_kanjivg_stroke_parses():
    from stopwise.tasks.few_shot.data import kanji_files

    files = kanji_files()
    assert len(files) == 6703
    for path in files[::97]:
        for d in stroke_paths(path.read_text(encoding="utf-8")):
            (line,) = parse_path(d)
            assert len(line) > 1 and all(-20 < v < 130 for point in line for v in point)


def test_the_docs_give_the_number_of_characters_that_qualify():
    """docs/few_shot.md's count of the characters with 1–9 strokes is the config's rule on the
    installed kanjivg, and both equal a count by an XML parser (a stroke: a <path> with data)."""
    import re
    import xml.etree.ElementTree as ET

    from stopwise.tasks.few_shot.config import _eligible_characters
    from stopwise.tasks.few_shot.data import kanji_files

    def strokes(path):
        return sum(e.tag.endswith("path") and bool(e.get("d")) for e in ET.parse(path).iter())

    independent = sum(1 <= strokes(path) <= 9 for path in kanji_files())
    docs = (Path(__file__).resolve().parent.parent / "docs" / "few_shot.md").read_text()
    stated = re.search(r"Characters with 1–9 strokes qualify \(([\d,]+) of them", docs)
    assert int(stated[1].replace(",", "")) == independent == _eligible_characters(1, 9)


# ---------------------------------------------------------------- the renderer


def test_an_undistorted_horizontal_stroke_inks_the_middle_rows_only():
    stroke = [[np.array([[10.0, 54.5], [99.0, 54.5]])]]
    image = render_glyph(stroke, None, size=28, width=8.0)
    assert image.dtype == np.uint8 and image.shape == (28, 28)
    assert image[13:15, 5:23].min() > 150  # the line, 2 px wide at row 14
    assert image[:12].max() == 0 and image[16:].max() == 0
    # ink mass: a pen of 8/109 of the side along 89/109 of it, plus two round caps
    side = 28 / 109
    expected = (8 * side) * (89 * side) + math.pi * (4 * side) ** 2
    assert abs(image.sum() / 255 - expected) < 0.05 * expected


SMALL = {
    "characters": [6, 2, 3],
    "min_strokes": 2,
    "max_strokes": 4,
    "drawers": 4,
    "split_seed": 3,
    "rotations": True,
    "size": 28,
    "rotation_deg": 10.0,
    "scale": 0.1,
    "shear": 0.1,
    "shift": 4.0,
    "stroke_noise": 3.0,
    "stroke_offset": 1.0,
    "stroke_width": 8.0,
    "width_jitter": 0.2,
}


def test_glyph_splits_are_cached_by_settings_and_every_hand_differs(tmp_path):
    train, val, test = glyph_splits(SMALL, str(tmp_path))
    assert [s.images.shape for s in (train, val, test)] == [
        (6, 4, 28, 28),
        (2, 4, 28, 28),
        (3, 4, 28, 28),
    ]
    assert train.num_classes == 24 and train.rotations
    files = list(tmp_path.glob("glyphs-*.npz"))
    assert len(files) == 1
    again = glyph_splits(SMALL, str(tmp_path))  # read back from the cache
    assert torch.equal(again[0].images, train.images)
    images = train.images.double()
    for c in range(6):  # every drawer draws a different image of the character
        for a in range(4):
            for b in range(a):
                assert not torch.equal(images[c, a], images[c, b])
    # a different hand setting renders anew under another name
    glyph_splits({**SMALL, "stroke_noise": 1.0}, str(tmp_path))
    assert len(list(tmp_path.glob("glyphs-*.npz"))) == 2


# ---------------------------------------------------------------- task sampling


def coded_split(characters=5, drawers=6):
    """Images whose pixels encode (character, drawer), with an asymmetric mark for rotations."""
    images = torch.zeros(characters, drawers, 8, 8, dtype=torch.uint8)
    for c in range(characters):
        for d in range(drawers):
            images[c, d, 0, 0] = 10 + c
            images[c, d, 0, 1] = 100 + d
    return ClassSplit(images, rotations=True)


def decode(image):
    """``(character, drawer, corner)`` of a coded image (see :func:`coded_split`): the corner
    where the character code sits tells the rotation."""
    pixels = (image * 255).round().long()
    character = int(pixels[(pixels >= 10) & (pixels < 100)].item()) - 10
    drawer = int(pixels[pixels >= 100].item()) - 100
    corner = tuple((pixels == character + 10).nonzero()[0].tolist())
    return character, drawer, corner


def test_classification_tasks_have_distinct_classes_drawers_and_one_k_each():
    split = coded_split()
    g = torch.Generator().manual_seed(0)
    tasks = sample_classification_tasks(split, 40, ways=4, shots=(1, 3), query=2, generator=g)
    assert set(tasks.shots.tolist()) == {1, 2, 3}
    assert torch.equal(tasks.support_n, 4 * tasks.shots)
    corners = set()
    for i in range(len(tasks)):
        sx, sy, qx, qy = tasks.task(i)
        k = int(tasks.shots[i])
        assert torch.equal(sy, torch.arange(4).repeat_interleave(k))
        assert torch.equal(qy, torch.arange(4).repeat_interleave(2))
        classes = []
        for label in range(4):
            codes = [decode(img[0]) for img in torch.cat([sx[sy == label], qx[qy == label]])]
            assert len({(c, corner) for c, _, corner in codes}) == 1  # one class per label
            assert len({d for _, d, _ in codes}) == k + 2  # support and query: distinct drawers
            classes.append((codes[0][0], codes[0][2]))
            corners.add(codes[0][2])
        assert len(set(classes)) == 4  # the classes of a task are distinct
    assert len(corners) == 4  # all four rotations occur


def test_rotated_classes_are_the_rotated_images():
    split = coded_split(characters=1, drawers=3)
    g = torch.Generator().manual_seed(1)
    tasks = sample_classification_tasks(split, 3, ways=4, shots=(1, 1), query=1, generator=g)
    for i in range(len(tasks)):
        sx, sy, _, _ = tasks.task(i)
        for img in sx[:, 0]:
            _, drawer, _ = decode(img)
            original = split.images[0, drawer].float() / 255
            assert any(torch.equal(torch.rot90(original, r, dims=(0, 1)), img) for r in range(4))
        # the single character's four rotations are the task's four classes
        assert len({decode(img)[2] for img in sx[:, 0]}) == 4


def test_sinusoid_tasks_follow_the_generating_function():
    g = torch.Generator().manual_seed(0)
    tasks = sample_sinusoid_tasks(200, (1, 10), 7, g)
    assert tasks.support_x.shape == (200, 10, 1) and tasks.query_x.shape == (200, 7, 1)
    assert torch.equal(tasks.support_n, tasks.shots)
    for i in range(5):
        sx, sy, qx, qy = tasks.task(i)
        # two points pin down A and φ of A sin(x − φ); check all the others against them
        x, y = torch.cat([sx[:, 0], qx[:, 0]]), torch.cat([sy, qy])
        design = torch.stack([torch.sin(x), -torch.cos(x)], 1).double()
        coef = torch.linalg.lstsq(design, y.double().unsqueeze(1)).solution
        torch.testing.assert_close(design @ coef, y.double().unsqueeze(1), atol=1e-5, rtol=0)
        amplitude = float(coef.norm())
        assert 0.1 - 1e-5 <= amplitude <= 5 + 1e-5
    assert tasks.support_y[tasks.support_x[..., 0] == 0].abs().max() == 0  # padding is zero
    assert (tasks.query_x.abs() <= 5).all()


# ---------------------------------------------------------------- MAML


def plain_mlp(params, x):
    """The sine MLP written out with explicit weights."""
    h = torch.relu(x @ params[0].T + params[1])
    h = torch.relu(h @ params[2].T + params[3])
    return (h @ params[4].T + params[5]).squeeze(-1)


def plain_maml_loss(params, task, steps, lr, create_graph=True):
    """MAML written with torch.autograd.grad on a list of tensors (the reference); without
    ``create_graph`` each step is detached (first-order MAML's treatment of the inner updates)."""
    sx, sy, qx, qy = task
    fast = list(params)
    for _ in range(steps):
        loss = ((plain_mlp(fast, sx) - sy) ** 2).mean()
        grads = torch.autograd.grad(loss, fast, create_graph=create_graph)
        fast = [p - lr * g for p, g in zip(fast, grads, strict=True)]
        if not create_graph:
            fast = [p.detach().requires_grad_() for p in fast]
    return ((plain_mlp(fast, qx) - qy) ** 2).mean(), fast


def sine_task(seed, k=5):
    g = torch.Generator().manual_seed(seed)
    tasks = sample_sinusoid_tasks(1, (k, k), 6, g)
    return tuple(t.double() for t in tasks.task(0))


def test_second_order_meta_gradient_matches_plain_autograd_and_finite_differences():
    torch.manual_seed(0)
    learner = SineMLP((8, 8)).double()
    task = sine_task(0)
    steps, lr = 3, 0.05
    loss = maml_task_loss(learner, task, steps, lr)
    grads = torch.autograd.grad(loss, list(learner.parameters()))
    params = [p.detach().clone().requires_grad_() for p in learner.parameters()]
    reference, _ = plain_maml_loss(params, task, steps, lr)
    torch.testing.assert_close(loss, reference)
    expected = torch.autograd.grad(reference, params)
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    # central finite differences of the meta-loss on a few weights of the first layer
    for index in [(0, 0), (3, 0), (7, 0)]:
        eps, values = 1e-6, []
        for sign in (1, -1):
            moved = [p.detach().clone() for p in params]
            moved[0][index] += sign * eps
            loss_value = plain_maml_loss([p.requires_grad_() for p in moved], task, steps, lr)[0]
            values.append(float(loss_value.detach()))
        numeric = (values[0] - values[1]) / (2 * eps)
        assert math.isclose(float(grads[0][index]), numeric, rel_tol=1e-5, abs_tol=1e-9)
    # the first-order approximation (gradient at θ_T) differs: the test can see a missing order
    first, fast = plain_maml_loss(params, task, steps, lr, create_graph=False)
    first_order = torch.autograd.grad(first, fast)
    assert not torch.allclose(first_order[0], grads[0], rtol=1e-3)


def test_conv4_batch_statistics_and_second_order_through_batchnorm():
    torch.manual_seed(0)
    learner = Conv4(ways=3, width=4).double()
    x = torch.randn(6, 1, 28, 28, dtype=torch.float64)
    logits, features = learner(x)
    assert logits.shape == (6, 3) and features.shape == (6, 4)
    # batch statistics: the output of a row depends on the other rows of the batch
    assert not torch.allclose(learner(x[:3])[0], logits[:3])
    learner.eval()  # ... in eval mode as well (track_running_stats=False)
    torch.testing.assert_close(learner(x)[0], logits)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    task = (x, y, torch.randn(3, 1, 28, 28, dtype=torch.float64), torch.tensor([0, 1, 2]))
    loss = maml_task_loss(learner, task, 2, 0.1)
    grads = torch.autograd.grad(loss, list(learner.parameters()))
    weight = learner.body[0].weight
    eps = 1e-6
    values = []
    for sign in (1, -1):
        with torch.no_grad():
            weight[0, 0, 1, 1] += sign * eps
        with torch.enable_grad():
            values.append(float(maml_task_loss(learner, task, 2, 0.1).detach()))
        with torch.no_grad():
            weight[0, 0, 1, 1] -= sign * eps
    numeric = (values[0] - values[1]) / (2 * eps)
    assert math.isclose(float(grads[0][0, 0, 1, 1]), numeric, rel_tol=1e-4, abs_tol=1e-8)


@pytest.mark.parametrize("use_vmap", [False, True])
def test_adapted_learner_equals_plain_sgd_per_task(use_vmap):
    torch.manual_seed(0)
    learner = SineMLP((8, 8)).double()
    g = torch.Generator().manual_seed(4)
    tasks = sample_sinusoid_tasks(6, (1, 4), 5, g)
    tasks = type(tasks)(*(t.double() if t.is_floating_point() else t for t in tasks.fields()))
    model = AdaptedLearner(learner, 0.05, 4, vmap=use_vmap)
    with torch.no_grad():
        state = model.start(tasks.inputs())
        outputs = []
        for t in range(4):
            state = model.advance(state, t)
            outputs.append(model.predict(state, t))
    params = [p.detach() for p in learner.parameters()]
    for i in range(len(tasks)):
        sx, sy, qx, _ = tasks.task(i)
        fast = [p.clone().requires_grad_() for p in params]
        for t in range(4):
            loss = ((plain_mlp(fast, sx) - sy) ** 2).mean()
            grads = torch.autograd.grad(loss, fast)
            fast = [
                (p - 0.05 * g).detach().requires_grad_() for p, g in zip(fast, grads, strict=True)
            ]
            torch.testing.assert_close(outputs[t][i], plain_mlp(fast, qx).detach())


def test_vmap_over_a_group_gives_the_losses_and_meta_gradients_of_the_loop():
    torch.manual_seed(0)
    learner = SineMLP((8, 8)).double()
    policy = SetPolicy(8, 3, width=6, hidden=10).double()
    g = torch.Generator().manual_seed(5)
    tasks = sample_sinusoid_tasks(3, (4, 4), 5, g)
    group = tuple(
        t.double() for t in (tasks.support_x, tasks.support_y, tasks.query_x, tasks.query_y)
    )
    uniforms = torch.tensor([0.1, 0.5, 0.9])
    results = []
    for use_vmap in (False, True):
        maml = maml_losses(learner, group, 3, 0.05, use_vmap)
        stop, _ = maml_stop_losses(learner, policy, group, 3, 0.05, 0.2, uniforms, use_vmap)
        parameters = [*learner.parameters(), *policy.parameters()]
        grads = torch.autograd.grad(maml.sum() + stop.sum(), parameters)
        results.append((maml, stop, grads))
    (m0, s0, g0), (m1, s1, g1) = results
    torch.testing.assert_close(m1, m0)
    torch.testing.assert_close(s1, s0)
    for a, b in zip(g0, g1, strict=True):
        torch.testing.assert_close(b, a)
    for i in range(3):  # and each task's loss is the loss of that task alone
        alone = maml_task_loss(learner, tuple(t[i] for t in group), 3, 0.05)
        torch.testing.assert_close(m0[i], alone)


def test_padded_supports_with_a_mask_give_the_unpadded_numbers():
    """Sinusoid tasks of different K are adapted as one padded group; each task's losses,
    features and meta-gradient equal those of the task alone."""
    torch.manual_seed(0)
    learner = SineMLP((8, 8)).double()
    policy = SetPolicy(8, 3, width=6, hidden=10).double()
    g = torch.Generator().manual_seed(6)
    tasks = sample_sinusoid_tasks(4, (1, 6), 5, g)
    assert len(set(tasks.shots.tolist())) > 1
    group = tuple(
        t.double() for t in (tasks.support_x, tasks.support_y, tasks.query_x, tasks.query_y)
    )
    mask = torch.arange(6).unsqueeze(0) < tasks.support_n.unsqueeze(1)
    uniforms = torch.tensor([0.2, 0.4, 0.6, 0.8])
    for use_vmap in (False, True):
        losses, _ = maml_stop_losses(learner, policy, group, 3, 0.05, 0.2, uniforms, use_vmap, mask)
        for i in range(4):
            n = int(tasks.support_n[i])
            alone = tuple(t[i : i + 1] for t in group)
            alone = (alone[0][:, :n], alone[1][:, :n], alone[2], alone[3])
            expected, _ = maml_stop_losses(
                learner, policy, alone, 3, 0.05, 0.2, uniforms[i : i + 1]
            )
            torch.testing.assert_close(losses[i], expected[0])
            grads = torch.autograd.grad(losses[i], list(learner.parameters()), retain_graph=True)
            reference = torch.autograd.grad(expected[0], list(learner.parameters()))
            for a, b in zip(grads, reference, strict=True):
                torch.testing.assert_close(a, b)


def test_the_policy_sees_the_learner_after_the_update_it_decides_on():
    """The off-by-one fix: the support loss in the features at step t is that of θ_{t+1}, the
    parameters whose query loss the step is scored on."""
    torch.manual_seed(0)
    learner = SineMLP((8, 8)).double()
    task = sine_task(1)
    measured = adapt_task(learner, task, 3, 0.05, query_every_step=True)
    params = [p.detach().clone().requires_grad_() for p in learner.parameters()]
    sx, sy, qx, qy = task
    fast = params
    for t in range(3):
        loss = ((plain_mlp(fast, sx) - sy) ** 2).mean()
        grads = torch.autograd.grad(loss, fast)
        fast = [(p - 0.05 * g).detach().requires_grad_() for p, g in zip(fast, grads, strict=True)]
        support_after = ((plain_mlp(fast, sx) - sy) ** 2).mean()
        query_after = ((plain_mlp(fast, qx) - qy) ** 2).mean()
        assert math.isclose(
            float(measured[t]["features"][16]),
            math.log(float(support_after.detach()) + 1e-6),
            rel_tol=1e-9,
        )
        torch.testing.assert_close(task_loss(measured[t]["query_out"], qy), query_after.detach())


def geometric_log_q(hazard_logits):
    """q(t) = λ_t ∏_{τ<t} (1 − λ_τ), the last step taking the rest, written out."""
    lam = torch.sigmoid(hazard_logits.double())
    q, survive = [], 1.0
    for t in range(len(lam)):
        stop = lam[t] if t < len(lam) - 1 else 1.0
        q.append(survive * stop)
        survive = survive * (1 - lam[t])
    return torch.log(torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in q]))


def test_maml_stop_loss_is_the_sampled_query_loss_plus_the_policy_cross_entropy():
    torch.manual_seed(0)
    learner = SineMLP((8, 8)).double()
    policy = SetPolicy(8, 4, width=6, hidden=10).double()
    task = sine_task(2)
    uniform = 0.37
    losses, metrics = maml_stop_losses(
        learner, policy, batched(task), 4, 0.05, 0.5, torch.tensor([uniform])
    )
    loss = losses[0]
    measured = adapt_task(learner, task, 4, 0.05, query_every_step=True)
    losses = torch.stack([task_loss(m["query_out"], task[3]) for m in measured]).detach()
    q_star = torch.softmax(-losses / 0.5, 0)
    sampled = int((torch.cumsum(q_star, 0) < uniform).sum())
    hazards = torch.stack(
        [policy(m["features"].unsqueeze(0), t)[0] for t, m in enumerate(measured)]
    )
    log_q = geometric_log_q(hazards.detach())
    assert math.isclose(float(log_q.exp().sum()), 1.0, rel_tol=1e-12)
    expected = losses[sampled] - log_q[int(losses.argmin())]
    assert math.isclose(float(loss.detach()), float(expected), rel_tol=1e-9)
    assert metrics["sampled_step"].tolist() == [sampled + 1]
    # the policy gets gradient from its cross-entropy, the learner from the sampled query loss
    # only: second-order MAML run for t̃ updates
    loss.backward()
    assert all(p.grad is not None for p in policy.parameters())
    params = [p.detach().clone().requires_grad_() for p in learner.parameters()]
    reference, _ = plain_maml_loss(params, task, sampled + 1, 0.05)
    for got, want in zip(learner.parameters(), torch.autograd.grad(reference, params), strict=True):
        torch.testing.assert_close(got.grad, want)


def test_a_diverging_inner_loop_leaves_the_meta_gradient_finite():
    torch.manual_seed(0)
    learner = SineMLP((8, 8))
    policy = SetPolicy(8, 6, width=6, hidden=10)
    g = torch.Generator().manual_seed(7)
    tasks = sample_sinusoid_tasks(3, (5, 5), 5, g)
    group = (tasks.support_x, tasks.support_y, tasks.query_x, tasks.query_y)
    lr = 3.0  # large enough for the inner loop to overflow within 6 updates
    with torch.no_grad():
        outputs, features = adapt_group(learner, group, 6, lr, True)
    assert not torch.isfinite(outputs).all() and torch.isfinite(outputs[:, 0]).all()
    assert torch.isfinite(features).all() and features.abs().max() <= 1e4
    losses, metrics = maml_stop_losses(learner, policy, group, 6, lr, 0.5, torch.rand(3))
    assert torch.isfinite(losses).all()
    losses.sum().backward()
    for p in [*learner.parameters(), *policy.parameters()]:
        assert torch.isfinite(p.grad).all()


def test_sample_step_inverts_the_oracle_cdf():
    losses = torch.tensor([1.0, 0.5, 0.7, 2.0])
    q = torch.softmax(-losses.double() / 0.3, 0)
    edges = torch.cumsum(q, 0).tolist()
    assert sample_step(losses, 0.3, 0.0) == 0
    for t, edge in enumerate(edges[:-1]):
        assert sample_step(losses, 0.3, edge - 1e-9) == t
        assert sample_step(losses, 0.3, edge + 1e-9) == t + 1
    assert sample_step(losses, 0.3, 0.999999999) == 3
    # a step whose mass underflows to 0 is never drawn, not even at u = 0 (q = [0, ½, ½])
    assert sample_step(torch.tensor([1e6, 0.0, 0.0]), 1.0, 0.0) == 1


class CountingLearner(SineMLP):
    def __init__(self):
        super().__init__((8,))
        self.rows_seen = 0

    def forward(self, x):
        self.rows_seen += x.shape[0]
        return super().forward(x)


def test_a_task_that_stops_early_runs_only_its_updates():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    tasks = sample_sinusoid_tasks(4, (3, 3), 5, g)
    T = 8

    def run(stop_step):
        learner = CountingLearner()
        model = AdaptedLearner(learner, 0.01, T)
        policy = StopAt(stop_step)
        with torch.no_grad():
            result = run_adaptive(model, policy, tasks.inputs(), ScoreThreshold(0.0), "shrink")
        return learner.rows_seen, result

    early, result = run(2)
    assert (result.steps_used == 3).all()
    full, _ = run(T - 1)
    per_step = 4 * (3 + 5)  # every task: a support forward (3 points) and a query forward (5)
    # start and each step: support + query forward (start's query keeps the state's shapes fixed)
    assert early == per_step + 3 * per_step
    assert full == per_step + T * per_step


def test_masked_mode_equals_shrink_on_adapted_learners():
    """Found by the hypothesis test: the start state lacked the query output's shape (and the
    last step the gradient), so masked mode's row-wise choice between states crashed."""
    torch.manual_seed(0)
    tasks = sample_sinusoid_tasks(6, (3, 3), 5, torch.Generator().manual_seed(1))
    model = AdaptedLearner(SineMLP((8,)), 0.01, 5)
    policy = StopAfterLoss(2.0)
    with torch.no_grad():
        shrink = run_adaptive(model, policy, tasks.inputs(), ScoreThreshold(0.0), "shrink")
        masked = run_adaptive(model, policy, tasks.inputs(), ScoreThreshold(0.0), "masked")
    assert 0 < shrink.stop_index.float().mean() < 4  # tasks stop at different steps
    assert torch.equal(masked.stop_index, shrink.stop_index)
    assert torch.allclose(masked.predictions, shrink.predictions)


class StopAfterLoss(torch.nn.Module):
    """Stop a task once its step count passes a per-task threshold read from its features."""

    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def forward(self, features, t):
        return t - self.scale * features[:, 0].abs().clamp(max=2.0)


class StopAt(torch.nn.Module):
    def __init__(self, step):
        super().__init__()
        self.step = step

    def forward(self, features, t):
        return torch.full((features.shape[0],), 1.0 if t >= self.step else -1.0)


class TinyClassifier(torch.nn.Module):
    """2 inputs → 3 penultimate features h = W x + b (signed, so softplus matters) → 3 logits
    V tanh(h) + c; returns (logits, h) like the few-shot learners."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Linear(2, 3)
        self.head = torch.nn.Linear(3, 3)

    def forward(self, x):
        h = self.body(x)
        return self.head(torch.tanh(h)), h


def test_policy_features_of_a_tiny_classification_task_by_hand():
    """Every one of the 2W + 4 features against loops over the examples: mean softplus of the
    real support rows' h and of the query rows' h, log(support cross-entropy + 1e-6), support
    accuracy, mean max softmax probability on the query, log support size. The support's last
    row is padding: its large h and "correct" label would show in an unmasked mean."""
    torch.manual_seed(3)
    learner = TinyClassifier().double()
    params = {k: v.detach() for k, v in learner.named_parameters()}
    W, b = params["body.weight"].tolist(), params["body.bias"].tolist()
    V, c = params["head.weight"].tolist(), params["head.bias"].tolist()

    def plain(x):
        h = [sum(W[k][j] * x[j] for j in range(2)) + b[k] for k in range(3)]
        logits = [sum(V[a][k] * math.tanh(h[k]) for k in range(3)) + c[a] for a in range(3)]
        z = sum(math.exp(v) for v in logits)
        return h, [math.exp(v) / z for v in logits]

    sx = [[0.5, -1.0], [1.5, 0.3], [-0.7, 0.8], [0.1, 0.1], [6.0, -5.0]]
    qx = [[-1.2, 0.4], [0.9, 0.9], [0.0, -0.6]]
    support = [plain(x) for x in sx]
    query = [plain(x) for x in qx]
    predicted = [max(range(3), key=lambda a, p=p: p[a]) for _, p in support]
    sy = [predicted[0], (predicted[1] + 1) % 3, predicted[2], (predicted[3] + 2) % 3, predicted[4]]
    real = 4  # the fifth support row is padding

    def softplus(v):
        return math.log1p(math.exp(v))

    expected = [sum(softplus(support[i][0][k]) for i in range(real)) / real for k in range(3)]
    expected += [sum(softplus(h[k]) for h, _ in query) / len(qx) for k in range(3)]
    loss = sum(-math.log(support[i][1][sy[i]]) for i in range(real)) / real
    expected += [
        math.log(loss + 1e-6),
        sum(predicted[i] == sy[i] for i in range(real)) / real,  # 2 of 4
        sum(max(p) for _, p in query) / len(qx),
        math.log(real),
    ]
    measured = measure_task(
        learner, params, torch.tensor(sx, dtype=torch.float64), torch.tensor(sy),
        torch.tensor(qx, dtype=torch.float64), support_mask=torch.tensor([1, 1, 1, 1, 0]),
    )  # fmt: skip
    assert measured["features"].tolist() == pytest.approx(expected, rel=1e-10)
    assert expected[7] == 0.5


def test_policy_features_of_a_tiny_regression_task_by_hand():
    """The regression stats by loops: support fit −log(1 + MSE), query confidence 0, and the
    set summaries of a 1 → 2 ReLU MLP's features, with no mask (every support row counts)."""
    torch.manual_seed(4)
    learner = SineMLP((2,)).double()
    params = {k: v.detach() for k, v in learner.named_parameters()}
    W, b = params["body.0.weight"].tolist(), params["body.0.bias"].tolist()
    v, c = params["head.weight"].tolist()[0], params["head.bias"].item()

    def plain(x):
        h = [max(W[k][0] * x + b[k], 0.0) for k in range(2)]
        return h, sum(v[k] * h[k] for k in range(2)) + c

    sx, sy, qx = [-2.0, -0.5, 1.0, 3.0], [0.3, -1.0, 2.0, 0.5], [-1.0, 0.2, 2.5]
    support, query = [plain(x) for x in sx], [plain(x) for x in qx]
    mse = sum((out - y) ** 2 for (_, out), y in zip(support, sy, strict=True)) / len(sx)

    def softplus(value):
        return math.log1p(math.exp(value))

    expected = [sum(softplus(h[k]) for h, _ in support) / len(sx) for k in range(2)]
    expected += [sum(softplus(h[k]) for h, _ in query) / len(qx) for k in range(2)]
    expected += [math.log(mse + 1e-6), -math.log(1 + mse), 0.0, math.log(len(sx))]
    column = dict(dtype=torch.float64)
    measured = measure_task(
        learner, params, torch.tensor(sx, **column).view(-1, 1), torch.tensor(sy, **column),
        torch.tensor(qx, **column).view(-1, 1),
    )  # fmt: skip
    assert measured["features"].tolist() == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_hand_made_stop_scores_the_support_loss():
    torch.manual_seed(0)
    learner = SineMLP((8,))
    sx, sy, qx, _ = sine_task(3)
    params = {k: v.detach() for k, v in learner.named_parameters()}
    measured = measure_task(learner, params, sx.float(), sy.float(), qx.float())
    score = SupportLossStop(8)(measured["features"].unsqueeze(0), 0)
    support_loss = float(((learner(sx.float())[0] - sy.float()) ** 2).mean().detach())
    assert math.isclose(float(score), -math.log(support_loss + 1e-6), rel_tol=1e-6)


# ---------------------------------------------------------------- Omniglot and bad inputs


def fake_omniglot(root: Path, characters=6, drawers=20, suffix=".png"):
    for i in range(characters):
        folder = "images_background" if i < characters // 2 else "images_evaluation"
        path = root / folder / f"alphabet{i % 2}" / f"character{i:02d}"
        path.mkdir(parents=True)
        for d in range(drawers):
            pixels = np.full((105, 105), 255, np.uint8)
            pixels[10 + i * 5 : 20 + i * 5, 10 + d * 4 : 14 + d * 4] = 0  # black ink
            Image.fromarray(pixels).save(path / f"{i:04d}_{d:02d}{suffix}", format="PNG")
    return root


def test_omniglot_loader_reads_the_standard_layout(tmp_path):
    root = fake_omniglot(tmp_path / "omniglot")
    assert omniglot_problem(str(root)) is None
    splits = omniglot_splits(str(root), (4, 1, 1), 0, 28, True, str(tmp_path / "cache"))
    assert [s.images.shape[:2] for s in splits] == [(4, 20), (1, 20), (1, 20)]
    images = torch.cat([s.images for s in splits])
    assert images.max() > 200 and (images == 0).float().mean() > 0.8  # ink = 255 on 0
    assert omniglot_problem(str(tmp_path)) is not None


def test_omniglot_images_named_in_upper_case_are_read(tmp_path):
    """A user's own tree with ``.PNG`` files (a case-sensitive glob found no image)."""
    upper = fake_omniglot(tmp_path / "upper", suffix=".PNG")
    lower = fake_omniglot(tmp_path / "lower")
    assert omniglot_problem(str(upper)) is None
    read = [omniglot_splits(str(r), (4, 1, 1), 0, 28, True) for r in (upper, lower)]
    for ours, theirs in zip(*read, strict=True):
        assert torch.equal(ours.images, theirs.images)


def test_a_users_tree_too_small_for_ways_names_what_it_has_and_what_to_change(tmp_path, capsys):
    """30 characters scale glyphs.characters (1100, 100, 423) to (20, 2, 8): the message gives
    the tree's split, not a glyphs.characters the user never set, and raising that key would not
    help. A hidden folder (a notebook's checkpoints) is no character."""
    root = fake_omniglot(tmp_path / "omni", characters=30, drawers=2)
    (root / "images_background" / "alphabet0" / ".ipynb_checkpoints").mkdir()
    (root / "images_evaluation" / ".hidden" / "character99").mkdir(parents=True)
    assert len(omniglot_characters(str(root))) == 30
    out = tmp_path / "never"
    args = ["run", "few-shot", "--preset", "tiny", "--out", str(out), "--set", "family=glyphs"]
    for override in ("vmap=false", f"data_dir={root}", "ways=9"):
        args += ["--set", override]
    assert main(args) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith(
            f"ways=9 exceeds the 8 classes of the validation split of Omniglot at {root} (its 30 "
            "characters split [20, 2, 8], × 4 rotations): lower ways or add characters"
        )
    )
    assert not out.exists()


@pytest.mark.parametrize(
    "overrides, named",
    [
        # (tiny is a sinusoid preset with vmap=true, which the glyphs' Conv4 refuses)
        (["family=glyphs", "vmap=false", "data_dir={tmp}"], "not an Omniglot layout"),
        (["family=glyphs", "vmap=false", "glyphs.characters=10,2,10", "ways=9"], "ways=9"),
        (["shots=0,5"], "shots"),
        (["shots=6,2"], "shots"),
        (["family=glyphs", "vmap=false", "shots=1,18", "query=5"], "exceeds the 20 samples"),
        (["family=sinusoid", "data_dir={tmp}"], "data_dir"),
        # vmap's second-order gradient through the Conv4's batch-statistics BatchNorm is wrong
        (["family=glyphs", "vmap=true"], "vmap=true is refused"),
        # the Conv4 halves the image 4 times: 15 pixels end at 0 (a crash after rendering)
        (["family=glyphs", "vmap=false", "glyphs.size=15"], "glyphs.size=15 must be >= 16"),
    ],
)
def test_bad_inputs_exit_2_naming_the_problem_before_writing(overrides, named, tmp_path, capsys):
    """In this process: the CLI's refusal is the same code path, without starting Python again
    (an exception it does not turn into exit 2 fails the test)."""
    out = tmp_path / "never"
    args = ["run", "few-shot", "--preset", "tiny", "--out", str(out)]
    for override in overrides:
        args += ["--set", override.format(tmp=tmp_path)]
    assert main(args) == 2
    assert named in capsys.readouterr().err
    assert not out.exists()


# ---------------------------------------------------------------- torchrun

JOB = Path(__file__).with_name("few_shot_ddp_job.py")


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_two_ranks_train_the_same_weights_as_one_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single, double = tmp_path / "single", tmp_path / "double"
    for out in (single, double):
        out.mkdir()
    subprocess.run([sys.executable, str(JOB), str(single)], env=env, check=True, timeout=120)
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    done = subprocess.run(
        [*launch, str(JOB), str(double)], env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    one = torch.load(single / "final.pt", weights_only=True)
    two = torch.load(double / "final.pt", weights_only=True)
    start = torch.load(single / "start.pt", weights_only=True)
    moved = False
    for name, value in one.items():
        torch.testing.assert_close(two[name], value, rtol=1e-5, atol=1e-6)
        moved |= not torch.equal(value, start[name])
    assert moved
    assert (single / "tasks_rank0.txt").read_text() == "24"
    for rank in (0, 1):  # each rank adapted half of every meta-batch
        assert (double / f"tasks_rank{rank}.txt").read_text() == "12"


# The contract tests' few-shot group: its test worker has their uninterrupted tiny run.
ON_THE_CONTRACT_WORKER = pytest.mark.xdist_group("few-shot")


@pytest.fixture(scope="module")
def tiny_run(uninterrupted):
    """The tiny preset (sinusoids, seconds): the contract tests' uninterrupted run (conftest.py),
    read on their test worker (the tests that use it are in their xdist group)."""
    return uninterrupted["few-shot"]


@ON_THE_CONTRACT_WORKER
def test_the_gain_head_is_fitted_on_the_frozen_learner_and_gets_a_budget_curve(tiny_run):
    """gain_head=true (the tiny preset): a head for budgets fitted on training-task trajectories
    of MAML-stop's frozen learner; its curve is calibrated on validation like the policy's and
    judged against the same learner at fixed depth."""
    tmp_path = tiny_run
    record = json.loads((tmp_path / "jobs" / "maml-stop-s0.json").read_text())["record"]
    curve = record["gain_curve"]
    steps = [p["mean_steps"] for p in curve]
    assert len(curve) == len(record["stop_curve"]) and 1 <= min(steps) <= max(steps) <= 4
    assert steps == sorted(steps)
    verdicts = json.loads((tmp_path / "results.json").read_text())["dominance"]
    assert set(verdicts) == {"MAML-stop", "MAML-stop learner, gain head"}
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    stages = {json.loads(line)["stage"] for line in lines}
    assert "gain-head" in stages


@ON_THE_CONTRACT_WORKER
def test_the_policy_share_of_an_inner_step_is_over_every_test_task(tiny_run):
    """The recorded multiply-adds against a count by hand over the test tasks' K (the old code
    measured test task 0's step alone). tiny: MLP 1 → 16 → 16 → 1 is 16 + 16·16 + 16 = 288 per
    point; an inner step is the support forward and backward (3 forwards of K points) plus the
    query forward (10 points): (3K + 10)·288. Policy (width 8, hidden 32, T = 4) on features of
    16: two maps 2·16·8 = 256, head (2·8 + 4 stats + 4 steps)·32 + 32 = 800; 1,056 in all."""
    record = json.loads((tiny_run / "jobs" / "maml-stop-s0.json").read_text())["record"]
    shots = record["test"]["shots"]
    assert len(shots) == 30 and len(set(shots)) > 1
    steps = [(3 * k + 10) * 288 for k in shots]
    macs = record["macs"]
    assert macs["policy_per_task_step"] == 1056
    assert math.isclose(macs["step_per_task"], sum(steps) / 30)
    assert math.isclose(macs["policy_over_step"], 1056 * 30 / sum(steps))
    assert macs["worst_shots"] == min(shots)
    assert math.isclose(macs["policy_over_step_worst"], 1056 / ((3 * min(shots) + 10) * 288))
    assert (macs["step_per_task_min"], macs["step_per_task_max"]) == (min(steps), max(steps))
    maml = json.loads((tiny_run / "jobs" / "maml-T4-s0.json").read_text())["record"]["macs"]
    assert maml["policy_per_task_step"] == 0 and maml["step_per_task"] == macs["step_per_task"]


@ON_THE_CONTRACT_WORKER
def test_measure_chooses_the_depth_on_validation_and_the_oracle_beats_every_depth(tiny_run):
    """Each MAML record of the tiny run (sinusoids: MSE, lower is better): the best depth is the
    first argmin of the validation means, the fixed-depth row is the test mean at that depth,
    and the oracle stop's MSE is no more than a fixed depth's on any task."""
    records = [
        json.loads((tiny_run / "jobs" / f"{name}-s0.json").read_text())["record"]
        for name in ("maml-T4", "maml-stop")
    ]
    for record in records:
        assert record["metric"] == "mse"
        T, val, test = record["steps"], record["val"], record["test"]
        by_depth = val["by_depth"]
        best = min(range(T), key=lambda d: (by_depth[d], d))
        assert val["best_depth"] == best + 1
        assert val["best_value"] == by_depth[best]
        for key, depth in (("fixed_best", best), ("fixed_full", T - 1)):
            row = test[key]
            assert row["depth"] == depth + 1
            assert row["mean"] == pytest.approx(test["by_depth"][depth], rel=1e-9)
            assert row["mean"] == pytest.approx(sum(row["per_task"]) / len(row["per_task"]))
        oracle = test["oracle"]
        assert oracle["mean"] <= min(test["by_depth"]) + 1e-9
        for key in ("fixed_best", "fixed_full"):
            for o, f in zip(oracle["per_task"], test[key]["per_task"], strict=True):
                assert o <= f * (1 + 1e-6)
        assert oracle["mean_steps"] == sum(oracle["steps_per_task"]) / len(oracle["per_task"])
    # one record chose a depth short of the last, so its best and full rows differ
    assert any(r["val"]["best_depth"] < r["steps"] for r in records)


def _without_timings(value):
    """``value`` (a results.json) without what differs from run to run: wall-clock timings and
    the fingerprint (a digest of the job ids and their seconds)."""
    if isinstance(value, dict):
        return {
            k: _without_timings(v) for k, v in value.items() if k not in ("timing", "fingerprint")
        }
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


@ON_THE_CONTRACT_WORKER
def test_other_evaluation_settings_reuse_the_meta_training_and_give_a_fresh_runs_numbers(
    tiny_run, tmp_path
):
    """Another inference mode, budget curve and test set are evaluation settings: a run with them
    that takes the tiny run's finished jobs (reuse_from) meta-trains nothing (its training jobs
    are the tiny run's), evaluates again, and gives the numbers of a fresh run with them."""
    from stopwise.experiments import run_experiment

    other = ["progress=false", "inference_mode=masked", "curve_points=3", "test_tasks=12"]
    reran = run_experiment(
        "few-shot", "tiny", tmp_path / "reran", [*other, f"reuse_from={tiny_run}"]
    )
    fresh = run_experiment("few-shot", "tiny", tmp_path / "fresh", other)

    def job(name: str) -> dict:
        return json.loads(reran.job_path(f"{name}-s0").read_text())

    for path in (reran.path / "jobs").glob("*.json"):  # a job that ran here trained nothing
        ran = json.loads(path.read_text())
        assert ran.get("reused_from") or not ran["checkpoints"], f"{path.name} trained again"
    for name in ("maml-T4-train", "maml-stop-train"):
        assert job(name)["reused_from"] == str(tiny_run.resolve() / "jobs" / f"{name}-s0.json")
    for name in ("maml-T4", "maml-stop", "compare"):
        assert "reused_from" not in job(name)
    stages = {json.loads(line)["stage"] for line in reran.metrics_path.read_text().splitlines()}
    assert {"maml-T4", "maml-stop", "gain-head"} <= stages  # the training curves came along
    record = job("maml-stop")["record"]
    assert len(record["test"]["shots"]) == 12 and len(record["stop_curve"]) <= 3
    results = [json.loads(run.results_path.read_text()) for run in (reran, fresh)]
    assert _without_timings(results[0]) == _without_timings(results[1])
    assert (reran.table_path.read_text()) == fresh.table_path.read_text()
    assert "mode='masked'" in fresh.table_path.read_text()


def _maml_record(best_value, depth, per_task):
    return {
        "val": {"best_value": best_value},
        "test": {"fixed_best": {"depth": depth, "mean": sum(per_task) / 3, "per_task": per_task}},
    }


@pytest.mark.parametrize("family", ["sinusoid", "glyphs"])
def test_compare_picks_the_maml_job_best_on_validation(family):
    """The best fixed-T MAML is the job with the lowest validation MSE (highest accuracy), and
    MAML-stop is measured against it over the same tasks."""
    from types import SimpleNamespace

    from stopwise.tasks.few_shot.experiment import compare

    records = {
        "maml-T2": _maml_record(0.5, 2, [0.25, 0.5, 0.75]),
        "maml-T4": _maml_record(0.25, 3, [0.5, 0.5, 1.0]),
        "maml-T8": _maml_record(0.375, 8, [0.0, 0.25, 0.5]),
        "maml-stop": {
            "test": {"stop": {"mean": 0.5, "mean_steps": 2.5, "per_task": [0.5, 0.25, 0.75]}}
        },
    }
    context = SimpleNamespace(
        config=SimpleNamespace(family=family),
        job=SimpleNamespace(after=("maml-T2", "maml-T4", "maml-T8", "maml-stop")),
        dependency=lambda name: SimpleNamespace(record=records[name]),
    )
    out = compare(context)
    chosen = "maml-T4" if family == "sinusoid" else "maml-T2"
    assert out["best_maml"]["job"] == chosen
    best = records[chosen]["test"]["fixed_best"]
    assert out["best_maml"]["depth"] == best["depth"]
    assert out["best_maml"]["val_value"] == records[chosen]["val"]["best_value"]
    assert out["best_maml"]["test_value"] == best["mean"]
    scale = 1.0 if family == "sinusoid" else 100.0
    differences = [a - b for a, b in zip([0.5, 0.25, 0.75], best["per_task"], strict=True)]
    assert out["stop_minus_best"]["mean"] == pytest.approx(scale * sum(differences) / 3)
    assert ("mse_ratio" in out) == (family == "sinusoid")
    if family == "sinusoid":
        assert out["mse_ratio"] == pytest.approx(0.5 / best["mean"])


def test_quality_is_per_task_accuracy_or_mse_by_a_plain_loop():
    from stopwise.tasks.few_shot.metrics import quality

    outputs = torch.tensor([[0.5, -1.0, 2.0], [0.0, 3.0, 1.0]])
    targets = torch.tensor([[1.0, -1.0, 0.0], [0.5, 1.0, 1.0]])
    mse = [sum((float(o) - float(t)) ** 2 for o, t in zip(row, trow, strict=True)) / 3
           for row, trow in zip(outputs, targets, strict=True)]  # fmt: skip
    assert quality(outputs, targets).tolist() == pytest.approx(mse)
    logits = torch.tensor([[[0.1, 0.9], [2.0, -1.0], [0.3, 0.2]],
                           [[-1.0, 1.0], [0.0, 5.0], [4.0, 1.0]]])  # fmt: skip
    labels = torch.tensor([[1, 0, 1], [0, 1, 0]])
    hits = [[1, 1, 0], [0, 1, 1]]  # argmax of each row against its label, by eye
    assert quality(logits, labels).tolist() == pytest.approx([sum(h) / 3 for h in hits])


@pytest.fixture
def few_shot_script(monkeypatch):
    """benchmarks/few_shot.py as a module (its verdicts, not its runs)."""
    import importlib

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benchmarks"))
    yield importlib.import_module("few_shot")
    sys.modules.pop("few_shot", None)


def test_the_sinusoid_target_is_judged_by_the_interval_of_the_per_seed_ratios(few_shot_script):
    """Every seed's ratio ≤ 0.9 is not enough: the 95% interval over seeds must lie at or below
    0.9 (the stored few_shot.json ratios, whose interval reaches 0.92); one seed by its ratio."""
    ratios = {"0": 0.5536583427886345, "1": 0.6521048344898871, "2": 0.7672827202192845}
    verdict = few_shot_script.mse_ratio_verdict(ratios)
    assert verdict["mse_ratio_target_met"] is False
    interval = verdict["mse_ratio_over_seeds"]
    assert (interval["n"], round(interval["lo"], 2), round(interval["hi"], 2)) == (3, 0.39, 0.92)
    assert few_shot_script.mse_ratio_verdict({"0": 0.85})["mse_ratio_target_met"] is True
    assert few_shot_script.mse_ratio_verdict({"0": 0.95})["mse_ratio_target_met"] is False


def test_the_glyph_gain_target_is_judged_by_the_interval_over_seeds(few_shot_script):
    """Seeds each ≥ +1.0 point with their test-task intervals above zero do not meet the target
    when the paired interval over seeds reaches below +1.0; one seed is judged by its value."""
    from stopwise.stats import paired_difference

    means = {0: 1.2, 1: 3.0, 2: 1.1}
    gains = {
        s: {"mean": m, "lo": m - 0.1, "hi": m + 0.1, "above_zero": True} for s, m in means.items()
    }
    over = paired_difference(means, dict.fromkeys(means, 0.0))
    fewer = dict.fromkeys(means, True)
    verdict = few_shot_script.gain_verdict(gains, over, fewer)
    assert over["lo"] < 1.0 and verdict["gain_target_met"] is False
    assert verdict["gain_judged_on"] == [over["lo"], over["hi"]]
    high = {0: 3.0, 1: 3.1, 2: 2.9}
    over = paired_difference(high, dict.fromkeys(high, 0.0))
    assert few_shot_script.gain_verdict(gains, over, fewer)["gain_target_met"] is True
    assert not few_shot_script.gain_verdict(gains, over, {**fewer, 2: False})["gain_target_met"]
    one = {0: gains[0]}
    assert few_shot_script.gain_verdict(one, None, {0: True})["gain_target_met"] is True
    below = {0: {**gains[0], "above_zero": False}}
    assert few_shot_script.gain_verdict(below, None, {0: True})["gain_target_met"] is False


def test_the_summary_gives_the_paired_difference_over_seeds_where_there_are_two():
    """With ≥ 2 seeds the summary prints the interval over seeds, not seed 0's over its tasks."""
    from stopwise.stats import paired_difference
    from stopwise.tasks.few_shot.report import summary_difference

    paired = {
        0: {"mean": 0.5, "lo": 0.4, "hi": 0.6, "n": 600},
        1: {"mean": -0.5, "lo": -0.6, "hi": -0.4, "n": 600},
    }
    over = paired_difference({0: 0.5, 1: -0.5}, {0: 0.0, 1: 0.0})
    text = summary_difference(paired, over, ".2f")
    assert text.startswith("paired difference over 2 seeds +0.00 [")
    assert "seed 0" not in text and "+0.50" not in text
    one = summary_difference({0: paired[0]}, None, ".2f")
    assert one == "paired difference (seed 0, over its 600 test tasks) +0.50 [+0.40, +0.60]"


# ---------------------------------------------------------------- the report, by K and by seed


def fake_point(value, **extra):
    return {"mean": value, "lo": value - 0.01, "hi": value + 0.01, **extra}


def fake_job(by_k: dict[int, float], T: int, with_policy: bool) -> dict:
    """A job record as ``run_job`` writes it, with hand-chosen numbers: ``by_k[K]`` is every
    quality column of the by-K row of K (accuracy as a fraction), steps columns K + 0.5."""
    quality = sum(by_k.values()) / len(by_k)
    by_shots = []
    for k, v in by_k.items():
        row = {"shots": k, "tasks": 3}
        for key in ("fixed_best", "fixed_full", "hand_stop", "oracle", "stop", "stop_official"):
            row[key], row[f"{key}_steps"] = v, k + 0.5
        by_shots.append(row)
    shots = [k for k in by_k for _ in range(3)]
    curve = [
        {"budget": float(t), "mean_steps": float(t), "accuracy": 100 * quality} for t in (1, T)
    ]
    test = {
        "fixed_full": fake_point(100 * quality, mean_steps=T),
        "fixed_best": fake_point(100 * quality, depth=T),
        "hand_stop": fake_point(100 * quality, mean_steps=T),
        "oracle": fake_point(100 * quality, mean_steps=T, spearman_steps_shots=None),
        "by_shots": by_shots,
        "shots": shots,
        "query_loss_by_shots": [{"shots": k, "query_loss": [1.0] * T} for k in by_k],
    }
    record = {
        "steps": T,
        "test": test,
        "fixed_depth": [
            {"depth": t, "mean_steps": float(t), "accuracy": 100 * quality} for t in range(1, T + 1)
        ],
        "hand_curve": curve,
    }
    if with_policy:
        stop = fake_point(100 * quality, mean_steps=T, spearman_steps_shots=None)
        test["stop"] = {**stop, "steps_per_task": [T] * len(shots)}
        test["stop_official"] = fake_point(100 * quality, mean_steps=T)
        record["stop_curve"] = curve
    return record


def fake_report(maml: dict, stop: dict, best: dict, edit=None):
    """report() on fabricated records: ``maml[T][seed]`` and ``stop[seed]`` are by-K values
    (see fake_job), ``best[seed]`` the T that seed's validation chose; ``edit(results)`` may
    change the records first."""
    from stopwise.contract import JobResult
    from stopwise.tasks.few_shot.config import FewShotConfig
    from stopwise.tasks.few_shot.report import report

    seeds = sorted(stop)
    config = FewShotConfig(
        seeds=seeds, maml_steps=sorted(maml), steps=3, shots=[1, 3], test_tasks=9
    )
    results = []

    def add(name, seed, record):
        results.append(JobResult(f"{name}-s{seed}", name, seed, {}, record, 1.0, 1.0))

    for T, per_seed in maml.items():
        for s, by_k in per_seed.items():
            add(f"maml-T{T}", s, fake_job(by_k, T, with_policy=False))
    for s, by_k in stop.items():
        add("maml-stop", s, fake_job(by_k, 3, with_policy=True))
        add("compare", s, {
            "best_maml": {"job": f"maml-T{best[s]}", "depth": best[s], "test_value": 99.0},
            "stop_value": 99.0,
            "stop_mean_steps": 3.0,
            "stop_minus_best": {"mean": 0.0, "lo": -0.1, "hi": 0.1, "n": 9},
        })  # fmt: skip
    if edit is not None:
        edit(results)
    return report(results, config)


def by_k_rows(table: str) -> dict[int, list[str]]:
    """The by-K table's rows: K -> its cells."""
    part = table.split("By K (")[1].split("\n\n")[1]
    rows = {}
    for line in part.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[int(cells[0])] = cells[1:]
    return rows


def test_the_by_k_table_matches_rows_by_k_when_a_seed_lacks_a_k():
    """Seed 1's test tasks have no K = 2: each K is averaged over the seeds that have it, by K
    (the old code matched rows by position: IndexError here, and a silent mix of K = 2 with
    K = 3 where the seeds' K sets have equal size), and the table says how many seeds."""
    maml = {3: {0: {1: 0.90, 2: 0.94, 3: 0.98}, 1: {1: 0.80, 3: 0.96}}}
    stop = {0: {1: 0.91, 2: 0.95, 3: 0.99}, 1: {1: 0.81, 3: 0.97}}
    done = fake_report(maml, stop, best={0: 3, 1: 3})
    rows = by_k_rows(done.table)
    # seeds, best MAML, hand stop, its steps, MAML-stop, its steps, oracle step: by hand
    assert rows[1][:2] == ["2", "85.00"] and rows[1][4] == "86.00"  # (90 + 80) / 2, (91 + 81) / 2
    assert rows[2][:2] == ["1", "94.00"] and rows[2][4] == "95.00"  # seed 0 alone
    assert rows[3][:2] == ["2", "97.00"] and rows[3][4] == "98.00"  # (98 + 96) / 2, (99 + 97) / 2
    assert rows[2][3] == "2.50" and rows[2][5] == "2.50"  # steps of K = 2: seed 0's
    axes = done.figures["quality_by_shots"].axes[0]
    lines = {line.get_label(): line for line in axes.get_lines()}
    assert list(lines["MAML-stop"].get_xdata()) == [1, 2, 3]
    np.testing.assert_allclose(lines["MAML-stop"].get_ydata(), [86.0, 95.0, 98.0])
    np.testing.assert_allclose(lines["best fixed-T MAML"].get_ydata(), [85.0, 94.0, 97.0])
    # equal-size K sets that differ: K = 2 (seed 0) is not averaged with K = 3 (seed 1)
    maml = {3: {0: {1: 0.90, 2: 0.94}, 1: {1: 0.80, 3: 0.96}}}
    stop = {0: {1: 0.91, 2: 0.95}, 1: {1: 0.81, 3: 0.97}}
    rows = by_k_rows(fake_report(maml, stop, best={0: 3, 1: 3}).table)
    assert [rows[k][1] for k in (1, 2, 3)] == ["85.00", "94.00", "96.00"]


def test_each_seed_is_reported_with_its_own_best_fixed_t_maml():
    """Seed 0's validation chose T = 2, seed 1's T = 3: the by-K table and the quality figure
    average seed 0's maml-T2 with seed 1's maml-T3 (the old code took maml-T2 for both)."""
    maml = {
        2: {0: {1: 0.90, 2: 0.96}, 1: {1: 0.10, 2: 0.20}},  # seed 1's T = 2 is not its choice
        3: {0: {1: 0.30, 2: 0.40}, 1: {1: 0.70, 2: 0.80}},  # nor seed 0's T = 3
    }
    stop = {0: {1: 0.5, 2: 0.6}, 1: {1: 0.5, 2: 0.6}}
    done = fake_report(maml, stop, best={0: 2, 1: 3})
    rows = by_k_rows(done.table)
    assert rows[1][0] == "80.00" and rows[2][0] == "88.00"  # (90 + 70) / 2, (96 + 80) / 2
    axes = done.figures["quality_by_shots"].axes[0]
    lines = {line.get_label(): line for line in axes.get_lines()}
    np.testing.assert_allclose(lines["best fixed-T MAML"].get_ydata(), [80.0, 88.0])
    np.testing.assert_allclose(lines["hand-made stop"].get_ydata(), [80.0, 88.0])
    # the budget figure's MAML at fixed depth: depths 1-2 over both seeds, depth 3 seed 1's only
    axes = done.figures["budget_curve"].axes[0]
    fixed = next(line for line in axes.get_lines() if line.get_label() == "MAML, fixed depth")
    np.testing.assert_allclose(fixed.get_xdata(), [1.0, 2.0, 3.0])
    np.testing.assert_allclose(fixed.get_ydata(), [(93.0 + 75.0) / 2, (93.0 + 75.0) / 2, 75.0])
    # each T job's rows say which MAML they come from (two rows would read the same otherwise)
    labels = [row["method"] for row in done.results["rows"]]
    assert len(labels) == len(set(labels))
    assert "MAML (trained for T = 2), T chosen on validation" in labels


def test_a_spearman_mean_over_seeds_says_how_many_seeds_it_has():
    stop = {0: {1: 0.5, 2: 0.6}, 1: {1: 0.5, 2: 0.6}}
    maml = {3: {0: {1: 0.3, 2: 0.4}, 1: {1: 0.3, 2: 0.4}}}
    assert "Spearman ρ(MAML-stop" not in fake_report(maml, stop, {0: 3, 1: 3}).table  # none

    def seed_0_defined(results):  # seed 0's ρ is +0.5, seed 1's undefined
        done = next(r for r in results if r.name == "maml-stop" and r.seed == 0)
        done.record["test"]["stop"]["spearman_steps_shots"] = 0.5

    table = fake_report(maml, stop, {0: 3, 1: 3}, edit=seed_0_defined).table
    assert "on test tasks: +0.500 (1 of 2 seeds; undefined on the others" in table


def test_budget_figure_draws_one_hand_stop_curve_per_maml_depth():
    """Seeds whose best fixed-T MAML differ in T have hand-stop curves on different budget
    grids (T = 1 has one point): each T gets its own curve, averaged over its seeds only."""
    from stopwise.tasks.few_shot.report import _budget_figure

    def curve(*pairs):
        return [{"mean_steps": x, "accuracy": y} for x, y in pairs]

    def fixed(T):
        return [{"depth": d, "mean_steps": d, "accuracy": 10.0 * d} for d in range(1, T + 1)]

    hand = {1: curve((1.0, 30.0)), 4: curve((1.5, 40.0), (2.5, 50.0), (3.5, 60.0))}  # points
    seeds = [0, 1, 2]
    Ts = {0: 4, 1: 1, 2: 4}
    maml = {
        s: {"steps": Ts[s], "hand_curve": hand[Ts[s]], "fixed_depth": fixed(Ts[s])} for s in seeds
    }
    stop = {s: {"stop_curve": curve((2.0, 50.0)), "fixed_depth": fixed(4)} for s in seeds}
    figure = _budget_figure(maml, stop, seeds, "accuracy", "glyphs")
    lines = {line.get_label(): line for line in figure.axes[0].get_lines()}
    one = lines["MAML T=1 + hand-made stop (1 of 3 seeds)"]
    four = lines["MAML T=4 + hand-made stop (2 of 3 seeds)"]
    assert list(one.get_xdata()) == [1.0] and list(one.get_ydata()) == [30.0]
    assert list(four.get_xdata()) == [1.5, 2.5, 3.5]
    assert list(four.get_ydata()) == pytest.approx([40.0, 50.0, 60.0])


def test_stop_step_correlation_is_spearman_of_steps_with_shots_by_hand():
    """Spearman's ρ of the stop step with K: the Pearson correlation of average ranks, written
    out; more shots with more steps is positive, with fewer negative, a constant side None."""
    from stopwise.tasks.few_shot.metrics import stop_step_correlation

    def ranks(values):  # average ranks, 1-based
        return [
            sum(1 + j for j, w in enumerate(sorted(values)) if w == v) / values.count(v)
            for v in values
        ]

    def pearson(a, b):
        ma, mb = sum(a) / len(a), sum(b) / len(b)
        cov = sum((x - ma) * (y - mb) for x, y in zip(a, b, strict=True))
        return cov / math.sqrt(sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b))

    steps, shots = [1.0, 3.0, 2.0, 5.0, 5.0], [1.0, 2.0, 2.0, 5.0, 3.0]
    expected = pearson(ranks(steps), ranks(shots))
    assert expected > 0.5
    got = stop_step_correlation(torch.tensor(steps), torch.tensor(shots))
    assert got == pytest.approx(expected)
    reversed_steps = torch.tensor([-s for s in steps])
    assert stop_step_correlation(reversed_steps, torch.tensor(shots)) == pytest.approx(-expected)
    assert stop_step_correlation(torch.full((5,), 3.0), torch.tensor(shots)) is None


def test_paired_difference_is_above_zero_only_when_its_interval_is():
    """Differences 1, −0.5, 2: mean 5/6 > 0 but the 95% t interval reaches below 0."""
    from stopwise.tasks.few_shot.metrics import paired_over_tasks

    diffs = [1.0, -0.5, 2.0]
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    lo = mean - 4.302652729911275 * sd / math.sqrt(3)  # t quantile 0.975 with 2 dof
    out = paired_over_tasks(torch.tensor(diffs) + 1.0, torch.ones(3))
    assert out["mean"] == pytest.approx(mean) and out["lo"] == pytest.approx(lo)
    assert lo < 0 < mean and out["above_zero"] is False and out["below_zero"] is False
    clear = paired_over_tasks(torch.tensor([1.0, 1.1, 0.9]), torch.zeros(3))
    assert clear["above_zero"] is True


def test_by_shots_averages_each_ks_own_tasks_by_hand():
    """Per K, the task count and the mean of each column over that K's tasks only."""
    from stopwise.tasks.few_shot.metrics import by_shots

    rows = by_shots(torch.tensor([1, 5, 1, 5, 5]), acc=torch.tensor([0.2, 0.9, 0.4, 0.6, 0.9]))
    assert [(r["shots"], r["tasks"]) for r in rows] == [(1, 2), (5, 3)]
    assert [r["acc"] for r in rows] == pytest.approx([0.3, 0.8])  # (0.2+0.4)/2, (0.9+0.6+0.9)/3


def test_a_diverged_tasks_nan_or_inf_loss_becomes_plus_inf():
    """NaN and inf losses read as +inf (a diverged task must not look perfect); finite stay."""
    from stopwise.tasks.few_shot.metrics import inf_if_not_finite

    values = torch.tensor([0.3, math.nan, math.inf, 2.0])
    assert inf_if_not_finite(values).tolist() == [pytest.approx(0.3), math.inf, math.inf, 2.0]


def test_omniglot_images_on_a_transparent_background_keep_their_ink(tmp_path):
    root = fake_omniglot(tmp_path / "white", characters=6, drawers=4)
    clear = tmp_path / "clear"
    shutil.copytree(root, clear)
    for png in clear.rglob("*.png"):  # black ink on a transparent background
        grey = np.asarray(Image.open(png))
        rgba = np.zeros((*grey.shape, 4), np.uint8)
        rgba[..., 3] = 255 - grey
        Image.fromarray(rgba, "RGBA").save(png)
    white, transparent = (
        torch.cat([s.images for s in omniglot_splits(str(r), (4, 1, 1), 0, 28, False, str(c))])
        for r, c in ((root, tmp_path / "c1"), (clear, tmp_path / "c2"))
    )
    assert torch.equal(white, transparent)


def test_omniglot_images_of_16_bits_keep_their_grey_ink(tmp_path):
    """Pillow's convert("L") clips 16-bit values at 255: grey ink (here 100 · 257) became white."""
    root = fake_omniglot(tmp_path / "eight", characters=6, drawers=4)
    for png in root.rglob("*.png"):
        grey = np.asarray(Image.open(png)).copy()
        grey[grey == 0] = 100
        Image.fromarray(grey).save(png)
    sixteen = tmp_path / "sixteen"
    shutil.copytree(root, sixteen)
    for png in sixteen.rglob("*.png"):
        Image.fromarray(np.asarray(Image.open(png)).astype(np.uint16) * 257).save(png)
    with Image.open(png) as image:
        assert image.mode.startswith("I")
    eight_bits, sixteen_bits = (
        torch.cat([s.images for s in omniglot_splits(str(r), (4, 1, 1), 0, 28, False, str(c))])
        for r, c in ((root, tmp_path / "c1"), (sixteen, tmp_path / "c2"))
    )
    assert eight_bits.max() > 100 and torch.equal(eight_bits, sixteen_bits)


@pytest.mark.parametrize("size", [16, 28, 32, 40])
def test_the_conv4_learner_is_built_for_the_configured_image_size(size):
    """Sizes from 32 on crashed in the linear head (built for 28: 1×1 after four poolings)."""
    config, _ = resolve_config(
        get_experiment("few-shot"), "quick", ["family=glyphs", f"glyphs.size={size}", "width=4"]
    )
    learner, policy = build_models(config, with_policy=True)
    logits, features = learner(torch.zeros(3, 1, size, size))
    assert logits.shape == (3, config.ways) and features.shape[1] == learner.feature_dim
    assert learner.feature_dim == 4 * (size // 16) ** 2


@pytest.mark.parametrize("damage", ["truncated", "blank"])
def test_an_unreadable_or_blank_omniglot_image_is_a_data_error_naming_it(tmp_path, damage):
    root = fake_omniglot(tmp_path / "omniglot", characters=6, drawers=4)
    png = sorted(root.rglob("*.png"))[5]
    if damage == "truncated":
        png.write_bytes(png.read_bytes()[:40])
    else:
        Image.fromarray(np.full((105, 105), 255, np.uint8)).save(png)
    with pytest.raises(DataError, match=re.escape(str(png))):
        omniglot_splits(str(root), (4, 1, 1), 0, 28, False, str(tmp_path / "cache"))


def test_changed_omniglot_images_are_new_data_for_the_cache_and_the_jobs(tmp_path):
    root = fake_omniglot(tmp_path / "omniglot", characters=8, drawers=4)
    cache = str(tmp_path / "cache")
    settings = ["family=glyphs", "vmap=false", f"data_dir={root}", "glyphs.characters=4,2,2"]
    settings += ["shots=1,2", "query=1", "ways=2"]
    config, _ = resolve_config(get_experiment("few-shot"), "tiny", settings)

    def images():
        return torch.cat(
            [s.images for s in omniglot_splits(str(root), (4, 2, 2), 0, 28, False, cache)]
        )

    before = images()
    params = [job.params for job in few_shot_jobs(config)]
    png = sorted(root.rglob("*.png"))[0]  # the same file count, another drawing
    pixels = np.full((105, 105), 255, np.uint8)
    pixels[50:90, 50:60] = 0
    Image.fromarray(pixels).save(png)
    assert not torch.equal(before, images())  # not served from the cache of the old images
    changed = [job.params for job in few_shot_jobs(config)]
    assert all(p["data"].startswith("sha256:") for p in params if "method" in p)
    assert [p.get("data") for p in changed] != [p.get("data") for p in params]
