"""gc_settings.py: the serving and collector processes collect young objects less often."""

from __future__ import annotations

import gc

from proxy.gc_settings import YOUNG_THRESHOLD, collect_less


def test_collect_less_raises_the_young_threshold_and_keeps_the_others() -> None:
    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 7, 9)
        collect_less()
        assert gc.get_threshold() == (YOUNG_THRESHOLD, 7, 9)
        assert YOUNG_THRESHOLD > 700
    finally:
        gc.set_threshold(*before)
