"""Measured latency: what the gateway observed of a backend, and its blend with the matrix prior.

Pure values and arithmetic; the state side (passive health, the one owner of the measurement)
folds each answered attempt into an :class:`ObservedLatency` with :func:`observe` and puts it on
the snapshot. Nothing here reads a clock.

**TTFT is learnt as factors on the prior, not as milliseconds.** At dispatch the latency scorer's
prior splits the expected TTFT into *queueing* (the matrix TTFT scaled by the load the backend had
then) and *prefill* (prompt tokens ahead of and in this request at the matrix prefill rate). Each
observed TTFT ``T`` is then a sample of ``T ~ a * queue + b * prefill``; the factors ``a``
(queueing) and ``b`` (prefill) are fitted by exponentially weighted least squares with a ridge
pull towards 1 worth ``prior_samples`` observations. Because every sample is divided by what the
prior expected *at its own load*, a TTFT seen with twenty requests in flight does not make the
backend look slow when it is idle: the load is already in the prior and is not counted twice.
Where samples come with different mixes of queueing and prefill (short and long prompts, idle and
busy), the two factors separate; where they do not, both move together, as one ratio.

The weight shown is ``w = n / (n + prior_samples)`` (``n``: the decayed sample count). With
samples that are half queueing and half prefill, the fit is exactly the blend
``w * measured + (1 - w) * prior``; with samples all of one part, the data pull a little harder
(up to ``2n / (2n + prior_samples)``), since all their information goes to one factor.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from quantroute.base import quick_init

MIN_FACTOR, MAX_FACTOR = 0.1, 10.0
"""Fitted factors are kept in this range: a 10x slower replica is the outlier ejection's case."""


@quick_init
@dataclass(frozen=True, slots=True)
class LatencySample:
    """One answered attempt, as the request path measured it."""

    ttft_s: float | None = None
    """Dispatch to first byte (streaming answers only)."""
    per_token_s: float | None = None
    load: float = 0.0
    """Requests in flight at the backend (this gateway's) as the sample was taken."""
    prior_queue_s: float | None = None
    prior_prefill_s: float | None = None
    """What the prior expected for this request at dispatch, split (None: no decision estimate)."""


@quick_init
@dataclass(frozen=True, slots=True)
class ObservedLatency:
    """Smoothed figures for one backend. Raw moving averages (what the outlier rule compares
    between peers) and the sufficient statistics of the TTFT factor fit."""

    ttft_s: float | None = None
    ttft_samples: int = 0
    per_token_s: float | None = None
    per_token_samples: int = 0
    per_token_n: float = 0.0
    """Decayed count behind ``per_token_s`` (its blend weight)."""
    load: float | None = None
    n: float = 0.0
    """Decayed count of TTFT samples with a prior split (the fit's blend weight)."""
    sqq: float = 0.0
    sqp: float = 0.0
    spp: float = 0.0
    sqy: float = 0.0
    spy: float = 0.0
    at: float | None = None
    """When the last sample was taken (the state side's clock): see :func:`aged`."""

    @property
    def samples(self) -> int:
        return max(self.ttft_samples, self.per_token_samples)


NOTHING = ObservedLatency()


def _ewma(value: float | None, sample: float, decay: float) -> float:
    return sample if value is None else value + decay * (sample - value)


def observe(
    prev: ObservedLatency, sample: LatencySample, decay: float, at: float | None = None
) -> ObservedLatency:
    """``prev`` with ``sample`` (taken at ``at``) folded in; ``decay``: weight of a new sample
    (0 < decay < 1)."""
    keep = 1.0 - decay
    o = prev
    ttft, ttft_n = o.ttft_s, o.ttft_samples
    if sample.ttft_s is not None:
        ttft, ttft_n = _ewma(ttft, sample.ttft_s, decay), ttft_n + 1
    tok, tok_samples, tok_n = o.per_token_s, o.per_token_samples, o.per_token_n
    if sample.per_token_s is not None:
        tok, tok_samples = _ewma(tok, sample.per_token_s, decay), tok_samples + 1
        tok_n = keep * tok_n + 1.0
    fit = (o.n, o.sqq, o.sqp, o.spp, o.sqy, o.spy)
    q, p = sample.prior_queue_s, sample.prior_prefill_s
    if sample.ttft_s is not None and q is not None and p is not None and q + p > 0.0:
        expected = q + p
        xq, xp, y = q / expected, p / expected, sample.ttft_s / expected
        n, sqq, sqp, spp, sqy, spy = (keep * v for v in fit)
        fit = (n + 1.0, sqq + xq * xq, sqp + xq * xp, spp + xp * xp, sqy + xq * y, spy + xp * y)
    load = _ewma(o.load, sample.load, decay)
    return ObservedLatency(ttft, ttft_n, tok, tok_samples, tok_n, load, *fit, at=at)


def aged(observed: ObservedLatency, age_s: float, half_life_s: float) -> ObservedLatency:
    """The measurement ``age_s`` after its last sample: its weight against the prior halves every
    ``half_life_s`` (every statistic of the fit scaled alike). A replica that was measured slow
    and then drew no traffic is tried again in time instead of being judged on old samples."""
    if age_s <= 0.0:
        return observed
    f = 0.5 ** (age_s / half_life_s)
    o = observed
    return ObservedLatency(  # not dataclasses.replace: this runs per backend per request
        o.ttft_s,
        o.ttft_samples,
        o.per_token_s,
        o.per_token_samples,
        o.per_token_n * f,
        o.load,
        o.n * f,
        o.sqq * f,
        o.sqp * f,
        o.spp * f,
        o.sqy * f,
        o.spy * f,
        o.at,
    )


