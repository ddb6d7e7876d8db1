"""Stop strings. mlx-lm's stream_generate stops on EOS tokens only, so the loop does this itself.

Text that could be the beginning of a stop string is withheld until the next tokens decide: the reader never
sees a stop string, nor half of one.
"""

from __future__ import annotations

from collections.abc import Iterable


class StopMatcher:
    def __init__(self, stops: Iterable[str]) -> None:
        self.stops = [s for s in dict.fromkeys(stops) if s]
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Add generated text; return what may be shown now. After a stop string, `stopped` is True and
        everything from the stop string on is dropped."""
        if self.stopped:
            return ""
        if not self.stops:
            return text
        held = self._held + text
        # Earliest match wins, whatever stop string it is.
        hits = [i for i in (held.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            self._held = ""
            return held[: min(hits)]
        keep = self._longest_partial(held)
        self._held = held[len(held) - keep :] if keep else ""
        return held[: len(held) - keep]

    def flush(self) -> str:
        """At the end of generation: what was withheld was not a stop string after all."""
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _longest_partial(self, text: str) -> int:
        """Length of the longest suffix of text that is a proper prefix of a stop string."""
        best = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if stop.startswith(text[-n:]):
                    best = n
                    break
        return best
