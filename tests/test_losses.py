import math

import pytest
import torch
import torch.nn.functional as F

from distill.losses import (
    DIVERGENCES,
    attention_transfer,
    cross_entropy,
    forward_kl,
    generalized_jsd,
    hidden_cosine,
    hidden_mse,
    hinton_loss,
    js_divergence,
    kd_kl_loss,
    logit_mse,
    pkd_loss,
    reverse_kl,
    rkd_angle,
    rkd_distance,
    similarity_preserving,
    skew_kl,
    total_variation,
)


def test_kd_is_zero_for_identical_logits_and_positive_otherwise():
    logits = torch.randn(8, 5)
    assert kd_kl_loss(logits, logits.clone(), 4.0).item() < 1e-6
    assert kd_kl_loss(logits, torch.randn(8, 5), 4.0).item() > 0


def test_kd_matches_hand_computed_value():
    s, t = torch.tensor([[0.0, 0.0]]), torch.tensor([[2.0, 0.0]])
    T = 2.0
    p = torch.softmax(t / T, dim=-1)
    q = torch.softmax(s / T, dim=-1)
    expected = (p * (p.log() - q.log())).sum() * T * T
    assert torch.allclose(kd_kl_loss(s, t, T), expected)


def test_t_squared_keeps_gradient_scale_comparable():
    torch.manual_seed(0)
    teacher = torch.randn(64, 10) * 3
    norms = []
    for T in (2.0, 8.0):
        student = torch.zeros(64, 10, requires_grad=True)
        kd_kl_loss(student, teacher, T).backward()
        norms.append(student.grad.norm().item())
    # Without T^2 the ratio would be ~ (8/2)^2 = 16; with it the scales stay within a small factor.
    assert 0.25 < norms[1] / norms[0] < 4


def test_hinton_with_alpha_zero_is_cross_entropy_on_gold_rows():
    logits, teacher = torch.randn(6, 3), torch.randn(6, 3)
    labels = torch.tensor([0, 1, -100, 2, -100, 1])
    gold = labels != -100
    assert torch.allclose(hinton_loss(logits, teacher, labels, 4.0, 0.0),
                          F.cross_entropy(logits[gold], labels[gold]))


def test_hinton_mixes_terms_and_survives_a_batch_without_gold():
    logits, teacher = torch.randn(4, 3), torch.randn(4, 3)
    none = torch.full((4,), -100)
    assert torch.allclose(hinton_loss(logits, teacher, none, 2.0, 0.5), 0.5 * kd_kl_loss(logits, teacher, 2.0))
    labels = torch.tensor([0, 1, 2, 0])
    mixed = hinton_loss(logits, teacher, labels, 2.0, 0.3)
    expected = 0.3 * kd_kl_loss(logits, teacher, 2.0) + 0.7 * F.cross_entropy(logits, labels)
    assert torch.allclose(mixed, expected)


# ---- the full loss menu --------------------------------------------------------------------

NAMES = sorted(DIVERGENCES)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tensors here are tiny: waking a second intra-op thread on a busy CPU costs
    milliseconds per op (measured ~1000x slower on a loaded 2-core box), so run single-threaded."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
SHAPES = [(6, 5), (3, 4, 7)]