@quick_init
@dataclass(frozen=True, slots=True)
class TtftFit:
    queue_factor: float = 1.0
    prefill_factor: float = 1.0
    weight: float = 0.0
    """n / (n + prior_samples): how much the measurement counts against the prior."""
    n: float = 0.0
    peer_n: float = 0.0
    """The variant peers' samples behind the factors the fit started from (0: the matrix's)."""


PRIOR = TtftFit()


def fit(observed: ObservedLatency | None, prior_samples: float, toward: TtftFit = PRIOR) -> TtftFit:
    """The TTFT factors: least squares on the observed ratios, ridge towards ``toward``'s
    factors (1, the matrix prior itself, unless the variant's peers were measured: see
    :func:`peer_fit`) with strength ``prior_samples / 2`` per factor (a sample's two fractions
    add up to 1: samples split half and half get exactly the n / (n + prior_samples) blend)."""
    if observed is None or observed.n <= 0.0:
        return PRIOR if toward is PRIOR else replace(toward, weight=0.0, n=0.0, peer_n=toward.n)
    c = prior_samples / 2.0
    a, b, d = observed.sqq + c, observed.sqp, observed.spp + c
    u = observed.sqy + c * toward.queue_factor
    v = observed.spy + c * toward.prefill_factor
    det = a * d - b * b
    queue = (d * u - b * v) / det
    prefill = (a * v - b * u) / det
    weight = observed.n / (observed.n + prior_samples)
    return TtftFit(_bounded(queue), _bounded(prefill), weight, observed.n, toward.n)


def pool(peers: Iterable[ObservedLatency]) -> ObservedLatency | None:
    """The measurements of several replicas of one variant as one: the fit's statistics and the
    per-token counts added up, the per-token time averaged by its weight (None: none measured).
    Replicas of one variant run the same weights on the same kind of GPU, so what the gateway
    saw of them is the best guess for a replica it has not measured yet."""
    n = sqq = sqp = spp = sqy = spy = tok_n = tok_sum = 0.0
    measured = False
    for o in peers:
        measured = measured or o.n > 0.0 or o.per_token_n > 0.0
        n, sqq, sqp, spp, sqy, spy = (
            n + o.n,
            sqq + o.sqq,
            sqp + o.sqp,
            spp + o.spp,
            sqy + o.sqy,
            spy + o.spy,
        )
        if o.per_token_s is not None and o.per_token_n > 0.0:
            tok_n, tok_sum = tok_n + o.per_token_n, tok_sum + o.per_token_n * o.per_token_s
    if not measured:
        return None
    per_token = tok_sum / tok_n if tok_n > 0.0 else None
    return ObservedLatency(
        per_token_s=per_token, per_token_n=tok_n, n=n, sqq=sqq, sqp=sqp, spp=spp, sqy=sqy, spy=spy
    )


def peer_fit(peers: ObservedLatency | None, prior_samples: float) -> TtftFit:
    """Where a replica's own fit starts: its variant's pooled factors (ridge towards 1, as any
    fit), or the matrix prior (factors 1) when no other replica of the variant was measured.
    The matrix's error is the variant's (profiled once, elsewhere); what one replica's samples
    add is its deviation from its twins. And a new replica, or one back from an ejection (its own
    measurement reset), is scored like its measured twins instead of on the bare prior, which a
    twin measured faster than the prior out-scores on every request at low load: it would never
    be tried."""
    return PRIOR if peers is None else fit(peers, prior_samples)


def _bounded(factor: float) -> float:
    return min(MAX_FACTOR, max(MIN_FACTOR, factor))


def blend(
    prior: float | None, measured: float | None, n: float, prior_samples: float
) -> float | None:
    """``(n * measured + prior_samples * prior) / (n + prior_samples)``; either alone if the
    other is unknown."""
    if measured is None or n <= 0.0:
        return prior
    if prior is None:
        return measured
    return (n * measured + prior_samples * prior) / (n + prior_samples)


@quick_init
@dataclass(frozen=True, slots=True)
class LatencyEstimate:
    """The latency scorer's figures for one candidate: prior, measured factors, blend."""

    prior_queue_ms: float
    prior_prefill_ms: float
    fit: TtftFit
    per_token_prior_ms: float | None = None
    per_token_measured_ms: float | None = None
    per_token_weight: float = 0.0
    per_token_ms: float | None = None

    @property
    def queue_ms(self) -> float:
        return self.fit.queue_factor * self.prior_queue_ms

    @property
    def prefill_ms(self) -> float:
        return self.fit.prefill_factor * self.prior_prefill_ms

    @property
    def ttft_ms(self) -> float:
        return self.queue_ms + self.prefill_ms

    @property
    def prior_ttft_ms(self) -> float:
        return self.prior_queue_ms + self.prior_prefill_ms

    def as_dict(self) -> dict[str, object]:
        return {
            "ttft_ms": round(self.ttft_ms, 3),
            "queue_ms": round(self.queue_ms, 3),
            "prefill_ms": round(self.prefill_ms, 3),
            "prior_ttft_ms": round(self.prior_ttft_ms, 3),
            "prior_queue_ms": round(self.prior_queue_ms, 3),
            "prior_prefill_ms": round(self.prior_prefill_ms, 3),
            "queue_factor": round(self.fit.queue_factor, 4),
            "prefill_factor": round(self.fit.prefill_factor, 4),
            "weight": round(self.fit.weight, 4),
            "samples": round(self.fit.n, 3),
            "peer_samples": round(self.fit.peer_n, 3),
            "per_token_ms": _rounded(self.per_token_ms),
            "per_token_prior_ms": _rounded(self.per_token_prior_ms),
            "per_token_measured_ms": _rounded(self.per_token_measured_ms),
            "per_token_weight": round(self.per_token_weight, 4),
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
