"""The ledger's invariants, checked over the database (`wlex ledger check`, the metric, the
tests after every scenario) or over a pure `Ledger` (the property tests).

Ledger-level invariants, each a word used in the report, the metric label and the docs:
- debits_equal_credits: over all accounts, posted debits = posted credits and pending
  debits = pending credits;
- balances_match_transfers: each account's four balances are the sums of the transfers
  recorded against it (a row edited behind the ledger's back shows here);
- no_negative_balance: no account beyond its limit (participants, escrow, fee revenue and
  premiums never below zero; clearing never credited beyond its debits);
- pending_resolved_once: every pending transfer posted or voided at most once, its state
  agreeing with its resolutions, and a post never more than the hold.
The settler adds the deal and order invariants as hooks (`Hook`): every deal settled at
most once, every delivered deal exactly once, every live hold belonging to a live order.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache

import asyncpg
from prometheus_client import REGISTRY, CollectorRegistry, Gauge

from services.settlement.ledger import (
    FROZEN,
    HELD,
    LIVE_STATES,
    PENDING,
    POST_PENDING,
    POSTED,
    SINGLE_PHASE,
    VOID_PENDING,
    VOIDED,
    Ledger,
)

DEBITS_EQUAL_CREDITS = "debits_equal_credits"
BALANCES_MATCH_TRANSFERS = "balances_match_transfers"
NO_NEGATIVE_BALANCE = "no_negative_balance"
PENDING_RESOLVED_ONCE = "pending_resolved_once"
LEDGER_INVARIANTS: tuple[str, ...] = (
    DEBITS_EQUAL_CREDITS, BALANCES_MATCH_TRANSFERS, NO_NEGATIVE_BALANCE, PENDING_RESOLVED_ONCE,
)  # fmt: skip
# Named now so the metric's series exist; checked by the settler's hooks.
DEAL_SETTLED_AT_MOST_ONCE = "deal_settled_at_most_once"
DELIVERED_DEAL_SETTLED = "delivered_deal_settled"
HOLD_BELONGS_TO_LIVE_ORDER = "hold_belongs_to_live_order"
SETTLER_INVARIANTS: tuple[str, ...] = (
    DEAL_SETTLED_AT_MOST_ONCE, DELIVERED_DEAL_SETTLED, HOLD_BELONGS_TO_LIVE_ORDER,
)  # fmt: skip

DETAILS_MAX = 20  # per invariant: a broken ledger can have millions of bad rows


@dataclass(frozen=True, slots=True)
class Violation:
    invariant: str
    subject: str  # an account or transfer id, or "ledger"
    detail: str


@dataclass(slots=True)
class Report:
    checked: tuple[str, ...]
    counts: dict[str, int] = field(default_factory=dict)  # invariant -> violations found
    violations: list[Violation] = field(default_factory=list)  # at most DETAILS_MAX each
    accounts: int = 0
    transfers: int = 0

    @property
    def ok(self) -> bool:
        return not any(self.counts.values())

    def add(self, invariant: str, subject: str, detail: str) -> None:
        n = self.counts.get(invariant, 0)
        self.counts[invariant] = n + 1
        if n < DETAILS_MAX:
            self.violations.append(Violation(invariant, subject, detail))

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "accounts": self.accounts,
            "transfers": self.transfers,
            "violations_by_invariant": {name: self.counts.get(name, 0) for name in self.checked},
            "violations": [
                {"invariant": v.invariant, "subject": v.subject, "detail": v.detail}
                for v in self.violations
            ],
        }

    def to_text(self) -> str:
        lines = [f"ledger check: {'ok' if self.ok else 'BROKEN'} "
                 f"({self.accounts} accounts, {self.transfers} transfers)"]  # fmt: skip
        for name in self.checked:
            n = self.counts.get(name, 0)
            lines.append(f"  {'ok  ' if n == 0 else 'FAIL'} {name}" + (f": {n}" if n else ""))
        for v in self.violations:
            lines.append(f"    {v.invariant}: {v.subject}: {v.detail}")
        return "\n".join(lines)


# A hook checks one of the settler's invariants in the same read-only transaction and adds
# what it finds: `async def hook(conn, report) -> None`. Its invariant names go in `names`.
@dataclass(frozen=True, slots=True)
class Hook:
    names: tuple[str, ...]
    run: Callable[[asyncpg.Connection, Report], Awaitable[None]]


# -- over a pure ledger ------------------------------------------------------------------


def check_ledger(ledger: Ledger) -> Report:
    """The ledger-level invariants of an in-memory ledger."""
    report = Report(LEDGER_INVARIANTS, accounts=len(ledger.accounts),
                    transfers=len(ledger.transfers))  # fmt: skip
    accounts = ledger.accounts.values()
    totals = [sum(a.balances()[i] for a in accounts) for i in range(4)]
    _check_totals(report, *totals)

    sums: dict[str, list[int]] = {a: [0, 0, 0, 0] for a in ledger.accounts}
    resolutions: dict[str, list[tuple[str, int]]] = {}
    for t in ledger.transfers.values():
        dr = sums.setdefault(t.debit_account_id, [0, 0, 0, 0])
        cr = sums.setdefault(t.credit_account_id, [0, 0, 0, 0])
        if t.kind in (SINGLE_PHASE, POST_PENDING):
            dr[1] += t.amount_fen
            cr[3] += t.amount_fen
        elif t.kind == PENDING and ledger.pending_states.get(t.id) in LIVE_STATES:
            dr[0] += t.amount_fen
            cr[2] += t.amount_fen
        if t.kind in (POST_PENDING, VOID_PENDING):
            resolutions.setdefault(t.pending_id, []).append((t.kind, t.amount_fen))
    for account_id, expected in sums.items():
        a = ledger.accounts.get(account_id)
        _check_balances(report, account_id, a.balances() if a else None, tuple(expected))
        if a is not None:
            _check_limits(report, account_id, a.debits_must_not_exceed_credits,
                          a.credits_must_not_exceed_debits, *a.balances())  # fmt: skip
    for t in ledger.transfers.values():
        if t.pending_id:
            p = ledger.transfers.get(t.pending_id)
            if p is None or p.kind != PENDING:
                _orphan(report, t.id, t.pending_id)
        if t.kind == PENDING:
            found = resolutions.get(t.id, [])
            _check_resolution(report, t.id, ledger.pending_states.get(t.id), t.amount_fen,
                              [k for k, _ in found], [a for _, a in found])  # fmt: skip
    return report


# -- over the database -------------------------------------------------------------------

_TOTALS = """
SELECT count(*), coalesce(sum(debits_pending_fen), 0), coalesce(sum(debits_posted_fen), 0),
       coalesce(sum(credits_pending_fen), 0), coalesce(sum(credits_posted_fen), 0)