def _pair(shape, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * scale, torch.randn(shape, generator=g) * scale


def _seq_mask(batch=3, length=4):
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[0, 2:] = False
    mask[2, 1:] = False
    return mask


def test_registry_has_the_documented_names():
    assert set(DIVERGENCES) == {"kl", "forward_kl", "reverse_kl", "js", "gjsd", "skew_kl",
                                "skew_reverse_kl", "tvd", "logit_mse"}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_divergence_is_zero_for_identical_and_non_negative_otherwise(name, shape, temperature):
    loss = DIVERGENCES[name]
    s, t = _pair(shape)
    assert abs(loss(s, s.clone(), temperature=temperature, mask=None).item()) < 1e-6
    for seed in range(3):
        s, t = _pair(shape, seed, scale=2.0)
        value = loss(s, t, temperature=temperature, mask=None)
        assert value.dim() == 0 and value.item() > 0


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_divergence_gradients_are_finite_even_for_large_logits(name, temperature):
    for shape in SHAPES:
        s, t = _pair(shape, seed=1)
        s = (torch.sign(s) * 50).requires_grad_()
        t = torch.sign(t) * -50
        value = DIVERGENCES[name](s, t, temperature=temperature, mask=None)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(s.grad).all()
        # Identical inputs sit at the minimum: the gradient exists and is ~0.
        s2 = t.clone().requires_grad_()
        DIVERGENCES[name](s2, t, temperature=temperature, mask=None).backward()
        assert torch.isfinite(s2.grad).all() and s2.grad.abs().max() < 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_masked_positions_do_not_matter(name):
    loss = DIVERGENCES[name]
    s, t = _pair((3, 4, 7), seed=2)
    mask = _seq_mask()
    reference = loss(s, t, temperature=2.0, mask=mask)
    garbage = s.clone()
    garbage[~mask] = float("nan")
    garbage[0, 3, 0] = 1e6
    garbage.requires_grad_()
    value = loss(garbage, t, temperature=2.0, mask=mask)
    assert torch.allclose(value, reference)
    value.backward()
    assert torch.isfinite(garbage.grad).all() and (garbage.grad[~mask] == 0).all()
    # Token-level without a mask is the mean over all positions; a 2-D mask works too.
    kept = loss(s[mask], t[mask], temperature=2.0, mask=None)
    assert torch.allclose(reference, kept)
    rows = torch.tensor([True, False, True])
    assert torch.allclose(loss(s[:, 0], t[:, 0], temperature=2.0, mask=rows),
                          loss(s[rows, 0], t[rows, 0], temperature=2.0, mask=None))


@pytest.mark.parametrize("name", NAMES)
def test_fully_masked_input_gives_a_zero_with_grad(name):
    s, t = _pair((3, 4, 7), seed=3)
    s.requires_grad_()
    value = DIVERGENCES[name](s, t, temperature=2.0, mask=torch.zeros(3, 4, dtype=torch.bool))
    assert value.item() == 0 and value.grad_fn is not None
    value.backward()
    assert (s.grad == 0).all()


@pytest.mark.parametrize("name", NAMES)
def test_shape_mismatch_names_both_shapes(name):
    with pytest.raises(ValueError, match=r"\(4, 5\).*\(4, 6\)"):
        DIVERGENCES[name](torch.zeros(4, 5), torch.zeros(4, 6), temperature=1.0, mask=None)
    with pytest.raises(ValueError, match="mask"):
        DIVERGENCES[name](torch.zeros(4, 5), torch.zeros(4, 5), temperature=1.0,
                          mask=torch.ones(3, dtype=torch.bool))


def test_registry_passes_options_and_rejects_unknown_ones():
    s, t = _pair((6, 5), seed=4)
    assert torch.allclose(DIVERGENCES["gjsd"](s, t, temperature=2.0, mask=None, beta=0.3),
                          generalized_jsd(s, t, beta=0.3, temperature=2.0))
    assert torch.allclose(DIVERGENCES["skew_reverse_kl"](s, t, temperature=2.0, mask=None, skew=0.2),
                          skew_kl(s, t, skew=0.2, temperature=2.0, reverse=True))
    assert torch.allclose(DIVERGENCES["kl"](s, t, temperature=2.0, mask=None), kd_kl_loss(s, t, 2.0))
    with pytest.raises(TypeError):
        DIVERGENCES["kl"](s, t, temperature=2.0, mask=None, beta=0.3)


def test_js_and_tvd_are_symmetric_but_kl_is_not():
    s, t = _pair((6, 5), seed=5, scale=2.0)
    for loss in (js_divergence, total_variation):
        assert torch.allclose(loss(s, t, temperature=2.0), loss(t, s, temperature=2.0))
    a, b = torch.tensor([[3.0, 0.0, 0.0]]), torch.tensor([[0.0, 0.0, 0.0]])
    assert not torch.allclose(forward_kl(a, b), reverse_kl(a, b), atol=1e-3)
    assert torch.allclose(forward_kl(a, b), reverse_kl(b, a))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_gjsd_and_skew_limits(shape, temperature):
    s, t = _pair(shape, seed=6, scale=2.0)
    fwd, rev = forward_kl(s, t, temperature), reverse_kl(s, t, temperature)
    assert torch.allclose(generalized_jsd(s, t, beta=0.0, temperature=temperature), fwd)
    assert torch.allclose(generalized_jsd(s, t, beta=1.0, temperature=temperature), rev)
    assert torch.allclose(generalized_jsd(s, t, beta=0.5, temperature=temperature),
                          js_divergence(s, t, temperature))
    assert torch.allclose(skew_kl(s, t, skew=0.0, temperature=temperature), fwd)
    assert torch.allclose(skew_kl(s, t, skew=0.0, temperature=temperature, reverse=True), rev)
    # Interior values stay between 0 and the unskewed divergence.
    assert 0 < skew_kl(s, t, skew=0.3, temperature=temperature) < fwd


def test_js_matches_a_probability_space_reference():
    s, t = _pair((6, 5), seed=7, scale=2.0)
    p, q = torch.softmax(t, -1), torch.softmax(s, -1)
    m = 0.5 * (p + q)
    expected = (0.5 * (p * (p / m).log()).sum(-1) + 0.5 * (q * (q / m).log()).sum(-1)).mean()
    assert torch.allclose(js_divergence(s, t), expected, atol=1e-6)


def test_invalid_beta_skew_and_temperature_raise():
    s, t = _pair((2, 3))
    for beta in (-0.1, 1.1):
        with pytest.raises(ValueError, match="beta"):
            generalized_jsd(s, t, beta=beta)
    for skew in (-0.1, 1.0):
        with pytest.raises(ValueError, match="skew"):
            skew_kl(s, t, skew=skew)
    with pytest.raises(ValueError, match="temperature"):
        forward_kl(s, t, temperature=0.0)


def test_t_squared_factor_keeps_gradient_norm_flat_across_temperatures():
    s0, teacher = _pair((64, 10), seed=8, scale=2.0)
    norms = {}
    for T in (2.0, 4.0, 8.0):
        student = s0.clone().requires_grad_()
        kd_kl_loss(student, teacher, T).backward()
        norms[T] = student.grad.norm().item()
    assert max(norms.values()) / min(norms.values()) < 2
    # The same gradients without the T^2 factor would shrink by ~(8/2)^2 = 16.
    unscaled = {T: n / T ** 2 for T, n in norms.items()}
    assert unscaled[8.0] / unscaled[2.0] < 1 / 8


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_forward_kl_equals_batchmean_kl_div(temperature):
    s, t = _pair((6, 5), seed=9, scale=2.0)
    expected = F.kl_div(F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1),
                        log_target=True, reduction="batchmean") * temperature ** 2
    assert torch.allclose(forward_kl(s, t, temperature), expected)
    assert torch.allclose(kd_kl_loss(s, t, temperature), expected)


