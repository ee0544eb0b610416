import torch
import torch.nn.functional as F

from distill.losses import hinton_loss, kd_kl_loss


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
