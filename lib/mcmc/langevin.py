"""Stochastic quantisation: the discretised Langevin equation (paper eqs. 2.2–2.3, 2.15)."""
from __future__ import annotations

import torch

from .chain import MarkovChainSampler
from ..runtime import check_batch


def langevin_step(theory, phi: torch.Tensor, dtau: float, generator: torch.Generator | None = None,
                  alpha: float = 1.0, noise: torch.Tensor | None = None) -> torch.Tensor:
    r"""One Euler–Maruyama step of the Langevin equation (paper eq. 2.15),

    .. math:: φ_{n+1} = φ_n + K[φ_n]\\,Δτ + \\sqrt{Δτ}\\,η_n,\\qquad ⟨η_n η_{n'}⟩ = 2α\\,δ_{nn'},

    i.e. Gaussian noise of variance 2αΔτ. Its stationary density is e^{−S/α} up to O(Δτ).
    The standard normal draws come from ``generator``, or are given as ``noise``.
    """
    if noise is None:
        noise = torch.randn(phi.shape, generator=generator, device=phi.device, dtype=phi.dtype)
    return phi + dtau * theory.drift(phi) + (2 * alpha * dtau) ** 0.5 * noise


class Langevin(MarkovChainSampler):
    """Batched Langevin (stochastic-quantisation) chains with step ``dtau`` and diffusion
    constant ``alpha`` (eq. 2.3); stationary density e^{−S/α} + O(Δτ). No accept/reject step."""

    sampler = "langevin"
    unit = "step"

    def __init__(self, theory, n_chains: int = 1, dtau: float = 0.01, alpha: float = 1.0, seed: int = 0,
                 start="cold", device=None, dtype=torch.float64, first_chain: int = 0,
                 per_chain_streams: bool | None = None):
        if not dtau > 0:
            raise ValueError(f"dtau must be positive, got {dtau}")
        if not alpha > 0:
            raise ValueError(f"alpha must be positive, got {alpha}")
        self.dtau, self.alpha = float(dtau), float(alpha)
        super().__init__(theory, n_chains, seed=seed, start=start, device=device, dtype=dtype,
                         first_chain=first_chain, per_chain_streams=per_chain_streams)

    def settings(self) -> dict:
        return {**super().settings(), "dtau": self.dtau, "alpha": self.alpha}

    def update(self):
        noise = self.noise.randn(self.theory.lattice_shape, self.dtype)
        self.phi = langevin_step(self.theory, self.phi, self.dtau, alpha=self.alpha, noise=noise)

    @property
    def time(self) -> float:
        """Langevin time τ = n Δτ reached so far."""
        return self.n_updates * self.dtau


def langevin(theory, phi0: torch.Tensor, n_steps: int, dtau: float, seed: int, alpha: float = 1.0,
             record_every: int = 0, observable=None, progress_bar: bool = True):
    """Run ``n_steps`` Langevin steps from ``phi0`` (shape ``(batch, *lattice)``) in parallel.

    Parameters
    ----------
    record_every : int
        If > 0, record ``observable(phi)`` (default: the field itself) at the start and every
        that many steps.
    Returns
    -------
    phi : the final configurations.
    history : tensor of shape ``(n_records, ...)`` or ``None``; record k is at τ = k·record_every·dtau.
    """
    check_batch(phi0, theory.lattice_shape)
    if n_steps < 0:
        raise ValueError(f"n_steps must be >= 0, got {n_steps}")
    chain = Langevin(theory, phi0.shape[0], dtau=dtau, alpha=alpha, seed=seed, start=phi0, device=phi0.device,
                     dtype=phi0.dtype)
    obs = observable or (lambda x: x.clone())
    hist = [obs(chain.phi)] if record_every else None
    done = 0
    from ..runtime import progress

    with progress(total=n_steps, desc="Langevin", disable=not progress_bar) as bar:
        while done < n_steps:
            k = min(record_every or n_steps, n_steps - done)
            chain.run(k, progress_bar=False)
            done += k
            bar.update(k)
            if record_every and k == record_every:
                hist.append(obs(chain.phi))
    return chain.phi, (torch.stack(hist) if hist is not None else None)


def langevin_moments(theory, n_chains: int, n_therm: int, n_meas: int, dtau: float, seed: int,
                     powers=(2, 4), device=None, dtype=torch.float64, progress_bar: bool = True):
    """Site-averaged moments ⟨φⁿ⟩ from ``n_chains`` parallel Langevin chains started cold.

    After ``n_therm`` steps of thermalisation, every one of the next ``n_meas`` steps is measured.
    Returns a dict ``{n: per-chain time averages (numpy, shape (n_chains,))}``: the chains are
    independent, so the spread over chains gives an honest error bar.
    """
    chain = Langevin(theory, n_chains, dtau=dtau, seed=seed, start="cold", device=device, dtype=dtype)
    chain.run(n_therm, progress_bar=progress_bar, desc="Langevin (therm.)")
    dims = tuple(range(1, chain.phi.ndim))
    sums = {n: torch.zeros(n_chains, dtype=dtype, device=chain.device) for n in powers}

    def accumulate(phi):
        for k in powers:
            sums[k] += (phi**k).mean(dim=dims)
        return 0.0

    chain.run(n_meas, measure=accumulate, progress_bar=progress_bar, desc="Langevin (meas.)")
    return {k: (v / max(n_meas, 1)).cpu().numpy() for k, v in sums.items()}