def test_two_class_golden_values():
    # Teacher logits [0, 0] -> p_t = [1/2, 1/2]; student logits [ln 3, 0] -> p_s = [3/4, 1/4].
    s, t = torch.tensor([[math.log(3.0), 0.0]]), torch.tensor([[0.0, 0.0]])
    ln = math.log
    golden = {
        "forward_kl": 0.5 * ln(0.5 / 0.75) + 0.5 * ln(0.5 / 0.25),
        "reverse_kl": 0.75 * ln(0.75 / 0.5) + 0.25 * ln(0.25 / 0.5),
        # M = [0.625, 0.375]
        "js": 0.5 * (0.5 * ln(0.5 / 0.625) + 0.5 * ln(0.5 / 0.375))
              + 0.5 * (0.75 * ln(0.75 / 0.625) + 0.25 * ln(0.25 / 0.375)),
        "tvd": 0.5 * (abs(0.75 - 0.5) + abs(0.25 - 0.5)),
        "logit_mse": (ln(3.0) ** 2 + 0.0) / 2,
    }
    for name, expected in golden.items():
        assert DIVERGENCES[name](s, t, temperature=1.0, mask=None).item() == pytest.approx(expected, abs=1e-6)
    # GJSD beta = 0.25: M = 0.25 p_t + 0.75 p_s = [0.6875, 0.3125].
    gjsd = (0.25 * (0.5 * ln(0.5 / 0.6875) + 0.5 * ln(0.5 / 0.3125))
            + 0.75 * (0.75 * ln(0.75 / 0.6875) + 0.25 * ln(0.25 / 0.3125)))
    assert generalized_jsd(s, t, beta=0.25).item() == pytest.approx(gjsd, abs=1e-6)
    # Skew KL, skew = 0.5: KL(p_t || [0.625, 0.375]); skew reverse: KL(p_s || [0.625, 0.375]).
    assert skew_kl(s, t, skew=0.5).item() == pytest.approx(0.5 * ln(0.5 / 0.625) + 0.5 * ln(0.5 / 0.375), abs=1e-6)
    assert skew_kl(s, t, skew=0.5, reverse=True).item() == pytest.approx(
        0.75 * ln(0.75 / 0.625) + 0.25 * ln(0.25 / 0.375), abs=1e-6)
    assert cross_entropy(s, torch.tensor([0])).item() == pytest.approx(-ln(0.75), abs=1e-6)
    assert logit_mse(s, t).item() == pytest.approx(ln(3.0) ** 2 / 2, abs=1e-6)


