"""Which inbound connections may start a handshake: the limit on unfinished handshakes, per source and
in total, so one mesh member holding connections open cannot keep the others out. Pure.

Rules:
- A source (the connection's remote address: a tunnel address in the mesh) holds at most `per_source`
  unfinished handshakes; one more from it is refused.
- At most `total` are unfinished across all sources. When all are taken, an arrival from a source that
  holds fewer than the heaviest source displaces that source's oldest unfinished handshake: a source
  with nothing unfinished (a legitimate peer dialing once) always gets through, whatever others hold.
- An arrival whose source already holds as many as the heaviest is refused: it cannot grow its share
  by displacing an equal.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum


class GateVerdict(Enum):
    ADMIT = "admit"
    ADMIT_DISPLACING = "admit, displacing the heaviest source's oldest"
    REFUSE_SOURCE = "refused: this source has too many unfinished handshakes"
    REFUSE_FULL = "refused: every handshake slot is held"


@dataclass(frozen=True, slots=True)
class GateDecision:
    verdict: GateVerdict
    displace: int | None = None  # index into `unfinished` of the handshake to close first

    @property
    def admitted(self) -> bool:
        return self.verdict in (GateVerdict.ADMIT, GateVerdict.ADMIT_DISPLACING)


def admit_handshake(unfinished: Sequence[str], source: str, per_source: int, total: int) -> GateDecision:
    """`unfinished`: the sources of the unfinished inbound handshakes, oldest first."""
    held = Counter(unfinished)
    mine = held[source]
    if mine >= per_source:
        return GateDecision(GateVerdict.REFUSE_SOURCE)
    if len(unfinished) < total:
        return GateDecision(GateVerdict.ADMIT)
    heaviest, most = max(held.items(), key=lambda item: item[1])
    if most <= mine:
        return GateDecision(GateVerdict.REFUSE_FULL)
    return GateDecision(GateVerdict.ADMIT_DISPLACING, unfinished.index(heaviest))
