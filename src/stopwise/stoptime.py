"""Stop-time distributions, the L2S oracle and stop-time priors. Pure tensor math.

Conventions (the same in every module): steps are indexed ``0..T-1`` in tensors; "steps used" is 1-based.
A *hazard* ``λ_t`` is the probability of stopping at step ``t`` given that no earlier step stopped;
it is always carried as a logit. The stop-time distribution is

    q(t) = λ_t ∏_{τ<t} (1 − λ_τ),                                   (L2S, Eq. 4)

computed in log space with ``logsigmoid`` so that logits of ±1e4 stay exact. The last valid step
absorbs the remaining mass, so ``q`` sums to one over the valid steps.
"""

from __future__ import annotations

import math
import sys

import torch
import torch.nn.functional as F

__all__ = [
    "StopTime",
    "oracle",
    "kl_divergence",
    "truncated_geometric_log_prior",
    "random_horizon_log_prior",
    "random_horizon_log_conditional",
    "random_horizon_cdf",
    "sample_random_horizon",
]


def _expand_mask(mask: torch.Tensor | None, shape: torch.Size, device) -> torch.Tensor:
    """Validate a valid-step mask of shape ``(T,)`` or ``(B, T)`` and broadcast it to ``shape``."""
    if mask is None:
        return torch.ones(shape, dtype=torch.bool, device=device)
    mask = torch.as_tensor(mask, device=device).bool()
    if mask.shape != shape[-1:] and mask.shape != shape:
        raise ValueError(
            f"mask has shape {tuple(mask.shape)}; expected (T,) = ({shape[-1]},) or (B, T) = "
            f"{tuple(shape)}"
        )
    mask = mask.expand(shape)
    if not bool(mask.any(dim=-1).all()):
        raise ValueError("mask leaves a row with no valid step; every row needs at least one")
    return mask