def test_cross_entropy_skips_ignored_rows_and_survives_none():
    s, _ = _pair((3, 4, 7), seed=10)
    labels = torch.tensor([[1, 2, -100, 0], [-100, -100, 3, 3], [6, -100, -100, -100]])
    keep = labels != -100
    assert torch.allclose(cross_entropy(s, labels), F.cross_entropy(s[keep], labels[keep]))
    s.requires_grad_()
    value = cross_entropy(s, torch.full((3, 4), -100))
    assert value.item() == 0 and value.grad_fn is not None
    value.backward()
    assert (s.grad == 0).all()
    with pytest.raises(ValueError, match="labels shape"):
        cross_entropy(s, torch.zeros(3, dtype=torch.long))


# ---- feature-based ---------------------------------------------------------------------------

@pytest.mark.parametrize("loss", [hidden_mse, hidden_cosine])
def test_hidden_losses_properties(loss):
    s, t = _pair((3, 4, 8), seed=11)
    assert abs(loss(s, s.clone()).item()) < 1e-6
    assert loss(s, t).item() > 0
    mask = _seq_mask()
    reference = loss(s, t, mask=mask)
    garbage = s.clone()
    garbage[~mask] = float("nan")
    garbage.requires_grad_()
    value = loss(garbage, t, mask=mask)
    assert torch.allclose(value, reference)
    value.backward()
    assert torch.isfinite(garbage.grad).all()
    empty = loss(s.requires_grad_(), t, mask=torch.zeros(3, 4, dtype=torch.bool))
    assert empty.item() == 0 and empty.grad_fn is not None
    with pytest.raises(ValueError, match=r"\(3, 4, 8\).*\(3, 4, 9\)"):
        loss(s, torch.zeros(3, 4, 9))


def test_hidden_mse_golden_and_cosine_scale_invariance():
    s, t = torch.tensor([[[1.0, 2.0]]]), torch.tensor([[[0.0, 0.0]]])
    assert hidden_mse(s, t).item() == pytest.approx(2.5)
    h, _ = _pair((2, 3, 5), seed=12)
    assert abs(hidden_cosine(h * 7.0, h).item()) < 1e-6
    assert hidden_cosine(-h, h).item() == pytest.approx(2.0, abs=1e-6)


def _attention(batch, heads, length, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(batch, heads, length, length, generator=g) * 2, dim=-1)


@pytest.mark.parametrize("kind", ["kl", "mse"])
def test_attention_transfer_properties(kind):
    s, t = _attention(2, 4, 5, seed=13), _attention(2, 4, 5, seed=14)
    assert abs(attention_transfer(t.clone(), t, kind=kind).item()) < 1e-6
    assert attention_transfer(s, t, kind=kind).item() > 0
    mask = torch.tensor([[True, True, True, False, False], [True] * 5])
    reference = attention_transfer(s, t, mask=mask, kind=kind)
    garbage = s.clone()
    garbage[0, :, 3:] = float("nan")
    garbage.requires_grad_()
    value = attention_transfer(garbage, t, mask=mask, kind=kind)
    assert torch.allclose(value, reference)
    value.backward()
    assert torch.isfinite(garbage.grad).all()


def test_attention_transfer_with_different_head_counts_averages_heads():
    s, t = _attention(2, 2, 5, seed=15), _attention(2, 6, 5, seed=16)
    for kind in ("kl", "mse"):
        value = attention_transfer(s, t, kind=kind)
        expected = attention_transfer(s.mean(1, keepdim=True), t.mean(1, keepdim=True), kind=kind)
        assert torch.isfinite(value) and value.item() > 0 and torch.allclose(value, expected)
    # Same mean map, different head split: zero.
    assert abs(attention_transfer(t.mean(1, keepdim=True).expand(2, 3, 5, 5), t).item()) < 1e-6


def test_attention_transfer_kl_golden_and_errors():
    s = torch.tensor([[[[0.75, 0.25]]]])
    t = torch.tensor([[[[0.5, 0.5]]]])
    expected = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert attention_transfer(s, t).item() == pytest.approx(expected, abs=1e-6)
    assert attention_transfer(s, t, kind="mse").item() == pytest.approx(0.0625)
    with pytest.raises(ValueError, match="kind"):
        attention_transfer(s, t, kind="l1")
    with pytest.raises(ValueError, match=r"\(2, 2, 3, 3\).*\(2, 2, 4, 4\)"):
        attention_transfer(_attention(2, 2, 3, 0), _attention(2, 2, 4, 0))


