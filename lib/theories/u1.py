r"""Two-dimensional compact U(1) lattice gauge theory on an L×L torus, and its exact solution.

A configuration batch holds the link angles θ_μ(x) ∈ ℝ (taken mod 2π) as a tensor of shape
``(batch, 2, L, L)``: ``theta[:, mu, x0, x1]`` is the link from x to x + μ̂. The plaquette angle

.. math:: θ_P(x) = θ_0(x) + θ_1(x + \hat 0) − θ_0(x + \hat 1) − θ_1(x)

is invariant under gauge transformations θ_μ(x) → θ_μ(x) + α(x) − α(x + μ̂), the Wilson action is
S = −β Σ_P cos θ_P, and the topological charge Q = (1/2π) Σ_P [θ_P], with [·] the angle wrapped to
(−π, π], is an integer on every configuration (the unwrapped θ_P sum to zero on a torus).

**Exact finite-volume results** (character expansion, e^{β cos φ} = Σ_n I_n(β) e^{inφ}): integrating
the links forces one representation n on every plaquette, so with V = L² plaquettes

.. math::
    Z = \sum_{n∈ℤ} I_n(β)^V,\qquad ⟨W(A)⟩ = \frac{\sum_n I_n^{V−A} I_{n+1}^A}{Z},

for a Wilson loop enclosing A plaquettes (A = 1: the plaquette ⟨cos θ_P⟩). With a θ-term,
Z(ν) = Σ_n c_n(ν)^V with the Fourier coefficients c_n(ν) = ∫ dφ/2π e^{β cos φ + iν[φ]/2π − inφ}, so

.. math::
    ⟨Q^2⟩ = −\frac{Z''(0)}{Z(0)} = −\frac{\sum_n I_n^V\,[V c_n''/I_n + V(V−1)(c_n'/I_n)^2]}{\sum_n I_n^V},

with c_n' = (2π)^{−2} ∫ φ \sin(nφ) e^{β\cos φ} dφ and c_n'' = −(2π)^{−3} ∫ φ² \cos(nφ) e^{β\cos φ} dφ
(quadrature over (−π, π)), and χ_top = ⟨Q²⟩/V. At large V only n = 0 survives and
χ_top → ⟨φ²⟩_β/4π², ⟨φ²⟩_β the second moment of e^{β cos φ} on the circle.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..runtime import check_batch

TWO_PI = 2 * math.pi


def wrap(angle: torch.Tensor) -> torch.Tensor:
    """The angle mapped to [−π, π): a − 2π⌊(a + π)/2π⌋ (the boundary point has measure zero)."""
    return angle - TWO_PI * torch.floor((angle + math.pi) / TWO_PI)


def plaquette_angles(theta: torch.Tensor) -> torch.Tensor:
    """θ_P(x) = θ_0(x) + θ_1(x+0̂) − θ_0(x+1̂) − θ_1(x) of links ``(batch, 2, L, L)``, unwrapped (the map d)."""
    t0, t1 = theta[:, 0], theta[:, 1]
    return t0 + torch.roll(t1, -1, 1) - torch.roll(t0, -1, 2) - t1


def plaquette_to_links(h: torch.Tensor) -> torch.Tensor:
    """d^T h: the link field s_0(x) = h(x) − h(x−1̂), s_1(x) = h(x−0̂) − h(x) of a plaquette field h
    ``(batch, L, L)`` (the Wilson force is d^T of −β sin θ_P)."""
    return torch.stack([h - torch.roll(h, 1, 2), torch.roll(h, 1, 1) - h], dim=1)


def momenta_squared(L: int, device=None, dtype=torch.float64) -> torch.Tensor:
    """p̂² = 4 sin²(p₀/2) + 4 sin²(p₁/2) on the L×L momenta 2πn/L: the spectrum of d d^T on plaquettes."""
    k = 4 * torch.sin(math.pi * torch.arange(L, device=device, dtype=dtype) / L) ** 2
    return k[:, None] + k[None, :]


def von_mises(kappa: float, shape, generator: torch.Generator | None = None, device=None,
              dtype=torch.float64) -> torch.Tensor:
    """Angles in (−π, π] from the von Mises density e^{κ cos θ}/2πI₀(κ) (Best & Fisher 1979, the
    rejection algorithm with a wrapped-Cauchy envelope), drawn from ``generator``; κ = 0 is uniform."""
    out = torch.empty(shape, device=device, dtype=dtype)
    flat = out.view(-1)
    if kappa < 1e-8:
        return TWO_PI * torch.rand(shape, generator=generator, device=device, dtype=dtype) - math.pi
    tau = 1 + math.sqrt(1 + 4 * kappa * kappa)
    rho = (tau - math.sqrt(2 * tau)) / (2 * kappa)
    r = (1 + rho * rho) / (2 * rho)
    todo = torch.arange(flat.numel(), device=device)
    while todo.numel():
        u = torch.rand((3, todo.numel()), generator=generator, device=device, dtype=dtype)
        z = torch.cos(math.pi * u[0])
        f = (1 + r * z) / (r + z)
        c = kappa * (r - f)
        ok = (c * (2 - c) - u[1] > 0) | (torch.log(c / u[1]) + 1 - c >= 0)
        theta = torch.sign(u[2] - 0.5) * torch.acos(f.clamp(-1, 1))
        flat[todo[ok]] = theta[ok]
        todo = todo[~ok]
    return out


@dataclass(frozen=True)
class U1Gauge:
    """Compact U(1) gauge theory with the Wilson action on an L×L torus (module docstring).

    Parameters
    ----------
    L : int
        Linear lattice size (L ≥ 2); V = L² plaquettes, 2L² links.
    beta : float
        Inverse coupling β ≥ 0.
    """

    L: int
    beta: float

    def __post_init__(self):
        if isinstance(self.L, bool) or not isinstance(self.L, int) or self.L < 2:
            raise ValueError(f"lattice size L must be an integer >= 2, got {self.L!r}")
        if not math.isfinite(self.beta) or self.beta < 0:
            raise ValueError(f"inverse coupling beta must be finite and >= 0, got {self.beta!r}")

    # ------------------------------------------------------------------ metadata
    @property
    def name(self) -> str:
        return "u1"

    @property
    def lattice_shape(self) -> tuple[int, int, int]:
        """(direction, x0, x1): the links of one configuration."""
        return (2, self.L, self.L)

    @property
    def volume(self) -> int:
        """Number of real variables (links), 2L², as the samplers count them."""
        return 2 * self.L * self.L

    @property
    def n_plaquettes(self) -> int:
        """V = L², the number of plaquettes (and of sites); χ_top = ⟨Q²⟩/V."""
        return self.L * self.L

    def to_dict(self) -> dict:
        return {"name": self.name, **asdict(self)}

    # ------------------------------------------------------------------ fields
    def plaquettes(self, theta: torch.Tensor) -> torch.Tensor:
        """θ_P(x) = θ_0(x) + θ_1(x+0̂) − θ_0(x+1̂) − θ_1(x), unwrapped, shape ``(batch, L, L)``."""
        check_batch(theta, self.lattice_shape)
        return plaquette_angles(theta)

    def action(self, theta: torch.Tensor) -> torch.Tensor:
        """S = −β Σ_P cos θ_P per configuration."""
        return -self.beta * torch.cos(self.plaquettes(theta)).sum(dim=(1, 2))

    def drift(self, theta: torch.Tensor) -> torch.Tensor:
        """K = −∂S/∂θ: K_0(x) = −β[sin θ_P(x) − sin θ_P(x−1̂)], K_1(x) = −β[sin θ_P(x−0̂) − sin θ_P(x)]."""
        return plaquette_to_links(-self.beta * torch.sin(self.plaquettes(theta)))

    def local_action(self, theta: torch.Tensor) -> torch.Tensor:
        """Per link, the action of the two plaquettes that contain it, shape of θ: for θ_0(x),
        −β[cos θ_P(x) + cos θ_P(x−1̂)]; for θ_1(x), −β[cos θ_P(x) + cos θ_P(x−0̂)]. For links of
        one :meth:`checkerboard_masks` set (no two share a plaquette) its change is the change of S
        (what :class:`lib.mcmc.Metropolis` needs)."""
        c = torch.cos(self.plaquettes(theta))
        return -self.beta * torch.stack([c + torch.roll(c, 1, 2), c + torch.roll(c, 1, 1)], dim=1)

    def checkerboard_masks(self, device=None) -> list[torch.Tensor]:
        """Four boolean masks of shape (2, L, L): θ_0 on even and odd x1, θ_1 on even and odd x0.
        Within a mask no two links share a plaquette (L must be even)."""
        if self.L % 2:
            raise ValueError(f"the link checkerboard needs an even L, got {self.L}")
        i = torch.arange(self.L, device=device)
        masks = []
        for mu, axis in ((0, 1), (1, 0)):
            for parity in (0, 1):
                m = torch.zeros(self.lattice_shape, dtype=torch.bool, device=device)
                sel = (i % 2 == parity)
                if axis == 1:
                    m[mu] = sel[None, :].expand(self.L, self.L)
                else:
                    m[mu] = sel[:, None].expand(self.L, self.L)
                masks.append(m)
        return masks

    def plaquette(self, theta: torch.Tensor) -> torch.Tensor:
        """The mean plaquette (1/V) Σ_P cos θ_P per configuration."""
        return torch.cos(self.plaquettes(theta)).mean(dim=(1, 2))

    def topological_charge(self, theta: torch.Tensor) -> torch.Tensor:
        """Q = (1/2π) Σ_P [θ_P], rounded to the integer it is up to round-off (float64)."""
        q = wrap(self.plaquettes(theta).double()).sum(dim=(1, 2)) / TWO_PI
        return torch.round(q)

    def wilson_loop(self, theta: torch.Tensor, r: int, t: int) -> torch.Tensor:
        """The r×t Wilson loop cos(Σ_{links around} θ) averaged over its L² positions, per
        configuration; by Stokes' theorem on the lattice the loop's angle is the sum of the r·t
        unwrapped plaquette angles it encloses."""
        if not (1 <= r <= self.L and 1 <= t <= self.L):
            raise ValueError(f"loop sides must lie in 1..L = {self.L}, got {r}×{t}")
        p = self.plaquettes(theta)
        s = torch.zeros_like(p)
        for i in range(r):
            for j in range(t):
                s = s + torch.roll(p, (-i, -j), (1, 2))
        return torch.cos(s).mean(dim=(1, 2))

    def gauge_transform(self, theta: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """θ_μ(x) → θ_μ(x) + α(x) − α(x + μ̂) with α of shape ``(batch, L, L)``."""
        check_batch(theta, self.lattice_shape)
        a0 = alpha - torch.roll(alpha, -1, 1)
        a1 = alpha - torch.roll(alpha, -1, 2)
        return theta + torch.stack([a0, a1], dim=1)

    def random_links(self, n: int, generator: torch.Generator | None = None, device=None,
                     dtype=torch.float64) -> torch.Tensor:
        """``n`` configurations of independent uniform links (β = 0, the Haar measure)."""
        u = torch.rand((n, *self.lattice_shape), generator=generator, device=device, dtype=dtype)
        return TWO_PI * u - math.pi

    # ------------------------------------------------------------------ exact sampling
    def exact_sample(self, n: int, generator: torch.Generator | None = None, device=None,
                     dtype=torch.float64) -> torch.Tensor:
        r"""``n`` independent configurations drawn exactly from e^{−S}/Z (links, ``(n, 2, L, L)``).

        On the torus the link measure factorises into the plaquette angles, subject to the one
        constraint Σ_P θ_P ≡ 0 (mod 2π), the two holonomies and the gauge orbit, with a constant
        Jacobian. So: draw V − 1 plaquettes independently from the von Mises law e^{β cos θ}/2πI₀(β)
        (:func:`von_mises`), set the last to minus their sum, and accept the set with probability
        e^{β(cos θ_V − 1)} (rejection sampling: exact; the acceptance is about I₀(β)e^{−β} for large
        V); then build links with exactly these plaquettes (mod 2π) — θ = d^T Δ^{−1} θ̃_P with the
        lattice Laplacian Δ = d d^T on plaquettes and θ̃_P the angles with 2πQ taken off one of
        them, so that they sum to zero — and add uniform holonomies and a uniform gauge
        transformation."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        V, L = self.n_plaquettes, self.L
        kept, have = [], 0
        while have < n:
            m = max(2 * (n - have), 16)
            p = von_mises(self.beta, (m, V - 1), generator, device, dtype)
            last = wrap(-p.sum(dim=1))
            u = torch.rand(m, generator=generator, device=device, dtype=dtype)
            ok = u < torch.exp(self.beta * (torch.cos(last) - 1))
            plaq = torch.cat([p, last[:, None]], dim=1)[ok]
            kept.append(plaq)
            have += len(plaq)
        plaq = torch.cat(kept)[:n]
        q = torch.round(plaq.sum(dim=1) / TWO_PI)  # the topological charge of the set
        plaq[:, -1] -= TWO_PI * q  # a lift that sums to zero and equals the angles mod 2π
        plaq = plaq.reshape(n, L, L)
        lap = momenta_squared(L, device, dtype)
        lap[0, 0] = 1.0  # the zero mode is zero
        theta = plaquette_to_links(torch.fft.ifft2(torch.fft.fft2(plaq) / lap).real)  # d^T Δ⁻¹ θ̃_P
        hol = TWO_PI * torch.rand(n, 2, 1, 1, generator=generator, device=device, dtype=dtype)
        alpha = TWO_PI * torch.rand(n, L, L, generator=generator, device=device, dtype=dtype)
        return wrap(self.gauge_transform(theta + hol, alpha))

    # ------------------------------------------------------------------ exact results
    def _log_bessel(self, n: np.ndarray) -> np.ndarray:
        from scipy.special import ive

        return np.log(ive(n, self.beta)) + self.beta

    def _representations(self, extra: int = 0) -> np.ndarray:
        n_max = 8 + int(4 * math.sqrt(self.beta + 1)) + extra
        return np.arange(-n_max, n_max + 1)

    def exact_wilson_loop(self, area: int) -> float:
        """⟨W⟩ of a loop enclosing ``area`` plaquettes: Σ_n I_n^{V−A} I_{n+1}^A / Σ_n I_n^V."""
        V = self.n_plaquettes
        if not 0 <= area <= V:
            raise ValueError(f"area must lie in 0..V = {V}, got {area}")
        if self.beta == 0:
            return float(area == 0)
        n = self._representations(1)
        li, lj = self._log_bessel(n), self._log_bessel(n + 1)
        num = (V - area) * li + area * lj
        den = V * li
        return float(np.exp(np.logaddexp.reduce(num) - np.logaddexp.reduce(den)))

    def exact_plaquette(self) -> float:
        """⟨cos θ_P⟩ = ⟨W(1)⟩ = (1/V) ∂ ln Z/∂β."""
        return self.exact_wilson_loop(1)

    def exact_Q2(self) -> float:
        """⟨Q²⟩ = −Z''(0)/Z(0) from the θ-dependent character expansion (module docstring)."""
        from scipy.integrate import quad

        V, b = self.n_plaquettes, self.beta
        n = self._representations()
        w = np.exp(V * (self._log_bessel(n) - self._log_bessel(np.array([0]))[0]))  # (I_n/I_0)^V
        out = 0.0
        for k, wk in zip(n, w):
            if wk < 1e-300:
                continue
            g = lambda f, phi: f(phi) * math.exp(b * (math.cos(phi) - 1))  # noqa: E731 - scaled by e^{−β}
            I = quad(lambda p: g(lambda x: math.cos(k * x), p), -math.pi, math.pi, limit=200)[0] / TWO_PI
            c1 = quad(lambda p: g(lambda x: x * math.sin(k * x), p), -math.pi, math.pi, limit=200)[0] / TWO_PI**2
            c2 = -quad(lambda p: g(lambda x: x * x * math.cos(k * x), p), -math.pi, math.pi,
                       limit=200)[0] / TWO_PI**3
            out += wk * (V * c2 / I + V * (V - 1) * (c1 / I) ** 2)
        return float(-out / w.sum())

    def exact_chi_top(self) -> float:
        """χ_top = ⟨Q²⟩/V."""
        return self.exact_Q2() / self.n_plaquettes


def cached_exact_ensemble(theory: U1Gauge, n: int, seed: int, *, cache_dir=None, verbose: bool = True):
    """``n`` exact, independent U(1) configurations (:meth:`U1Gauge.exact_sample`, seeded by ``seed``)
    through the ensemble cache: an :class:`lib.storage.Ensemble` with sampler ``"exact"``, usable
    wherever an HMC ensemble is (training data, references)."""
    from ..rng import check_seed, generator
    from ..storage.cache import cached_ensemble
    from ..storage.ensembles import make_metadata

    seed = check_seed(seed)
    request = make_metadata(theory, "exact", {"method": "rejection-sampled plaquettes"}, seed, n_configs=int(n))

    def make():
        return theory.exact_sample(int(n), generator(seed, "cpu")).numpy()

    return cached_ensemble(request, make, verbose=verbose, cache_dir=cache_dir)


__all__ = ["U1Gauge", "cached_exact_ensemble", "momenta_squared", "plaquette_angles", "plaquette_to_links",
           "von_mises", "wrap"]
