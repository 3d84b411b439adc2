"""Small synthetic worlds for the unit tests.

The built-in world's defaults (:class:`~mgrec.data.synthetic.SyntheticConfig`) are tuned for the
synthetic ablation: short histories and a mostly new catalogue, at 8,000 users. The unit tests
want small, dense worlds whose signals show at a few hundred users, so they name the knobs of the
earlier default world (session 1 to 14) and change only the sizes.
"""

from __future__ import annotations

from typing import Any

from mgrec.data.synthetic import SyntheticConfig

#: every knob of the pre-session-15 default world that differs from today's defaults, except the sizes.
DENSE: dict[str, Any] = dict(
    events_sigma=1.0, min_events=3, n_clusters=20, tag_purity=0.8, item_noise=0.3, new_item_frac=0.2,
    profile_share=0.7, homophily=0.85, social_mix=0.4, social_window_days=30.0, w_pop=0.7, w_pop_drift=1.0,
    w_taste_drift=0.5, w_daypart=1.0, w_price=0.5, w_seq_cluster=1.5, w_social=2.5, successor_head=0.0,
)


def small_world(**sizes: Any) -> SyntheticConfig:
    """A dense world: :data:`DENSE` with ``sizes`` (``n_users``, ``n_items``, ``mean_events``, ...)."""
    return SyntheticConfig(**{**DENSE, **sizes})


def world_name(**sizes: Any) -> str:
    """:func:`small_world` as a dataset name for the command line (``synthetic:KEY=VALUE,...``)."""
    return "synthetic:" + ",".join(f"{k}={v}" for k, v in {**DENSE, **sizes}.items())


#: the default world of sessions 1 to 14 (2,000 users, 1,000 items, ~78k events), by name.
OLD_DEFAULT = world_name(n_users=2000, n_items=1000, mean_events=40.0)