FROM accounts
"""
# numeric sums: a corrupted row must not overflow the check that is meant to find it.
_BALANCES = """
WITH legs AS (
    SELECT debit_account_id AS id, 0::numeric AS dp, amount_fen::numeric AS dpo,
           0::numeric AS cp, 0::numeric AS cpo
      FROM transfers WHERE kind IN ('single_phase', 'post_pending')
    UNION ALL
    SELECT credit_account_id, 0, 0, 0, amount_fen FROM transfers
     WHERE kind IN ('single_phase', 'post_pending')
    UNION ALL
    SELECT debit_account_id, amount_fen, 0, 0, 0 FROM transfers
     WHERE kind = 'pending' AND state IN ('pending', 'frozen')
    UNION ALL
    SELECT credit_account_id, 0, 0, amount_fen, 0 FROM transfers
     WHERE kind = 'pending' AND state IN ('pending', 'frozen')
), sums AS (
    SELECT id, sum(dp) AS dp, sum(dpo) AS dpo, sum(cp) AS cp, sum(cpo) AS cpo
      FROM legs GROUP BY id
)
SELECT coalesce(a.id, s.id), a.id IS NOT NULL,
       a.debits_pending_fen, a.debits_posted_fen, a.credits_pending_fen, a.credits_posted_fen,
       coalesce(s.dp, 0), coalesce(s.dpo, 0), coalesce(s.cp, 0), coalesce(s.cpo, 0)
FROM accounts a FULL JOIN sums s ON s.id = a.id
WHERE a.id IS NULL
   OR a.debits_pending_fen <> coalesce(s.dp, 0) OR a.debits_posted_fen <> coalesce(s.dpo, 0)
   OR a.credits_pending_fen <> coalesce(s.cp, 0) OR a.credits_posted_fen <> coalesce(s.cpo, 0)
