"""The read-model writes of one projected batch, inside the batch's transaction: the SQL
of every change of the fold (services.gateway.projector), and BatchWrites, which runs
them with as few statements as the batch allows.

Per batch, instead of per event:

- which rows exist (the events' needs: a load, an offer, whatever a ref_id names) is
  one statement for the whole batch (`learn`), then looked up in memory;
- bids (BidPlaced) are one INSERT from arrays, run before the first later change that
  reads or writes bid rows (RefStatus, Deal) and before the log;
- log entries (Log) are one statement at the end of the batch, numbered per load in
  the order the events were applied;
- parked events are one INSERT (projection_service).

Why the result is the one the per-event statements gave: the projector never deletes a
load, offer or bid row and never changes a load's id, command ids or a bid's load, so
a row known to exist at the start of the batch still does at each event, and the only
rows the batch itself creates that a need or a log can name are its bids, which are
tracked here as they are placed. A log entry reads exactly those (which load an id or
a command names), so writing the batch's entries at its end, in order, gives each the
load and the sequence number it had. The other changes (statuses, deals, offers) still
run one statement each, in event order: they are few per load, and their order is
their meaning (a status moves by rank; the first fact wins).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import asyncpg

from services.common.envelope import encode
from services.gateway import lifecycle as lc
from services.gateway import projector as p

_LOAD_STATUS = (
    "UPDATE load SET status = $2, reject_reason = COALESCE($3, reject_reason), status_ms = $4"
    " WHERE load_id = $1 AND status = ANY($5::text[])"
)
_REF_STATUS = (
    "WITH l AS (UPDATE load SET status = $2, status_ms = $5"
    "  WHERE load_id = $1 AND $2::text IS NOT NULL AND status = ANY($6::text[])),"
    " o AS (UPDATE offer SET status = $3, status_ms = $5"
    "  WHERE offer_id = $1 AND $3::text IS NOT NULL)"
    " UPDATE bid SET status = $4 WHERE bid_id = $1 AND $4::text IS NOT NULL AND status = 'live'"
)
_COMMAND_REJECTED = (
    "WITH l AS (UPDATE load SET status = 'rejected', reject_reason = $3, status_ms = $4"
    "  WHERE load_id = $1 AND command_id = $2 AND status = ANY($5::text[]))"
    " UPDATE offer SET status = 'rejected', reject_reason = $3, status_ms = $4"
    " WHERE offer_id = $1 AND command_id = $2 AND status = 'requested'"
)
# A consolidating offer keeps resting while both remainders stay above zero (DESIGN);
# any other offer is done after its first deal. offer.rested, when it follows, states
# the engine's own remainders.
_DEAL = (
    "WITH d AS (INSERT INTO deal (deal_id, load_id, shipper_id, carrier_id, offer_id, bid_id,"
    "  price_fen, made_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
    "  ON CONFLICT (deal_id) DO UPDATE SET shipper_id = COALESCE(deal.shipper_id, EXCLUDED.shipper_id),"
    "  carrier_id = COALESCE(deal.carrier_id, EXCLUDED.carrier_id),"
    "  offer_id = COALESCE(deal.offer_id, EXCLUDED.offer_id), bid_id = COALESCE(deal.bid_id, EXCLUDED.bid_id),"
    "  price_fen = COALESCE(deal.price_fen, EXCLUDED.price_fen), made_ms = COALESCE(deal.made_ms, EXCLUDED.made_ms)),"
    " b AS (UPDATE bid SET status = 'won' WHERE bid_id = $6)"
    " UPDATE offer o SET deals = o.deals + 1, status_ms = $8,"
    "  remaining_kg = COALESCE(o.remaining_kg, (o.data->>'capacity_kg')::bigint) - (l.data->>'weight_kg')::bigint,"
    "  remaining_dm3 = COALESCE(o.remaining_dm3, (o.data->>'capacity_dm3')::bigint) - (l.data->>'volume_dm3')::bigint,"
    "  status = CASE WHEN NOT (o.data->>'consolidate')::boolean"
    "   OR COALESCE(o.remaining_kg, (o.data->>'capacity_kg')::bigint) - (l.data->>'weight_kg')::bigint <= 0"
    "   OR COALESCE(o.remaining_dm3, (o.data->>'capacity_dm3')::bigint) - (l.data->>'volume_dm3')::bigint <= 0"
    "   THEN 'dealt' ELSE o.status END"
    " FROM load l WHERE o.offer_id = $5 AND l.load_id = $2"
)  # fmt: skip
# The batch's bids, first one of an id wins (as one INSERT per bid did).
_BIDS = (
    "INSERT INTO bid (bid_id, load_id, carrier_id, price_fen, placed_ms, status)"
    " SELECT b, l, c, f, t, 'live' FROM unnest($1::text[], $2::text[], $3::text[],"
    " $4::bigint[], $5::bigint[]) WITH ORDINALITY AS x(b, l, c, f, t, n) ORDER BY n"
    " ON CONFLICT (bid_id) DO NOTHING"
)
_OFFER_RESTED = (
    "UPDATE offer SET status = 'open', remaining_kg = $2, remaining_dm3 = $3, status_ms = $4"
    " WHERE offer_id = $1"
)
# The batch's log entries, n = the order they were applied. Each joins the load it
# names: the load itself, a bid's load, or the load whose post or cancel was the
# refused command; entries of one load take its next sequence numbers in n order, and
# taking them locks the load's row (SSE readers rely on numbers committing in order).
_LOGS = (
    "WITH e AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],"
    "  $5::bigint[], $6::text[]) WITH ORDINALITY AS e(ref, cause, event_id, type, ts_ms, envelope, n)),"
    " r AS (SELECT e.*, COALESCE("
    "  (SELECT load_id FROM load WHERE load_id = e.ref),"
    "  (SELECT load_id FROM bid WHERE bid_id = e.ref),"
    "  (SELECT load_id FROM load WHERE command_id = e.cause LIMIT 1),"
    "  (SELECT load_id FROM load WHERE cancel_command_id = e.cause LIMIT 1)) AS load_id FROM e),"
    " k AS (SELECT r.*, row_number() OVER (PARTITION BY r.load_id ORDER BY r.n) AS k,"
    "  count(*) OVER (PARTITION BY r.load_id) AS cnt FROM r WHERE r.load_id IS NOT NULL),"
    " s AS (UPDATE load SET last_seq = load.last_seq + g.cnt"
    "  FROM (SELECT DISTINCT load_id, cnt FROM k) g WHERE load.load_id = g.load_id"
    "  RETURNING load.load_id, load.last_seq)"
    " INSERT INTO load_event (load_id, seq, event_id, type, ts_ms, envelope)"
    " SELECT k.load_id, s.last_seq - k.cnt + k.k, k.event_id, k.type, k.ts_ms, k.envelope"
    " FROM k JOIN s ON s.load_id = k.load_id ORDER BY k.n RETURNING load_id"
)  # fmt: skip
# Which of these ids are rows: $1 loads, $2 offers, $3 bids.
_EXISTING = (
    "SELECT 'l', load_id FROM load WHERE load_id = ANY($1::text[])"
    " UNION ALL SELECT 'o', offer_id FROM offer WHERE offer_id = ANY($2::text[])"
    " UNION ALL SELECT 'b', bid_id FROM bid WHERE bid_id = ANY($3::text[])"
)


def _deal_facts_sql(columns: Iterable[str]) -> str:
    cols = list(columns)
    for c in cols:  # names go into SQL text: only the fold's known columns
        if c not in p.DEAL_COLUMNS:
            raise ValueError(f"unknown deal column {c!r}")
    names = ", ".join(["deal_id", "load_id", *cols])
    values = ", ".join(f"${i}" for i in range(1, len(cols) + 3))
    sets = ", ".join(f"{c} = COALESCE(deal.{c}, EXCLUDED.{c})" for c in cols)
    return (
        f"INSERT INTO deal ({names}) VALUES ({values}) ON CONFLICT (deal_id) DO UPDATE SET {sets}"
    )


class BatchWrites:
    """The writes of one batch on conn, in its transaction: learn() the rows the folds
    need, then needs_met() / apply() each fold in order, then finish(). Not reusable."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.statements = 0  # run so far (tests and the benchmark's notes)
        self._loads: set[str] = set()
        self._offers: set[str] = set()
        self._bids: set[str] = set()  # existing, or placed by this batch
        self._asked: set[tuple[str, str]] = set()
        self._bid_rows: list[tuple[str, str, str, int, int]] = []
        self._logs: list[tuple[str | None, str | None, str, str, int, str]] = []

    async def learn(self, needs: Iterable[tuple[str, str]]) -> None:
        """Looks up, in one statement, which of these needs' rows exist."""
        loads: set[str] = set()
        offers: set[str] = set()
        bids: set[str] = set()
        for need in needs:
            if need in self._asked:
                continue
            self._asked.add(need)
            kind, subject = need
            if kind in (p.LOAD, p.REF):
                loads.add(subject)
            if kind in (p.OFFER, p.REF):
                offers.add(subject)
            if kind == p.REF:
                bids.add(subject)
        if not (loads or offers or bids):
            return
        self.statements += 1
        for kind, id_ in await self.conn.fetch(_EXISTING, list(loads), list(offers), list(bids)):
            {"l": self._loads, "o": self._offers, "b": self._bids}[kind].add(id_)

    def needs_met(self, fold: p.Fold) -> bool:
        """Whether every row fold needs exists (learn() them first)."""
        return all(self.exists(kind, subject) for kind, subject in fold.needs)

    def exists(self, kind: str, subject: str) -> bool:
        """Whether the row of this need exists (learn() it first)."""
        if (kind, subject) not in self._asked:
            raise RuntimeError(f"need {(kind, subject)} checked before learn()")
        if kind == p.LOAD:
            return subject in self._loads
        if kind == p.OFFER:
            return subject in self._offers
        return subject in self._loads or subject in self._offers or subject in self._bids

    async def apply(self, env: dict[str, Any], fold: p.Fold) -> None:
        """The changes of one event, in order (log entries and bids may be deferred,
        as the module docstring says)."""
        ts = env["ts"]
        conn = self.conn
        for c in fold.changes:
            if isinstance(c, p.Log):
                self._logs.append(
                    (c.load_id or c.ref_id, c.cause, env["id"], env["type"], ts, encode(env).decode())
                )  # fmt: skip
            elif isinstance(c, p.BidPlaced):
                self._bid_rows.append((c.bid_id, c.load_id, c.carrier_id, c.price_fen, c.placed_ms))
                self._bids.add(c.bid_id)
            elif isinstance(c, p.LoadStatus):
                self.statements += 1
                await conn.execute(
                    _LOAD_STATUS, c.load_id, c.status, c.reason, ts, lc.replaceable_by(c.status)
                )
            elif isinstance(c, p.DealFacts):
                names = [k for k, _ in c.columns]
                self.statements += 1
                await conn.execute(
                    _deal_facts_sql(names), c.deal_id, c.load_id, *(v for _, v in c.columns)
                )
            elif isinstance(c, p.RefStatus):
                await self._write_bids()  # it may name one of them
                replaceable = lc.replaceable_by(c.load) if c.load else []
                self.statements += 1
                await conn.execute(_REF_STATUS, c.ref_id, c.load, c.offer, c.bid, ts, replaceable)
            elif isinstance(c, p.CommandRejected):
                self.statements += 1
                await conn.execute(
                    _COMMAND_REJECTED, c.ref_id, c.cause, c.reason, ts,
                    lc.replaceable_by(lc.REJECTED),
                )  # fmt: skip
            elif isinstance(c, p.Deal):
                await self._write_bids()  # the winning bid may be one of them
                self.statements += 1
                await conn.execute(
                    _DEAL, c.deal_id, c.load_id, c.shipper_id, c.carrier_id, c.offer_id, c.bid_id,
                    c.price_fen, c.made_ms,
                )  # fmt: skip
            elif isinstance(c, p.OfferRested):
                self.statements += 1
                await conn.execute(_OFFER_RESTED, c.offer_id, c.remaining_kg, c.remaining_dm3, ts)
            else:  # pragma: no cover - the fold and this adapter are changed together
                raise TypeError(f"unknown change {c!r}")

    async def finish(self) -> set[str]:
        """Writes what was deferred; returns the ids of the loads whose logs grew."""
        await self._write_bids()
        if not self._logs:
            return set()
        logs, self._logs = self._logs, []
        self.statements += 1
        rows = await self.conn.fetch(_LOGS, *(list(column) for column in zip(*logs, strict=True)))
        return {r[0] for r in rows}

    async def _write_bids(self) -> None:
        if not self._bid_rows:
            return
        rows, self._bid_rows = self._bid_rows, []
        self.statements += 1
        await self.conn.execute(_BIDS, *(list(column) for column in zip(*rows, strict=True)))
