"""A listing's locale on its tags: a Chinese listing's tags are named in Chinese. Pure.

Tag ids never change with the locale (one id per category, whatever language named it); only
``name``, what a shopper or merchant reads, does: for a ``zh-*`` listing it becomes the
taxonomy's zh-CN name (``name_zh``) where the tag has one. ``name_zh`` stays as it was.

>>> from shared.events import TagKind, TagSource
>>> t = Tag(tag_id="cat:apparel-accessories", name="Apparel & Accessories", kind=TagKind.CATEGORY,
...         score=0.9, source=TagSource.MODEL, name_zh="服饰与配饰")
>>> localize_tags([t], "zh-CN")[0].name, localize_tags([t], "en")[0].name
('服饰与配饰', 'Apparel & Accessories')
"""

from __future__ import annotations

from collections.abc import Sequence

from shared.events import Tag
from shared.tagmodel.zero_shot import is_chinese


def localize_tags(tags: Sequence[Tag], locale: str | None) -> list[Tag]:
    """``tags`` named for a listing in ``locale`` (Chinese names for ``zh-*``; others unchanged)."""
    if not is_chinese(locale):
        return list(tags)
    return [t.model_copy(update={"name": t.name_zh}) if t.name_zh and t.name != t.name_zh else t for t in tags]
