"""Properties of the HRR algebra and the neurosymbolic codebook."""

from __future__ import annotations

import pytest
import torch

from lenslab.probes.neurosymbolic import vsa
from lenslab.probes.neurosymbolic.tasks import ALL_OPERATIONS


def _atoms(n: int, dim: int = 1024, seed: int = 0) -> torch.Tensor:
    return vsa.unitary(dim, torch.Generator().manual_seed(seed), n)


def test_unitary_vectors_have_unit_spectrum_and_norm():
    atoms = _atoms(5, dim=512)
    spectrum = torch.fft.rfft(atoms.double(), dim=-1).abs()
    assert torch.allclose(spectrum, torch.ones_like(spectrum), atol=1e-5)
    assert torch.allclose(atoms.norm(dim=-1), torch.ones(5), atol=1e-5)


@pytest.mark.parametrize("dim", [256, 257, 2048])
def test_unbinding_inverts_binding_for_unitary_vectors(dim):
    a, b = _atoms(2, dim)
    recovered = vsa.unbind(vsa.bind(a, b), a)
    assert torch.allclose(recovered, b, atol=1e-5)
    # the involution is the exact inverse: a ⊛ a* = identity (delta at 0)
    identity = vsa.bind(a, vsa.inverse(a))
    delta = torch.zeros(dim)
    delta[0] = 1.0
    assert torch.allclose(identity, delta, atol=1e-5)


def test_binding_is_commutative_and_associative():
    a, b, c = _atoms(3)
    assert torch.allclose(vsa.bind(a, b), vsa.bind(b, a), atol=1e-6)
    assert torch.allclose(vsa.bind(vsa.bind(a, b), c), vsa.bind(a, vsa.bind(b, c)), atol=1e-5)


def test_power_is_repeated_self_binding():
    (base,) = _atoms(1)
    by_hand = base
    for _ in range(3):
        by_hand = vsa.bind(by_hand, base)
    assert torch.allclose(vsa.power(base, 4), by_hand, atol=1e-5)
    assert torch.allclose(vsa.power(base, 0)[0], torch.tensor(1.0), atol=1e-6)


def test_unrelated_vectors_are_nearly_orthogonal():
    dim = 2048
    atoms = _atoms(40, dim)
    sims = atoms @ atoms.T
    off = sims[~torch.eye(40, dtype=torch.bool)]
    assert off.abs().max() < 6 / dim**0.5  # ~ N(0, 1/dim)
    assert abs(float(off.mean())) < 0.01
    # binding makes a vector dissimilar to both factors
    a, b = atoms[:2]
    assert abs(float(vsa.bind(a, b) @ a)) < 6 / dim**0.5


def test_codebook_is_deterministic_per_seed():
    one = vsa.Codebook.build(256, 3, 2, ("add", "mul"))
    two = vsa.Codebook.build(256, 3, 2, ("add", "mul"))
    other = vsa.Codebook.build(256, 4, 2, ("add", "mul"))
    assert torch.equal(one.positions, two.positions)
    assert not torch.allclose(one.positions, other.positions)


def test_every_number_round_trips_exactly():
    book = vsa.Codebook.build(2048, 0, 4, ALL_OPERATIONS)
    values = torch.arange(0, 10_000)
    decoded, digits, confidence = book.decode_numbers(book.encode_numbers(values))
    assert torch.equal(decoded, values)
    assert torch.equal(digits, vsa.digits_of(values, 4))
    assert float(confidence.min()) > 0.5  # clean digit atoms: score ≈ 1, far from the 0 of the others


def test_every_problem_round_trips_for_operands_in_range():
    book = vsa.Codebook.build(2048, 1, 4, ALL_OPERATIONS)
    grid = torch.cartesian_prod(torch.arange(100), torch.arange(100))
    first, second = grid[:, 0], grid[:, 1]
    operation = torch.arange(len(first)) % len(ALL_OPERATIONS)
    readout = book.decode_problems(book.encode_problems(first, operation, second))
    assert torch.equal(readout.first, first)
    assert torch.equal(readout.second, second)
    assert torch.equal(readout.operation, operation)
    top = readout.operation_scores.max(-1).values
    # the operation atom's weight in a clean problem is 1 plus crosstalk ~ N(0, 8/dim) from the
    # eight bound digit terms: nearly every clean problem clears the 0.8 threshold
    assert abs(float(top.mean()) - 1.0) < 0.01
    assert float((top > 0.8).float().mean()) > 0.99
    runner_up = readout.operation_scores.topk(2, dim=-1).values[:, 1]
    assert float(runner_up.max()) < 0.5


def test_decoding_problems_matches_unbinding_role_then_position_by_hand():
    """decode_problems unbinds every operand digit slot with one FFT pair; on noisy vectors (near
    ties, where a rounding difference would flip a digit) it must give what unbinding the role,
    then each digit position, then cleaning up against the digit atoms gives, slot by slot."""
    book = vsa.Codebook.build(512, 2, 3, ("add", "mul", "gcd"))
    generator = torch.Generator().manual_seed(5)
    clean = book.encode_problems(torch.tensor([7, 123, 999, 40]), [0, 1, 2, 0], torch.tensor([0, 55, 1, 404]))
    vectors = torch.cat([clean, clean + 0.8 * torch.randn(clean.shape, generator=generator)])
    readout = book.decode_problems(vectors)
    for role, values, digits, margins in (
        (0, readout.first, readout.first_digits, readout.first_margins),
        (1, readout.second, readout.second_digits, readout.second_margins),
    ):
        operand = vsa.unbind(vectors, book.roles[role][None])
        for position in range(book.n_digits):
            scores = vsa.unbind(operand, book.positions[position][None]) @ book.digit_atoms.T
            top2 = scores.topk(2, dim=-1).values
            assert torch.equal(digits[:, position], scores.argmax(-1))
            assert torch.allclose(margins[:, position], top2[:, 0] - top2[:, 1], atol=1e-5)
        assert torch.equal(values, (digits * 10 ** torch.arange(book.n_digits)).sum(-1))
    assert torch.equal(readout.first[:4], torch.tensor([7, 123, 999, 40]))
    assert torch.equal(readout.second[:4], torch.tensor([0, 55, 1, 404]))


def test_answer_step_vectors_hold_the_digits_to_write():
    book = vsa.Codebook.build(1024, 0, 4, ("add",))
    steps = book.answer_step_vectors(307)
    assert steps.shape == (4, 1024)  # three digits, then the end step
    for j, digit in enumerate([3, 0, 7]):
        scores = (steps[j] - book.step_atoms[j]) @ book.digit_atoms.T
        assert int(scores.argmax()) == digit
    assert torch.allclose(steps[3], book.end_atom + book.step_atoms[3])


def test_codebook_rejects_out_of_range_numbers():
    book = vsa.Codebook.build(256, 0, 2, ("add",))
    with pytest.raises(ValueError, match=r"0\.\.99"):
        book.encode_numbers([100])
    with pytest.raises(ValueError, match="unknown operation"):
        book.operation_index("pow")
    with pytest.raises(ValueError, match="at least 4"):
        vsa.unitary(2, torch.Generator())