ORDER BY 1
"""
_LIMITS = """
SELECT id, debits_must_not_exceed_credits, credits_must_not_exceed_debits,
       debits_pending_fen, debits_posted_fen, credits_pending_fen, credits_posted_fen
FROM accounts
WHERE least(debits_pending_fen, debits_posted_fen, credits_pending_fen, credits_posted_fen) < 0
   OR (debits_must_not_exceed_credits
       AND debits_pending_fen::numeric + debits_posted_fen > credits_posted_fen)
   OR (credits_must_not_exceed_debits
       AND credits_pending_fen::numeric + credits_posted_fen > debits_posted_fen)
ORDER BY id
"""
_RESOLUTIONS = """
WITH r AS (
    SELECT pending_id, array_agg(kind ORDER BY id) AS kinds, array_agg(amount_fen ORDER BY id) AS amounts
      FROM transfers WHERE kind IN ('post_pending', 'void_pending') GROUP BY pending_id
)
SELECT p.id, p.state, p.amount_fen, coalesce(r.kinds, '{}'), coalesce(r.amounts, '{}')
FROM transfers p LEFT JOIN r ON r.pending_id = p.id
WHERE p.kind = 'pending' AND (
      cardinality(r.kinds) > 1
   OR (p.state IN ('pending', 'frozen')) <> (r.kinds IS NULL)
   OR (p.state = 'posted' AND r.kinds[1] <> 'post_pending')
   OR (p.state = 'voided' AND r.kinds[1] <> 'void_pending')
   OR r.amounts[1] > p.amount_fen)
