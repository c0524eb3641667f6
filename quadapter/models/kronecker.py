"""Kronecker-factored linear layers (KnGPT2: Edalati et al., ACL 2022).

A weight ``W`` [out, in] with ``out = m1·m2`` and ``in = n1·n2`` is replaced by a sum of ``r``
Kronecker products ``Σ_k A_k ⊗ B_k`` (``A_k`` [m1, n1], ``B_k`` [m2, n2]): ``r·(m1·n1 + m2·n2)``
parameters instead of ``m1·m2·n1·n2``. The product is never formed: with the input viewed as
``X`` [n1, n2], ``(A ⊗ B)·vec(X) = vec(A·X·Bᵀ)`` (row-major vec), two small matmuls.

The factors start at the nearest Kronecker product of the pretrained weight (Van Loan & Pitsianis):
rearranging ``W`` so that each [m2, n2] block becomes a row, ``R(W)`` [m1·n1, m2·n2], turns
``‖W − Σ A_k ⊗ B_k‖_F`` into ``‖R(W) − Σ vec(A_k) vec(B_k)ᵀ‖_F``, whose minimizer is the rank-r
truncated SVD of ``R(W)`` (Eckart–Young): exact when ``W`` is such a sum.

An embedding table [V, d] factors the same way (``KroneckerEmbedding``: a token's row is the
Kronecker product of one row of each factor), and a head tied to it reuses its factors.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def rearrange(weight: Tensor, a_shape: tuple[int, int], b_shape: tuple[int, int]) -> Tensor:
    """``R(W)``: row ``i1·n1 + j1`` holds the block ``W[i1·m2:(i1+1)·m2, j1·n2:(j1+1)·n2]``, flattened."""
    (m1, n1), (m2, n2) = a_shape, b_shape
    if weight.shape != (m1 * m2, n1 * n2):
        raise ValueError(f"a weight of shape {tuple(weight.shape)} is not [{m1}·{m2}, {n1}·{n2}]: choose "
                         f"factor shapes whose products are its output and input sizes")
    return weight.reshape(m1, m2, n1, n2).permute(0, 2, 1, 3).reshape(m1 * n1, m2 * n2)


def nearest_kronecker(weight: Tensor, a_shape: tuple[int, int], b_shape: tuple[int, int],
                      rank: int = 1) -> tuple[Tensor, Tensor]:
    """Factors ``A`` [rank, m1, n1] and ``B`` [rank, m2, n2] minimizing ``‖W − Σ_k A_k ⊗ B_k‖_F``.

    The singular values are split evenly (``√σ`` into each factor), so neither factor's scale
    dwarfs the other's when they train.
    """
    r = rearrange(weight.detach().double(), a_shape, b_shape)
    if not 1 <= rank <= min(r.shape):
        raise ValueError(f"rank {rank} must be in 1..{min(r.shape)} for factors {a_shape} and {b_shape}")
    u, s, vh = torch.linalg.svd(r, full_matrices=False)
    root = s[:rank].sqrt()
    a = (u[:, :rank] * root).T.reshape(rank, *a_shape)
    b = (vh[:rank].T * root).T.reshape(rank, *b_shape)
    return a.to(weight.dtype), b.to(weight.dtype)


def kron_sum(a: Tensor, b: Tensor) -> Tensor:
    """``Σ_k A_k ⊗ B_k`` materialized (for tests, saving and export; the forward never builds it)."""
    return sum(torch.kron(a[k], b[k]) for k in range(a.shape[0]))


class KroneckerLinear(nn.Module):
    """``y = x·(Σ_k A_k ⊗ B_k)ᵀ + bias``: an ``nn.Linear`` of ``n1·n2 → m1·m2`` features whose weight
    is a sum of ``rank`` Kronecker products, computed as ``Σ_k A_k·X·B_kᵀ`` on each input viewed as
    ``X`` [n1, n2].

    The factors live in two bias-free ``nn.Linear`` children, the two matmuls an integer kernel runs:
    ``right`` (weight ``[B_1; …; B_r]``, [r·m2, n2]) maps ``X``'s rows to ``Z`` [n1, r·m2], and
    ``left`` (weight ``[A_1 … A_r]``, [m1, r·n1]) contracts ``Z`` over (k, n1). Quantization then
    needs nothing special: the quantizer sites of a factored layer are these two linears
    (``quadapter.models.sites``), each with its own input (``X``, then ``Z``) and weight.
    """

    def __init__(self, a: Tensor, b: Tensor, bias: Tensor | None = None) -> None:
        super().__init__()
        if a.dim() != 3 or b.dim() != 3 or a.shape[0] != b.shape[0]:
            raise ValueError(f"factors must be [rank, m1, n1] and [rank, m2, n2], got {tuple(a.shape)} and "
                             f"{tuple(b.shape)}")
        (r, m1, n1), (_, m2, n2) = a.shape, b.shape
        self.a_shape, self.b_shape, self.rank = (m1, n1), (m2, n2), r
        self.right = nn.Linear(n2, r * m2, bias=False, device=b.device, dtype=b.dtype)
        self.left = nn.Linear(r * n1, m1, bias=False, device=a.device, dtype=a.dtype)
        with torch.no_grad():
            self.right.weight.copy_(b.reshape(r * m2, n2))
            self.left.weight.copy_(a.permute(1, 0, 2).reshape(m1, r * n1))
        self.out_features, self.in_features = m1 * m2, n1 * n2
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone().reshape(self.out_features))

    @classmethod
    def from_weight(cls, weight: Tensor, bias: Tensor | None, a_shape: tuple[int, int],
                    b_shape: tuple[int, int], rank: int = 1) -> KroneckerLinear:
        """The nearest sum of ``rank`` Kronecker products to ``weight`` [out, in] (nn.Linear layout;
        pass an HF Conv1D weight transposed)."""
        return cls(*nearest_kronecker(weight, a_shape, b_shape, rank), bias)

    @property
    def a(self) -> Tensor:
        """The A factors, [rank, m1, n1] (a view of ``left.weight``)."""
        m1, n1 = self.a_shape
        return self.left.weight.view(m1, self.rank, n1).transpose(0, 1)

    @property
    def b(self) -> Tensor:
        """The B factors, [rank, m2, n2] (a view of ``right.weight``)."""
        return self.right.weight.view(self.rank, *self.b_shape)

    def weight(self) -> Tensor:
        """The full [out, in] weight the factors stand for."""
        return kron_sum(self.a, self.b)

    def forward(self, x: Tensor) -> Tensor:
        (m1, n1), (m2, n2), lead = self.a_shape, self.b_shape, x.shape[:-1]
        z = self.right(x.reshape(*lead, n1, n2))                        # [..., n1, r·m2]
        z = z.reshape(*lead, n1, self.rank, m2).permute(*range(len(lead)), -1, -2, -3)  # [..., m2, r, n1]
        y = self.left(z.reshape(*lead, m2, self.rank * n1))             # [..., m2, m1]
        y = y.transpose(-1, -2).reshape(*lead, m1 * m2)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        (m1, n1), (m2, n2) = self.a_shape, self.b_shape
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"a=[{m1}, {n1}], b=[{m2}, {n2}], bias={self.bias is not None}")


class KroneckerEmbedding(nn.Module):
    """An ``nn.Embedding`` of ``V = m1·m2`` tokens and ``d = n1·n2`` channels whose table is the
    weight of ``kron`` (a ``KroneckerLinear`` of ``d → V`` features, no bias): token ``i = i1·m2 + i2``
    embeds as ``Σ_k A_k[i1] ⊗ B_k[i2]``, two factor rows, and the table is never formed.

    The same ``kron`` computes a tied LM head's logits ``h·Eᵀ`` (``TiedKroneckerHead``).
    """

    def __init__(self, kron: KroneckerLinear) -> None:
        super().__init__()
        if kron.bias is not None:
            raise ValueError("an embedding's Kronecker factors have no bias")
        self.kron = kron
        self.num_embeddings, self.embedding_dim = kron.out_features, kron.in_features

    @property
    def weight(self) -> Tensor:
        """The [V, d] table the factors stand for (materialized: for code that reads it)."""
        return self.kron.weight()

    def forward(self, ids: Tensor) -> Tensor:
        m2 = self.kron.b_shape[0]
        a, b = self.kron.a[:, ids // m2], self.kron.b[:, ids % m2]  # [r, ..., n1], [r, ..., n2]
        return torch.einsum("k...i,k...j->...ij", a, b).reshape(*ids.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}"


class TiedKroneckerHead(nn.Module):
    """A causal LM's head tied to a ``KroneckerEmbedding``: logits ``h·Eᵀ`` through the embedding's
    factors. The embedding is held, not registered, so its factors are saved once (with the
    embedding) and one optimizer step moves both."""

    def __init__(self, embedding: KroneckerEmbedding) -> None:
        super().__init__()
        object.__setattr__(self, "embedding", embedding)  # not a submodule: no second state-dict copy

    def forward(self, hidden: Tensor) -> Tensor:
        return self.embedding.kron(hidden)