def test_pkd_zero_for_positive_scale_and_positive_otherwise():
    states = [torch.randn(4, 6, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    scaled = [s * (i + 0.5) for i, s in enumerate(states)]
    assert abs(pkd_loss(scaled, states).item()) < 1e-6
    other = [s.flip(0) for s in states]
    value = pkd_loss(states, other)
    assert value.item() > 0
    assert torch.allclose(value, pkd_loss(torch.stack(states), torch.stack(other)))
    # Opposite directions: ||u - (-u)||^2 = 4 for unit vectors.
    assert pkd_loss([states[0]], [-states[0]]).item() == pytest.approx(4.0, abs=1e-5)
    with pytest.raises(ValueError):
        pkd_loss(states, states[:2])
    with pytest.raises(ValueError, match=r"\(4, 6\).*\(4, 5\)"):
        pkd_loss([states[0]], [torch.zeros(4, 5)])


# ---- relation-based --------------------------------------------------------------------------

@pytest.mark.parametrize("loss", [rkd_distance, rkd_angle, similarity_preserving])
def test_relation_losses_zero_positive_and_finite_gradients(loss):
    g = torch.Generator().manual_seed(17)
    t = torch.randn(6, 8, generator=g)
    assert abs(loss(t.clone(), t).item()) < 1e-6
    s = torch.randn(6, 4, generator=g)  # widths may differ
    s[1] = s[0]  # a duplicated row: zero distance, zero difference vector
    s.requires_grad_()
    value = loss(s, t)
    assert value.item() > 0
    value.backward()
    assert torch.isfinite(s.grad).all()
    teacher = t.clone().requires_grad_()
    loss(torch.randn(6, 4, requires_grad=True), teacher).backward()
    assert teacher.grad is None
    with pytest.raises(ValueError, match=r"\(6, 4\).*\(5, 8\)"):
        loss(torch.zeros(6, 4), torch.zeros(5, 8))


@pytest.mark.parametrize("loss, smallest", [(rkd_distance, 2), (rkd_angle, 3), (similarity_preserving, 2)])
def test_relation_losses_on_tiny_batches_give_zero_with_grad(loss, smallest):
    for batch in range(smallest):
        s = torch.randn(batch, 4, requires_grad=True)
        value = loss(s, torch.randn(batch, 8))
        assert value.item() == 0 and value.grad_fn is not None
        value.backward()
        assert torch.isfinite(s.grad).all()
    assert torch.isfinite(loss(torch.randn(smallest, 4), torch.randn(smallest, 8)))


def test_rkd_invariances():
    g = torch.Generator().manual_seed(18)
    s, t = torch.randn(5, 4, generator=g), torch.randn(5, 8, generator=g)
    assert torch.allclose(rkd_distance(s, t * 3.7), rkd_distance(s, t), atol=1e-6)
    assert torch.allclose(rkd_angle(s, t + 5.0), rkd_angle(s, t), atol=1e-6)
    assert torch.allclose(rkd_angle(s, t * 2.0 - 1.0), rkd_angle(s, t), atol=1e-6)


def test_similarity_preserving_zero_for_rotated_features():
    g = torch.Generator().manual_seed(19)
    t = torch.randn(6, 5, generator=g)
    rotation, _ = torch.linalg.qr(torch.randn(5, 5, generator=g))
    assert abs(similarity_preserving(t @ rotation, t).item()) < 1e-6
    # Per-example flattening: (B, C, H) features work as (B, C*H).
    f = torch.randn(6, 2, 3, generator=g)
    assert torch.allclose(similarity_preserving(f, t), similarity_preserving(f.flatten(1), t))


# ---- a tiny student actually learns with every divergence -----------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_linear_student_fits_fixed_teacher_logits(name):
    torch.manual_seed(20)
    x = torch.randn(32, 8)
    with torch.no_grad():
        teacher_logits = torch.nn.Linear(8, 5)(x) * 2
    student = torch.nn.Linear(8, 5)
    loss_fn = DIVERGENCES[name]
    initial = loss_fn(student(x), teacher_logits, temperature=1.0, mask=None).item()
    for _ in range(100):
        # Plain SGD, lr 0.5, by hand: torch.optim's first step imports torch._dynamo (seconds here).
        grads = torch.autograd.grad(loss_fn(student(x), teacher_logits, temperature=1.0, mask=None),
                                    list(student.parameters()))
        with torch.no_grad():
            for param, grad in zip(student.parameters(), grads):
                param -= 0.5 * grad
    final = loss_fn(student(x), teacher_logits, temperature=1.0, mask=None).item()
    assert final < 0.5 * initial