ORDER BY p.id
"""
# No foreign keys in the schema (they cost more than half the batch throughput, measured):
# a resolution must name a pending transfer, and the check says so when one does not.
_ORPHANS = """
SELECT r.id, r.pending_id FROM transfers r LEFT JOIN transfers p ON p.id = r.pending_id
WHERE r.pending_id IS NOT NULL AND (p.id IS NULL OR p.kind <> 'pending')
ORDER BY r.id
"""


async def check_database(conn: asyncpg.Connection, hooks: Sequence[Hook] = ()) -> Report:
    """Every invariant over one snapshot of the ledger's schema (the connection's
    search_path), plus those of `hooks`."""
    names = LEDGER_INVARIANTS + tuple(n for h in hooks for n in h.names)
    report = Report(names)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        n_accounts, *totals = await conn.fetchrow(_TOTALS)
        report.accounts = n_accounts
        report.transfers = await conn.fetchval("SELECT count(*) FROM transfers")
        _check_totals(report, *totals)
        for r in await conn.fetch(_BALANCES):
            _check_balances(report, r[0], tuple(r[2:6]) if r[1] else None, tuple(r[6:10]))
        for r in await conn.fetch(_LIMITS):
            _check_limits(report, *r)
        for r in await conn.fetch(_RESOLUTIONS):
            _check_resolution(report, r[0], r[1], r[2], list(r[3]), list(r[4]))
        for r in await conn.fetch(_ORPHANS):
            _orphan(report, r[0], r[1])
        for hook in hooks:
            await hook.run(conn, report)
    return report


# -- the rules, shared by both ----------------------------------------------------------


def _check_totals(report: Report, dp: int, dpo: int, cp: int, cpo: int) -> None:
    if dpo != cpo:
        report.add(DEBITS_EQUAL_CREDITS, "ledger", f"posted debits {dpo} != posted credits {cpo}")
    if dp != cp:
        report.add(DEBITS_EQUAL_CREDITS, "ledger", f"pending debits {dp} != pending credits {cp}")


_FIELDS = ("debits_pending_fen", "debits_posted_fen", "credits_pending_fen", "credits_posted_fen")


def _check_balances(report: Report, account_id: str, have: tuple | None, expected: tuple) -> None:
    if have is None:
        report.add(
            BALANCES_MATCH_TRANSFERS, account_id, "transfers name an account that is not open"
        )
        return
    wrong = [f"{f} {h} != {e} from transfers"
             for f, h, e in zip(_FIELDS, have, expected, strict=True) if h != e]  # fmt: skip
    if wrong:
        report.add(BALANCES_MATCH_TRANSFERS, account_id, "; ".join(wrong))


def _check_limits(report: Report, account_id: str, dr_limited: bool, cr_limited: bool,
                  dp: int, dpo: int, cp: int, cpo: int) -> None:  # fmt: skip
    if min(dp, dpo, cp, cpo) < 0:
        report.add(
            NO_NEGATIVE_BALANCE, account_id, f"a negative balance field: {(dp, dpo, cp, cpo)}"
        )
    elif dr_limited and dp + dpo > cpo:
        report.add(NO_NEGATIVE_BALANCE, account_id,
                   f"debits {dp} pending + {dpo} posted exceed credits {cpo} posted")  # fmt: skip
    elif cr_limited and cp + cpo > dpo:
        report.add(NO_NEGATIVE_BALANCE, account_id,
                   f"credits {cp} pending + {cpo} posted exceed debits {dpo} posted")  # fmt: skip


def _check_resolution(report: Report, pending_id: str, state: str | None, held_fen: int,
                      kinds: list[str], amounts: Iterable[int]) -> None:  # fmt: skip
    if len(kinds) > 1:
        report.add(PENDING_RESOLVED_ONCE, pending_id, f"resolved {len(kinds)} times: {kinds}")
        return
    expected = {(): (HELD, FROZEN), (POST_PENDING,): (POSTED,), (VOID_PENDING,): (VOIDED,)}
    if state not in expected[tuple(kinds)]:
        report.add(PENDING_RESOLVED_ONCE, pending_id, f"state {state} after {kinds or 'nothing'}")
    for amount in amounts:
        if amount > held_fen:
            report.add(
                PENDING_RESOLVED_ONCE, pending_id, f"posted {amount} of a hold of {held_fen}"
            )


def _orphan(report: Report, transfer_id: str, pending_id: str) -> None:
    report.add(PENDING_RESOLVED_ONCE, transfer_id, f"resolves {pending_id}, no pending transfer")


# -- the metric --------------------------------------------------------------------------


@cache
def invariant_gauge(registry: CollectorRegistry = REGISTRY) -> Gauge:
    return Gauge(
        "wlex_settlement_invariant_violations",
        "Violations of each ledger invariant found by the last check (0 when it holds).",
        ["invariant"],
        registry=registry,
    )


def publish(report: Report, registry: CollectorRegistry = REGISTRY) -> None:
    """Set the gauge of every invariant the report checked, zeros included."""
    gauge = invariant_gauge(registry)
    for name in report.checked:
        gauge.labels(invariant=name).set(report.counts.get(name, 0))


# -- the settler's invariants (hooks over load_hold and the settler's tables) -------------

# Per deal: at most one post of its holds (the load's first hold and the re-sized one), at
# most one payout caused by one of its events, at most one settlement record (deal.settled
# or escrow.refunded) in the settler's outbox.
_DEALS_SETTLED_TWICE = """
WITH deals AS (
    SELECT load_id, deal_id, post_command_id || ':hold' AS first_hold, hold_id
      FROM load_hold WHERE deal_id IS NOT NULL
), posts AS (
    SELECT d.load_id, count(*) AS n FROM deals d
      JOIN transfers p ON p.kind = 'post_pending' AND p.pending_id IN (d.first_hold, d.hold_id)
     GROUP BY d.load_id
), payouts AS (
    SELECT i.load_id, count(*) AS n FROM settler_inbox i
      JOIN transfers t ON t.cause = i.event_id AND t.code = 'payout'
     GROUP BY i.load_id
), records AS (
    SELECT load_id, count(*) AS n FROM settler_outbox
     WHERE type IN ('deal.settled', 'escrow.refunded') GROUP BY load_id
)
SELECT d.deal_id, coalesce(p.n, 0), coalesce(y.n, 0), coalesce(r.n, 0)
FROM deals d LEFT JOIN posts p USING (load_id) LEFT JOIN payouts y USING (load_id)
     LEFT JOIN records r USING (load_id)
WHERE coalesce(p.n, 0) > 1 OR coalesce(y.n, 0) > 1 OR coalesce(r.n, 0) > 1
ORDER BY 1
"""
# Every delivery the settler applied: its deal is settled (one post of its hold, one
# deal.settled), or disputed (frozen, awaiting the operator, or refunded by one).
_DELIVERED_NOT_SETTLED = """
SELECT i.event_id, i.load_id, h.state, r.n, p.n
FROM settler_inbox i
LEFT JOIN load_hold h ON h.load_id = i.load_id
LEFT JOIN LATERAL (SELECT count(*) AS n FROM settler_outbox o
                    WHERE o.load_id = i.load_id AND o.type = 'deal.settled') r ON true
