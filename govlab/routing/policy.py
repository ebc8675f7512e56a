"""The routing policy: which bands each sample's gradient may reach, from its categories."""

from __future__ import annotations

from dataclasses import dataclass

from govlab.data.world import CATEGORIES
from govlab.errors import GovlabError
from govlab.routing.bands import SLOT, TRUNK

CAPTION = "caption"  # style_band value: the per-source slots sit on the caption, not in a UNet band


def slot_band(source: str) -> str:
    return f"{SLOT}:{source}"


@dataclass(frozen=True)
class RoutingPolicy:
    """Category -> allowed bands. ``"slot"`` means the sample's own source slot.

    A sample reaches the union of its categories' bands plus the trunk. If it carries a
    sequestered category it reaches only the bands of its sequestered categories (no trunk). A sample
    of ``style_category`` reaches the ``style_band`` only through its own slot; one of a ``confined``
    source reaches its own slot and nothing else.
    """

    rules: dict
    sequestered: tuple[str, ...] = ()
    style_category: str = "style"
    style_band: str | None = None
    confined: frozenset = frozenset()  # sources whose style samples reach only their own slot

    def validate(self, bands: set[str], *, slots: bool, categories=CATEGORIES) -> None:
        """One clear error for an unknown category or band."""
        for cat in [*self.rules, *self.sequestered, self.style_category]:
            if cat not in categories:
                raise GovlabError(f"routing policy: unknown category {cat!r} (known: {', '.join(categories)})")
        for cat, names in self.rules.items():
            if isinstance(names, str) or not isinstance(names, (list, tuple)):
                raise GovlabError(f"routing policy: {cat!r} must map to a list of bands")
            for b in names:
                if b == SLOT:
                    if not slots:
                        raise GovlabError(f"routing policy: {cat!r} names 'slot' but there are no "
                                          f"per-source slots (routing.slot_rank is 0)")
                elif b not in bands:
                    raise GovlabError(f"routing policy: {cat!r} names unknown band {b!r} "
                                      f"(bands: {', '.join(sorted(bands))})")
        if self.style_band not in (None, CAPTION) and slots and self.style_band not in bands:
            raise GovlabError(f"routing: style_band {self.style_band!r} is neither {CAPTION!r} nor a band "
                              f"(bands: {', '.join(sorted(bands))})")

    def allowed(self, categories, source: str, slot_sources=frozenset()) -> frozenset[str]:
        """The bands one sample may change."""
        seq = [c for c in categories if c in self.sequestered]
        if not seq and source in self.confined and self.style_category in categories and source in slot_sources:
            return frozenset({slot_band(source)})
        cats = seq or list(categories)
        out = set() if seq else {TRUNK}
        for c in cats:
            for b in self.rules.get(c, ()):
                if b == SLOT:
                    if source in slot_sources:
                        out.add(slot_band(source))
                else:
                    out.add(b)
        if not seq and self.style_category in categories and source in slot_sources:
            out.discard(self.style_band)
        return frozenset(out)
