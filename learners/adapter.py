"""Adapter: a small torch module from frozen 384-d embeddings to the feature space."""

from __future__ import annotations

import copy

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn


class Adapter(nn.Module):
    """``a(x) = xW + b`` (plus ``relu(xW₁ + b₁)W₂`` when ``hidden`` is set).

    Starts as a fixed projection (:meth:`from_pca`: whitened principal
    components of the catalog embeddings, with ``W₂ = 0`` so the residual MLP
    adds nothing until trained). Weights serialise with safetensors
    (:meth:`to_bytes` / :meth:`from_bytes`); no pickle.

    >>> rng = np.random.default_rng(0)
    >>> E = rng.normal(size=(100, 384)).astype(np.float32)
    >>> a = Adapter.from_pca(E, out_dim=18, seed=0)
    >>> a(torch.from_numpy(E)).shape
    torch.Size([100, 18])
    >>> b = Adapter.from_bytes(a.to_bytes())
    >>> bool(torch.equal(a.proj.weight, b.proj.weight)), b.out_dim
    (True, 18)
    """

    def __init__(self, in_dim: int = 384, out_dim: int = 18, hidden: int | None = None) -> None:
        super().__init__()
        if in_dim < 1 or out_dim < 1 or (hidden is not None and hidden < 1):
            raise ValueError("adapter dimensions must be >= 1")
        self.in_dim, self.out_dim, self.hidden = int(in_dim), int(out_dim), hidden
        self.proj = nn.Linear(in_dim, out_dim)
        if hidden is not None:
            self.mlp_in = nn.Linear(in_dim, hidden)
            self.mlp_out = nn.Linear(hidden, out_dim, bias=False)
            nn.init.zeros_(self.mlp_out.weight)

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, out_dim={self.out_dim}, hidden={self.hidden}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.proj(x)
        if self.hidden is not None:
            out = out + self.mlp_out(torch.relu(self.mlp_in(x)))
        return out

    @classmethod
    def from_pca(
        cls,
        catalog_emb: np.ndarray,
        out_dim: int = 18,
        seed: int = 0,
        hidden: int | None = None,
        max_rows: int = 50_000,
    ) -> Adapter:
        """Whitened PCA of ``catalog_emb``: each output has unit variance on the catalog.

        At most ``max_rows`` rows (a seeded sample) enter the SVD; component
        signs are fixed (largest loading positive) so the result is deterministic.
        """
        E = np.asarray(catalog_emb, dtype=np.float64)
        if E.ndim != 2 or E.shape[0] < 2:
            raise ValueError(f"catalog_emb must be (n >= 2, d), got {E.shape}")
        rng = np.random.default_rng(seed)
        if E.shape[0] > max_rows:
            E = E[np.sort(rng.choice(E.shape[0], size=max_rows, replace=False))]
        n, d = E.shape
        mu = E.mean(axis=0)
        _, s, vt = np.linalg.svd(E - mu, full_matrices=False)
        comps = np.zeros((out_dim, d))
        m = min(out_dim, vt.shape[0])
        comps[:m] = vt[:m]
        signs = np.sign(comps[np.arange(out_dim), np.abs(comps).argmax(axis=1)])
        comps *= np.where(signs == 0, 1.0, signs)[:, None]
        std = np.zeros(out_dim)
        std[:m] = s[:m] / np.sqrt(max(n - 1, 1))
        scale = np.where(std > 1e-12, 1.0 / np.maximum(std, 1e-12), 0.0)
        w = comps * scale[:, None]  # (out_dim, d): torch Linear layout
        adapter = cls(in_dim=d, out_dim=out_dim, hidden=hidden)
        with torch.no_grad():
            gen = torch.Generator().manual_seed(seed)
            if hidden is not None:
                bound = 1.0 / np.sqrt(d)
                adapter.mlp_in.weight.uniform_(-bound, bound, generator=gen)
                adapter.mlp_in.bias.uniform_(-bound, bound, generator=gen)
            adapter.proj.weight.copy_(torch.from_numpy(w))
            adapter.proj.bias.copy_(torch.from_numpy(-(w @ mu)))
        return adapter

    def clone(self) -> Adapter:
        """Deep copy on the CPU (the fine-tune trains a clone, never the live one)."""
        return copy.deepcopy(self).cpu()

    def numpy_params(self, n_out: int | None = None):
        """``(W, b, W₁, b₁, W₂)`` as float64 numpy (``x @ W`` layout), first ``n_out`` outputs."""
        n_out = self.out_dim if n_out is None else n_out
        with torch.no_grad():
            w = self.proj.weight.detach().cpu().double().numpy()[:n_out].T.copy()
            b = self.proj.bias.detach().cpu().double().numpy()[:n_out].copy()
            if self.hidden is None:
                return w, b, None, None, None
            w1 = self.mlp_in.weight.detach().cpu().double().numpy().T.copy()
            b1 = self.mlp_in.bias.detach().cpu().double().numpy().copy()
            w2 = self.mlp_out.weight.detach().cpu().double().numpy()[:n_out].T.copy()
            if not np.any(w2):
                return w, b, None, None, None  # MLP still at its zero init: skip its cost
            return w, b, w1, b1, w2

    def to_bytes(self) -> bytes:
        """safetensors bytes of the weights (float32, CPU); shapes carry the config."""
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        return st_save(tensors, metadata={"format": "fairstream-adapter-v1"})

    @classmethod
    def from_bytes(cls, data: bytes) -> Adapter:
        tensors = st_load(data)
        try:
            out_dim, in_dim = tensors["proj.weight"].shape
        except KeyError as exc:
            raise ValueError("not adapter weights: proj.weight missing") from exc
        hidden = tensors["mlp_in.weight"].shape[0] if "mlp_in.weight" in tensors else None
        adapter = cls(in_dim=int(in_dim), out_dim=int(out_dim), hidden=hidden)
        adapter.load_state_dict(tensors, strict=True)
        return adapter