LEFT JOIN LATERAL (SELECT count(*) AS n FROM transfers t
                    WHERE t.kind = 'post_pending' AND t.pending_id = h.hold_id) p ON true
WHERE i.type = 'shipment.delivered' AND i.outcome = 'applied'
  AND (h.load_id IS NULL
       OR NOT ((h.state = 'settled' AND r.n = 1 AND p.n = 1) OR h.state IN ('frozen', 'refunded')))
ORDER BY 1
"""
# A live hold (pending or frozen) with no load in a live state naming it...
_HOLDS_WITHOUT_ORDER = """
SELECT t.id, t.state, h.load_id, h.state
FROM transfers t LEFT JOIN load_hold h ON h.hold_id = t.id
WHERE t.kind = 'pending' AND t.state IN ('pending', 'frozen')
  AND (h.load_id IS NULL OR h.state NOT IN ('held', 'dealt', 'frozen'))
ORDER BY 1
"""
# ...and, the other way, a load whose hold is missing or not in the state its own says.
_ORDERS_WITHOUT_HOLD = """
SELECT h.load_id, h.state, h.hold_id, h.hold_fen, t.state, t.amount_fen
FROM load_hold h LEFT JOIN transfers t ON t.id = h.hold_id AND t.kind = 'pending'
WHERE t.id IS NULL OR t.amount_fen <> h.hold_fen
   OR t.state <> CASE h.state WHEN 'held' THEN 'pending' WHEN 'dealt' THEN 'pending'
                              WHEN 'frozen' THEN 'frozen' WHEN 'settled' THEN 'posted'
                              ELSE 'voided' END
ORDER BY 1
"""


async def _deal_settled_at_most_once(conn: asyncpg.Connection, report: Report) -> None:
    for deal_id, posts, payouts, records in await conn.fetch(_DEALS_SETTLED_TWICE):
        report.add(DEAL_SETTLED_AT_MOST_ONCE, deal_id,
                   f"{posts} posts, {payouts} payouts, {records} settlement records")  # fmt: skip


async def _delivered_deal_settled(conn: asyncpg.Connection, report: Report) -> None:
    for event_id, load_id, state, records, posts in await conn.fetch(_DELIVERED_NOT_SETTLED):
        if state is None:
            report.add(DELIVERED_DEAL_SETTLED, load_id, f"delivered ({event_id}), no hold")
        else:
            report.add(DELIVERED_DEAL_SETTLED, load_id,
                       f"delivered ({event_id}) but {state}, {posts} posts,"
                       f" {records} deal.settled")  # fmt: skip


async def _hold_belongs_to_live_order(conn: asyncpg.Connection, report: Report) -> None:
    for hold_id, hold_state, load_id, load_state in await conn.fetch(_HOLDS_WITHOUT_ORDER):
        report.add(HOLD_BELONGS_TO_LIVE_ORDER, hold_id,
                   f"{hold_state} hold, load {load_id or 'none'} {load_state or ''}".rstrip())  # fmt: skip
    for load_id, state, hold_id, hold_fen, t_state, t_fen in await conn.fetch(_ORDERS_WITHOUT_HOLD):
        have = "no such hold" if t_state is None else f"hold {t_state} of {t_fen}"
        report.add(HOLD_BELONGS_TO_LIVE_ORDER, load_id,
                   f"{state} with hold {hold_id} of {hold_fen}: {have}")  # fmt: skip


# The tables the settler's hooks read (load_hold is the gate's, the others the settler's).
SETTLER_TABLES: tuple[str, ...] = ("load_hold", "settler_inbox", "settler_outbox")


def settler_hooks() -> list[Hook]:
    """The settler's invariants, for check_database (over a schema with SETTLER_TABLES)."""
    return [
        Hook((DEAL_SETTLED_AT_MOST_ONCE,), _deal_settled_at_most_once),
        Hook((DELIVERED_DEAL_SETTLED,), _delivered_deal_settled),
        Hook((HOLD_BELONGS_TO_LIVE_ORDER,), _hold_belongs_to_live_order),
    ]
