"""Shoppers and merchants reacting to published tags, driven by the listings' true labels.

Stands in for the recommendation service and the merchant console: for each TagEvent it sees,
the listing is shown to a few shoppers under each of its tags (an impression with a slot
position); a shopper clicks (and sometimes carts or buys) more often when the tag is right for
the listing than when it is wrong, and less often further down the page; a merchant now and
then judges one tag: accepts a right one, rejects a wrong one, with a little noise.
Pure and seeded: the same tag events and truth give the same feedback.

Examples
--------
>>> from shared.events import Tag, TagEvent
>>> ev = TagEvent(listing_id="l1", model_name="m", model_version="1", source_event_id="e1",
...               tags=[Tag(tag_id="cat:a", name="A", kind="category", score=0.9, source="model")])
>>> sim = ShopperSimulator({"l1": {"cat:a"}}, ShopperConfig(shoppers_per_tag=2, merchant_rate=1.0), seed=0)
>>> [e.type.value for e in sim.react(ev)][:3]
['impression', 'impression', 'tag_accept']
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Set
from dataclasses import dataclass
from datetime import datetime

from shared.events import FeedbackEvent, FeedbackType, TagEvent, TagSource, utc_now


@dataclass(frozen=True)
class ShopperConfig:
    shoppers_per_tag: int = 6  # impressions per shown tag
    click_right: float = 0.35  # click probability at the top slot when the tag fits the listing
    click_wrong: float = 0.05  # ... when it does not
    cart_after_click: float = 0.3
    purchase_after_cart: float = 0.5
    position_decay: float = 1.0  # examination ∝ 1 / position ** decay
    merchant_rate: float = 0.5  # chance a merchant judges one tag of a listing
    merchant_noise: float = 0.05  # chance the merchant's verdict is the wrong one
    users: int = 500


class ShopperSimulator:
    """Turns published tags into feedback events (impressions, clicks, carts, purchases, accepts, rejects)."""

    def __init__(self, truth: Mapping[str, Set[str]], config: ShopperConfig | None = None, seed: int = 0) -> None:
        self.truth = truth
        self.config = config or ShopperConfig()
        self.rng = random.Random(seed)
        self.sequence = 0

    def react(self, event: TagEvent, now: datetime | None = None) -> list[FeedbackEvent]:
        """Feedback on one listing's tags; none for a listing whose truth is unknown."""
        right = self.truth.get(event.listing_id)
        if right is None:
            return []
        c, ts = self.config, now or utc_now()
        shown = [t for t in event.tags if t.source != TagSource.ZERO_SHOT]
        out: list[FeedbackEvent] = []
        for tag in shown:
            fits = tag.tag_id in right
            for _ in range(c.shoppers_per_tag):
                user = f"shopper-{self.rng.randrange(c.users)}"
                position = 1 + self.rng.randrange(10)
                out.append(self._event(user, event.listing_id, FeedbackType.IMPRESSION, tag.tag_id, ts, position))
                p_click = (c.click_right if fits else c.click_wrong) / position ** c.position_decay
                if self.rng.random() < p_click:
                    out.append(self._event(user, event.listing_id, FeedbackType.CLICK, tag.tag_id, ts, position))
                    if self.rng.random() < c.cart_after_click:
                        out.append(self._event(user, event.listing_id, FeedbackType.ADD_TO_CART, tag.tag_id, ts))
                        if self.rng.random() < c.purchase_after_cart:
                            out.append(self._event(user, event.listing_id, FeedbackType.PURCHASE, tag.tag_id, ts))
        if shown and self.rng.random() < c.merchant_rate:
            # The merchant console asks about the model's guesses first (that is what they are for).
            guesses = [t for t in shown if t.source == TagSource.EXPLORATORY]
            tag = self.rng.choice(guesses or shown)
            fits = (tag.tag_id in right) != (self.rng.random() < c.merchant_noise)
            kind = FeedbackType.TAG_ACCEPT if fits else FeedbackType.TAG_REJECT
            out.append(self._event(f"merchant-{event.listing_id}", event.listing_id, kind, tag.tag_id, ts))
        return out

    def _event(
        self, user: str, listing: str, kind: FeedbackType, tag: str, ts: datetime, position: int | None = None
    ) -> FeedbackEvent:
        self.sequence += 1
        return FeedbackEvent(
            event_id=f"sim-{self.sequence}-{self.rng.getrandbits(48):012x}", user_id=user[:200], listing_id=listing,
            type=kind, tag_id=tag, position=position, ts=ts,
            price=19.99 if kind == FeedbackType.PURCHASE else None,
        )