def _last_valid(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last True entry along the last dim, shape ``mask.shape[:-1]``."""
    T = mask.shape[-1]
    steps = torch.arange(T, device=mask.device)
    return torch.where(mask, steps, -1).amax(dim=-1)


class StopTime:
    """Distribution over the stop step of each row, built from hazard logits.

    Args:
        hazard_logits: ``(B, T)`` logits of λ_t.
        mask: optional valid-step mask, ``(T,)`` or ``(B, T)``. Invalid steps get probability 0
            and never stop; the last valid step of each row absorbs the remaining mass.
        tail: ``"absorb"`` (default; the last valid step takes the remainder ∏(1−λ)) or
            ``"renormalize"`` (PonderNet's alternative: q(t) ∝ λ_t ∏_{τ<t}(1−λ_τ) over valid steps;
            a row whose every λ_t is 0 stops at its last valid step).

    ``log_probs``/``probs`` are ``(B, T)``; ``mean()`` is the expected number of steps used
    (1-based); ``sample()`` and ``median()`` return 0-based step indices for indexing trajectories.
    """

    def __init__(
        self,
        hazard_logits: torch.Tensor,
        mask: torch.Tensor | None = None,
        tail: str = "absorb",
    ):
        if hazard_logits.dim() != 2:
            raise ValueError(
                f"hazard_logits must have shape (B, T); got {tuple(hazard_logits.shape)}"
            )
        if tail not in ("absorb", "renormalize"):
            raise ValueError(f"tail must be 'absorb' or 'renormalize'; got {tail!r}")
        self.hazard_logits = hazard_logits
        self.mask = _expand_mask(mask, hazard_logits.shape, hazard_logits.device)
        self.tail = tail
        self.log_probs = self._log_probs()

    def _log_probs(self) -> torch.Tensor:
        h, mask = self.hazard_logits, self.mask
        log_stop = torch.where(mask, F.logsigmoid(h), -math.inf)
        log_go = torch.where(mask, F.logsigmoid(-h), 0.0)
        # log ∏_{τ<t}(1 − λ_τ): an exclusive cumulative sum.
        log_survival = torch.cat(
            [torch.zeros_like(log_go[:, :1]), torch.cumsum(log_go[:, :-1], dim=-1)], dim=-1
        )
        is_last = F.one_hot(_last_valid(mask), h.shape[-1]).bool()
        absorbed = log_survival + torch.where(is_last, 0.0, log_stop)
        if self.tail == "absorb":
            return absorbed
        log_q = log_survival + log_stop
        # A row that never stops (every λ_t = 0) has nothing to renormalise (0/0): its mass
        # goes to the last valid step, as with "absorb".
        never = torch.isneginf(log_q).all(dim=-1, keepdim=True)
        log_q = torch.where(never, absorbed, log_q)
        # log_softmax shifts by the row's maximum first: exact where log q is about ±1e4 (a
        # plain subtraction of the logsumexp loses the float32 digits there).
        return torch.log_softmax(log_q, dim=-1)

    @property
    def probs(self) -> torch.Tensor:
        """``(B, T)`` stop probabilities; zero on invalid steps."""
        return self.log_probs.exp()

    @property
    def num_steps(self) -> int:
        return self.hazard_logits.shape[-1]

    def entropy(self) -> torch.Tensor:
        """``(B,)`` entropy −Σ_t q(t) log q(t) in nats (0 log 0 = 0, also where a hazard of
        exactly 0 or 1 gives a valid step q(t) = 0)."""
        never = ~self.mask | torch.isneginf(self.log_probs)
        return -(self.probs * self.log_probs.masked_fill(never, 0.0)).sum(-1)

    def mean(self) -> torch.Tensor:
        """``(B,)`` expected number of steps used, Σ_t q(t)(t+1)."""
        steps_used = torch.arange(1, self.num_steps + 1, device=self.log_probs.device)
        return (self.probs * steps_used).sum(-1)

    def cdf(self) -> torch.Tensor:
        """``(B, T)`` P(stop index ≤ t)."""
        return torch.cumsum(self.probs, dim=-1)

    def median(self) -> torch.Tensor:
        """``(B,)`` smallest 0-based index with cdf ≥ 1/2 (long)."""
        reached = (self.cdf() >= 0.5) & self.mask
        reached |= F.one_hot(_last_valid(self.mask), self.num_steps).bool()  # rounding guard
        return reached.int().argmax(dim=-1)

    def mode(self) -> torch.Tensor:
        """``(B,)`` most probable 0-based stop index (long)."""
        return self.log_probs.argmax(dim=-1)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """``(B,)`` sampled 0-based stop indices (long)."""
        return torch.multinomial(self.probs.detach(), 1, generator=generator).squeeze(-1)

    def log_prob(self, index: torch.Tensor) -> torch.Tensor:
        """``(B,)`` log q(index) for 0-based indices ``index`` of shape ``(B,)``."""
        return self.log_probs.gather(-1, index.long().unsqueeze(-1)).squeeze(-1)

    def __repr__(self) -> str:
        B, T = self.hazard_logits.shape
        return f"StopTime(batch={B}, steps={T}, tail={self.tail!r})"


def oracle(
    losses: torch.Tensor,
    beta: float,
    hard: bool = False,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The L2S oracle stop-time distribution q*(t | x, y) = softmax_t(−ℓ_t / β)  (L2S, Eq. 8).

    Args:
        losses: ``(B, T)`` per-step losses ℓ_t (needs the label, so training only).
        beta: temperature β > 0; β → 0 approaches the hard oracle.
        hard: return the one-hot argmin_t ℓ_t instead.
        mask: optional valid-step mask ``(T,)`` or ``(B, T)``; invalid steps get probability 0.

    Returns ``(B, T)`` probabilities. Differentiable in ``losses``; callers detach where the paper does.
    A NaN loss makes its step the worst one (probability 0); a row whose valid losses are all NaN
    gives NaN, the way a diverged run is caught. Losses of −inf share the mass between them.
    """
    if losses.dim() != 2:
        raise ValueError(f"losses must have shape (B, T); got {tuple(losses.shape)}")
    valid = _expand_mask(mask, losses.shape, losses.device)
    # A NaN loss (a step that diverged) is the worst step, not the best: torch's argmin and
    # amin would pick it.
    worst = ~valid | torch.isnan(losses)
    if hard:
        ranked = losses.detach().masked_fill(worst, math.inf)
        index = ranked.argmin(dim=-1)
        # Every step +inf (or worse): the first valid step that is not NaN, as the soft oracle
        # shares the mass among those steps (argmin would take step 0, valid or not).
        first = (valid & ~torch.isnan(losses)).int().argmax(dim=-1)
        index = torch.where(ranked.gather(-1, index[:, None]).squeeze(-1) == math.inf, first, index)
        one_hot = F.one_hot(index, losses.shape[-1]).to(losses.dtype)
        return one_hot.masked_fill(worst.all(dim=-1, keepdim=True), math.nan)  # as the soft one
    if not beta > 0:
        raise ValueError(f"beta must be > 0; got {beta}")
    # Shifted by each row's least valid loss (softmax is shift-invariant), so that a tiny β
    # gives the hard oracle instead of overflowing every step to −inf; in at least float32,
    # with β no smaller than its least normal number (a β that rounds to 0 made the least step
    # 0/0: NaN), which changes nothing where the softmax has already saturated. An infinite least
    # would give inf − inf: its steps get 0 instead, and share the mass.
    dtype = torch.promote_types(losses.dtype, torch.float32)
    beta = max(beta, torch.finfo(dtype).tiny)
    least = losses.detach().masked_fill(worst, math.inf).amin(dim=-1, keepdim=True)
    gap = losses.to(dtype) - least
    gap = torch.where(torch.isinf(least) & (losses == least), 0.0, gap)
    # An infinite gap is −inf whatever β: a β past the dtype's range (inf in float32 from about
    # 3.4e38, or β = inf) made it inf / inf = NaN, and the whole row with it.
    scaled = torch.where(torch.isinf(gap), -math.inf, -gap / beta).masked_fill(worst, -math.inf)
    return torch.softmax(scaled, dim=-1).to(losses.dtype)


def kl_divergence(
    log_p: torch.Tensor, log_q: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``(B,)`` KL(p ‖ q) = Σ_t p(t)(log p(t) − log q(t)) over valid steps; 0·log 0 = 0.

    Both arguments are ``(B, T)`` (or broadcastable) log-probabilities.
    """
    log_p, log_q = torch.broadcast_tensors(log_p, log_q)
    valid = _expand_mask(mask, log_p.shape, log_p.device) & (log_p > -math.inf)
    diff = torch.where(valid, log_p - log_q, 0.0)
    # p(t) > 0 where q(t) = 0 makes the KL +inf, also where p(t) (a log p of −200 in float32)
    # underflows in exp: 0 · inf was NaN there.
    terms = torch.where(valid & torch.isneginf(log_q), math.inf, log_p.exp() * diff)
    return terms.sum(-1)


def truncated_geometric_log_prior(
    p: float, num_steps: int, mask: torch.Tensor | None = None, dtype=torch.float32
) -> torch.Tensor:
    """Log of the geometric prior p(t) ∝ p(1−p)^t, t = 0..T−1, renormalised over valid steps.

    This is PonderNet's prior p_G(λ_p) truncated at ``num_steps`` (Banino et al. 2021, Eq. 5).
    Returns ``(T,)``, or ``(B, T)`` when a ``(B, T)`` mask is given.
    """
    if not 0 < p <= 1:
        raise ValueError(f"geometric prior needs 0 < p <= 1; got {p}")
    mask = None if mask is None else torch.as_tensor(mask)
    device = None if mask is None else mask.device
    t = torch.arange(num_steps, dtype=torch.float64, device=device)
    shape = torch.Size([*(() if mask is None else mask.shape[:-1]), num_steps])
    valid = _expand_mask(mask, shape, device)  # refuses a row with no valid step
    if p == 1:  # the limit p → 1: all the mass on the first valid step (0/0 renormalised)
        first = F.one_hot(valid.int().argmax(-1), num_steps).bool()  # argmax: the first True
        return torch.where(first, 0.0, -math.inf).to(dtype)
    log_p = (math.log(p) + t * math.log1p(-p)).masked_fill(~valid, -math.inf)
    return torch.log_softmax(log_p, dim=-1).to(dtype)


# ---- The random-horizon geometric prior of Sander (2017), with the corrected conditional ----
#
# The horizon T ∈ {0, 1, ...} (steps t ∈ {0..T}) has prior p(T) = s^T (1 − s^{T+1})(1 − s²) and, given T,
# p(t | T) = (1 − s) s^t / (1 − s^{T+1}), a truncated geometric, with s = √(1 − p). The thesis text drops
# the s^t factor of p(t|T); with it, the marginal Σ_{T≥t} p(T) p(t|T) is exactly the geometric
# p(1 − p)^t, which is what makes the bound averaged over horizons a bound under that prior.


def _check_p(p: float) -> float:
    # Below the least normal double, ½ log(1 − p) rounds to 0 and 1 − s to nothing.
    if not sys.float_info.min <= p < 1:
        raise ValueError(
            f"random-horizon prior needs {sys.float_info.min} <= p < 1 (p a normal float); got {p}"
        )
    return math.sqrt(1.0 - p)


def _log_s(p: float) -> float:
    """log s = ½ log(1 − p), without forming s: for a small p, s = √(1 − p) rounds toward 1 and
    1 − s loses its digits (to 0, a log of −∞, once p < 2⁻⁵³)."""
    _check_p(p)
    return 0.5 * math.log1p(-p)


def random_horizon_log_prior(p: float, horizons: torch.Tensor) -> torch.Tensor:
    """log p(T) = T log s + log(1 − s^{T+1}) + log(1 − s²) for integer horizons ``T ≥ 0``."""
    log_s = _log_s(p)
    T = torch.as_tensor(horizons, dtype=torch.float64)
    # 1 − s^{T+1} = −expm1((T+1) log s), exact where s^{T+1} is close to 1; 1 − s² = p
    return T * log_s + torch.log(-torch.expm1((T + 1) * log_s)) + math.log(p)


def random_horizon_log_conditional(p: float, horizon: int, dtype=torch.float32) -> torch.Tensor:
    """``(horizon+1,)`` log p(t | T) = log((1 − s) s^t / (1 − s^{T+1})) for t = 0..T."""
    log_s = _log_s(p)
    t = torch.arange(horizon + 1, dtype=torch.float64)
    log_norm = math.log(-math.expm1(log_s)) - math.log(-math.expm1((horizon + 1) * log_s))
    return (log_norm + t * log_s).to(dtype)


def random_horizon_cdf(p: float, horizons: torch.Tensor) -> torch.Tensor:
    """P(T ≤ horizon) in closed form: (1 − u)(1 − s·u) with u = s^{T+1}."""
    log_s = _log_s(p)
    T = torch.as_tensor(horizons, dtype=torch.float64)
    return torch.expm1((T + 1) * log_s) * torch.expm1((T + 2) * log_s)


def sample_random_horizon(
    p: float,
    size: int | tuple[int, ...],
    generator: torch.Generator | None = None,
    max_horizon: int | None = None,
) -> torch.Tensor:
    """Draw horizons T ~ p(T) by inverting the closed-form CDF (long tensor of ``size``).

    With ``max_horizon``, draw from p(T | T ≤ max_horizon) instead: the prior restricted to
    ``0..max_horizon`` and renormalised, which is the distribution that
    :func:`~stopwise.objectives.random_horizon_bound` averages over exactly.
    """
    log_s = _log_s(p)
    size = (size,) if isinstance(size, int) else tuple(size)
    U = torch.rand(size, generator=generator, dtype=torch.float64)
    if max_horizon is not None:
        if max_horizon < 0:
            raise ValueError(f"max_horizon must be >= 0; got {max_horizon}")
        reach = random_horizon_cdf(p, torch.tensor(float(max_horizon)))
        if reach < sys.float_info.min:  # about (max_horizon + 1)² p² / 4: p below ~1e-154
            raise ValueError(
                f"P(T <= {max_horizon}) = {float(reach):.3g} underflows float64 at p = {p}: "
                "use a larger p or max_horizon"
            )
        U = U * reach
    # Smallest T with CDF(T) ≥ U = (1 − u)(1 − s u), u = s^{T+1}: T + 1 = ⌈log u* / log s⌉ with
    # u* the root of s u² − (1 + s) u + (1 − U) = 0 in [0, 1]. Its discriminant is (1 − s)² + 4sU
    # (no cancellation), and log u* is taken from u* where u* is small and from 1 − u* (a root of
    # the quadratic in 1 − u) where u* is near 1: a U and a 1 − s far below 1 lost every digit.
    s, one_minus_s = math.exp(log_s), -math.expm1(log_s)
    root = torch.sqrt(one_minus_s**2 + 4 * s * U)
    u_star = 2 * (1 - U) / ((1 + s) + root)
    v_star = 2 * U / (one_minus_s + root)  # 1 − u*
    log_u = torch.where(v_star < 0.5, torch.log1p(-v_star.clamp_max(0.5)), torch.log(u_star))
    T = (torch.ceil(log_u / log_s) - 1).clamp_min(0)
    # Guard the ceiling against rounding: step to the exact smallest T with CDF(T) >= U.
    T = torch.where(random_horizon_cdf(p, T) < U, T + 1, T)
    T = torch.where((T > 0) & (random_horizon_cdf(p, T - 1) >= U), T - 1, T)
    if max_horizon is not None:
        T = T.clamp_max(max_horizon)  # only rounding at U = CDF(max_horizon) can land past it
    elif bool((T >= 2.0**53).any()):  # (and past 2⁶³ the long below wraps to −2⁶³)
        raise ValueError(
            f"at p = {p} the prior drew horizons beyond 2^53, where float64 counts no longer "
            "exactly: pass max_horizon"
        )
    return T.long()
