"""Vector-symbolic algebra (holographic reduced representations) in torch, and a codebook.

The codebook is the neurosymbolic probe's vocabulary of atoms.

Why torch FFT and not a library: the operations needed are five one-liners (circular
convolution = ``irfft(rfft(a) * rfft(b))``, the involution inverse, fractional/integer powers,
unitary sampling in the Fourier domain, cleanup by dot product). ``nengo-spa`` would pull in the
whole nengo simulator and works on numpy only; ``hrr`` (1.2.3, 2023) is numpy-only and
unmaintained. Writing them in torch keeps every vector on the session's device next to the
hidden states they are compared with, batches over problems for free, and is small enough to
test exhaustively (``tests/test_vsa.py``).

Conventions (as in Dhanraj & Eliasmith 2025): all atoms are *unitary* (every Fourier coefficient
has modulus 1), so they have unit norm, binding with them preserves norms and the involution
``a*[i] = a[-i mod n]`` is their exact inverse. A digit value ``v`` is the base atom bound with
itself ``v`` times (``base**v``; ``base**0`` is the identity); digit ``i`` (0 = units) is bound
with a position atom ``P_i``; a number is the sum over its ``n_digits`` digits (leading zeros
included, so widths are fixed and decoding needs no "absent digit" test); a problem is
``bind(n1, ROLE1) + bind(n2, ROLE2) + OP``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from jaxtyping import Float, Int
from torch import Tensor

N_DIGIT_VALUES = 10


def unitary(
    dim: int, generator: torch.Generator, n: int = 1, device: torch.device | str = "cpu"
) -> Float[Tensor, "n dim"]:
    """``n`` random unitary vectors: random phases in the Fourier domain, real in time domain."""
    if dim < 4:
        raise ValueError(f"VSA dimension must be at least 4, got {dim}")
    n_freq = dim // 2 + 1
    phases = (torch.rand(n, n_freq, generator=generator, dtype=torch.float64) * 2 - 1) * torch.pi
    phases[:, 0] = 0.0  # the DC coefficient of a real signal is real: +1
    if dim % 2 == 0:
        phases[:, -1] = 0.0  # so is the Nyquist coefficient
    spectrum = torch.polar(torch.ones_like(phases), phases)
    return torch.fft.irfft(spectrum, n=dim).to(torch.float32).to(device)


def bind(a: Float[Tensor, "... dim"], b: Float[Tensor, "... dim"]) -> Float[Tensor, "... dim"]:
    """Circular convolution (broadcasts over leading dimensions)."""
    dim = a.shape[-1]
    return torch.fft.irfft(torch.fft.rfft(a, dim=-1) * torch.fft.rfft(b, dim=-1), n=dim, dim=-1)


def inverse(a: Float[Tensor, "... dim"]) -> Float[Tensor, "... dim"]:
    """The involution ``a*[i] = a[-i mod n]``: the exact inverse of a unitary vector."""
    return torch.roll(torch.flip(a, dims=[-1]), shifts=1, dims=-1)


def unbind(s: Float[Tensor, "... dim"], a: Float[Tensor, "... dim"]) -> Float[Tensor, "... dim"]:
    """``bind(s, inverse(a))``: recovers ``b`` from ``bind(a, b)`` exactly when ``a`` is unitary."""
    return bind(s, inverse(a))


def power(a: Float[Tensor, "... dim"], exponent: int | float) -> Float[Tensor, "... dim"]:
    """``a`` bound with itself ``exponent`` times (``power(a, 0)`` is the identity vector)."""
    dim = a.shape[-1]
    spectrum = torch.fft.rfft(a.to(torch.float64), dim=-1)
    return torch.fft.irfft(spectrum**exponent, n=dim, dim=-1).to(a.dtype)


def cosine(a: Float[Tensor, "... dim"], b: Float[Tensor, "... dim"]) -> Float[Tensor, ...]:
    """Cosine similarity along the last dimension."""
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


def digits_of(values: Int[Tensor, " n"], n_digits: int) -> Int[Tensor, "n n_digits"]:
    """Decimal digits, units first, with leading zeros up to ``n_digits``."""
    scale = 10 ** torch.arange(n_digits, device=values.device)
    return torch.div(values[:, None], scale, rounding_mode="floor") % 10


@dataclass
class Codebook:
    """The atoms of one VSA vocabulary: digits, digit positions, roles, operations and steps.

    Built deterministically from ``(dim, seed, n_digits, operations)``; the vectors are stored too
    so saved artefacts reload bit-exactly.
    """

    dim: int
    seed: int
    n_digits: int
    operations: tuple[str, ...]
    digit_atoms: Float[Tensor, "10 dim"]  # base**v
    positions: Float[Tensor, "n_digits dim"]
    roles: Float[Tensor, "2 dim"]
    operation_atoms: Float[Tensor, "n_ops dim"]
    step_atoms: Float[Tensor, "n_steps dim"]  # answer step j (0 = first emitted digit)
    end_atom: Float[Tensor, " dim"]  # "stop: emit the terminator"

    @classmethod
    def build(
        cls,
        dim: int,
        seed: int,
        n_digits: int,
        operations: tuple[str, ...],
        device: torch.device | str = "cpu",
    ) -> Codebook:
        """Sample every atom from one seeded generator (same inputs → same codebook)."""
        if n_digits < 1:
            raise ValueError(f"n_digits must be at least 1, got {n_digits}")
        if len(set(operations)) != len(operations) or not operations:
            raise ValueError(f"operations must be distinct and non-empty, got {operations}")
        generator = torch.Generator().manual_seed(seed)
        base = unitary(dim, generator)[0]
        digit_atoms = torch.stack([power(base, v) for v in range(N_DIGIT_VALUES)])
        return cls(
            dim=dim,
            seed=seed,
            n_digits=n_digits,
            operations=tuple(operations),
            digit_atoms=digit_atoms.to(device),
            positions=unitary(dim, generator, n_digits, device),
            roles=unitary(dim, generator, 2, device),
            operation_atoms=unitary(dim, generator, len(operations), device),
            step_atoms=unitary(dim, generator, n_digits + 1, device),
            end_atom=unitary(dim, generator, 1, device)[0],
        )

    @property
    def device(self) -> torch.device:
        """Where the atoms live."""
        return self.digit_atoms.device

    @property
    def max_value(self) -> int:
        """Largest number the codebook can represent (all nines)."""
        return 10**self.n_digits - 1

    def operation_index(self, name: str) -> int:
        """Index of operation ``name``; unknown names list the known ones."""
        if name not in self.operations:
            raise ValueError(f"unknown operation {name!r}; the codebook knows {list(self.operations)}")
        return self.operations.index(name)

    # ----------------------------------------------------------------------------------- encode
    def encode_numbers(self, values: Int[Tensor, " n"] | list[int]) -> Float[Tensor, "n dim"]:
        """Σ_i bind(base**digit_i, P_i) for each value (0 ≤ value ≤ max_value)."""
        values = torch.as_tensor(values, dtype=torch.long, device=self.device).reshape(-1)
        if values.numel() and (values.min() < 0 or values.max() > self.max_value):
            raise ValueError(
                f"numbers must lie in 0..{self.max_value} for a {self.n_digits}-digit codebook, "
                f"got {values.min().item()}..{values.max().item()}"
            )
        digits = digits_of(values, self.n_digits)
        return bind(self.digit_atoms[digits], self.positions[None]).sum(1)

    def encode_problems(
        self,
        first: Int[Tensor, " n"] | list[int],
        operation: Int[Tensor, " n"] | list[int],
        second: Int[Tensor, " n"] | list[int],
    ) -> Float[Tensor, "n dim"]:
        """bind(n1, ROLE1) + bind(n2, ROLE2) + OP for each problem (operation given as index)."""
        operation = torch.as_tensor(operation, dtype=torch.long, device=self.device).reshape(-1)
        return (
            bind(self.encode_numbers(first), self.roles[0])
            + bind(self.encode_numbers(second), self.roles[1])
            + self.operation_atoms[operation]
        )

    def answer_step_vectors(self, value: int) -> Float[Tensor, "n_steps dim"]:
        """What the decoder gets at each answer step: the cleaned-up digit to emit + a step atom.

        The answer is encoded as a number; step j (digits written most significant first)
        unbinds the position of the j-th written digit and cleans it up to its digit atom; the
        step after the last digit is the END atom. Each step also carries its STEP_j atom so a
        linear decoder can model per-step offsets.
        """
        digits = self.decode_numbers(self.encode_numbers([value]))[1][0]  # exact round-trip
        written = str(value)
        vectors = []
        for j in range(len(written) + 1):
            if j < len(written):
                position = len(written) - 1 - j
                symbol = self.digit_atoms[int(digits[position])]
            else:
                symbol = self.end_atom
            step = self.step_atoms[min(j, len(self.step_atoms) - 1)]
            vectors.append(symbol + step)
        return torch.stack(vectors)

    # ----------------------------------------------------------------------------------- decode
    def decode_numbers(
        self, vectors: Float[Tensor, "n dim"]
    ) -> tuple[Int[Tensor, " n"], Int[Tensor, "n n_digits"], Float[Tensor, "n n_digits"]]:
        """Unbind each digit position and clean up against the digit atoms.

        Returns the values, the digits (units first) and each digit's winning dot product.
        """
        values, digits, best, _ = self._clean_up_numbers(vectors)
        return values, digits, best

    def _clean_up_numbers(
        self, vectors: Float[Tensor, "n dim"]
    ) -> tuple[
        Int[Tensor, " n"], Int[Tensor, "n n_digits"], Float[Tensor, "n n_digits"], Float[Tensor, "n n_digits"]
    ]:
        """:meth:`decode_numbers` plus each digit slot's margin (winning minus runner-up score)."""
        return self._clean_up(unbind(vectors[:, None, :], self.positions[None]))  # n, n_digits, dim

    def _clean_up(
        self, unbound: Float[Tensor, "*batch n_digits dim"]
    ) -> tuple[
        Int[Tensor, " *batch"],
        Int[Tensor, "*batch n_digits"],
        Float[Tensor, "*batch n_digits"],
        Float[Tensor, "*batch n_digits"],
    ]:
        """Clean unbound digit slots up against the digit atoms: values, digits, scores, margins."""
        scores = unbound @ self.digit_atoms.T  # ..., n_digits, 10
        top2 = scores.topk(2, dim=-1)
        best, digits = top2.values[..., 0], top2.indices[..., 0]
        scale = 10 ** torch.arange(self.n_digits, device=digits.device)
        return (digits * scale).sum(-1), digits, best, best - top2.values[..., 1]

    @cached_property
    def _slot_keys(self) -> Tensor:
        """Spectra that unbind role ``r`` and digit position ``i`` in one product: ``[2, n_digits, freq]``.

        ``unbind(unbind(v, ROLE_r), P_i)`` is ``irfft(rfft(v) · rfft(ROLE_r*) · rfft(P_i*))``; the
        atoms are constants, so their spectra are computed once per codebook and every operand
        digit slot of a batch is unbound by one forward and one inverse FFT.
        """
        roles = torch.fft.rfft(inverse(self.roles), dim=-1)
        positions = torch.fft.rfft(inverse(self.positions), dim=-1)
        return roles[:, None] * positions[None]

    def operation_scores(self, vectors: Float[Tensor, "n dim"]) -> Float[Tensor, "n n_ops"]:
        """Dot product of each vector with each operation atom.

        Atoms have unit norm and a clean problem holds its operation atom with weight 1, so the
        score is the estimated weight of that operation (≈1 present, ≈0 absent): the quantity
        the paper's 0.8 threshold applies to. (A cosine would be ≈1/√(terms) even for a perfect
        problem vector, so a fixed threshold on it would mean nothing.)
        """
        return vectors @ self.operation_atoms.T

    def decode_problems(self, vectors: Float[Tensor, "n dim"]) -> ProblemReadout:
        """Operation by largest score, operands by unbinding the roles and cleaning up digits."""
        scores = self.operation_scores(vectors)
        spectrum = torch.fft.rfft(vectors, dim=-1)[:, None, None, :]
        slots = torch.fft.irfft(spectrum * self._slot_keys, n=self.dim, dim=-1)  # n, 2 roles, n_digits, dim
        values, digits, _, margins = self._clean_up(slots)
        first, second = values[:, 0], values[:, 1]
        first_digits, second_digits = digits[:, 0], digits[:, 1]
        first_margins, second_margins = margins[:, 0], margins[:, 1]
        top2 = scores.topk(min(2, scores.shape[-1]), dim=-1).values
        operation_margin = top2[:, 0] - top2[:, 1] if scores.shape[-1] > 1 else top2[:, 0]
        return ProblemReadout(
            operation_scores=scores,
            operation=scores.argmax(-1),
            first=first,
            second=second,
            first_digits=first_digits,
            second_digits=second_digits,
            operation_margin=operation_margin,
            first_margins=first_margins,
            second_margins=second_margins,
        )


@dataclass
class ProblemReadout:
    """What decoding a batch of problem vectors gave (tensors on the codebook's device)."""

    operation_scores: Float[Tensor, "n n_ops"]
    operation: Int[Tensor, " n"]
    first: Int[Tensor, " n"]
    second: Int[Tensor, " n"]
    first_digits: Int[Tensor, "n n_digits"]
    second_digits: Int[Tensor, "n n_digits"]
    # Read-out confidence per slot: winning minus runner-up score (the operation among the
    # operation atoms, each digit of each operand among the ten digit atoms). A clean problem
    # vector gives ≈1 in every slot; a slot near 0 is a coin toss between two symbols.
    operation_margin: Float[Tensor, " n"]
    first_margins: Float[Tensor, "n n_digits"]
    second_margins: Float[Tensor, "n n_digits"]

    def confidence(self) -> Float[Tensor, " n"]:
        """The weakest slot's margin: the problem is read only as surely as its least sure symbol."""
        slots = torch.cat([self.operation_margin[:, None], self.first_margins, self.second_margins], 1)
        return slots.min(-1).values
