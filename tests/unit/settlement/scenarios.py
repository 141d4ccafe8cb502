"""Random ledger batches for the property tests (pure) and the store tests (PostgreSQL),
driven by any `draw(lo, hi) -> int`: Hypothesis's (it shrinks) or random.Random's."""

from __future__ import annotations

from collections.abc import Callable

from services.settlement import ledger as L
from services.settlement import postings as P

Draw = Callable[[int, int], int]

PARTICIPANTS = ("p0", "p1", "p2")
INSURER = "p2"
UNKNOWN_ACCOUNT = "cash:nobody"


def chart() -> list[L.Account]:
    accounts = P.platform_accounts()
    for p in PARTICIPANTS:
        accounts += P.participant_accounts(p, insurer=p == INSURER)
    return accounts


ACCOUNT_IDS = tuple(a.id for a in chart())


class Scenario:
    """Makes batches whose transfers refer to what earlier ones created, so holds get
    posted, voided, frozen and retried, not just placed."""

    def __init__(self, draw: Draw, available: Callable[[str], int] | None = None) -> None:
        self.draw = draw
        # What a participant may still spend, when the caller knows: amounts right at the
        # limit (and one fen over it) test the boundaries that random amounts miss.
        self.available = available
        self.held: dict[str, int] = {}  # pending id -> amount asked for
        self.events = 0
        self.pendings: list[str] = []  # ids of every pending transfer ever asked for
        self.seen: list[L.Transfer] = []  # every transfer ever asked for

    def pick(self, items):
        return items[self.draw(0, len(items) - 1)]

    def event(self) -> str:
        self.events += 1
        return f"e{self.events}"

    def amount(self, lo: int = 1, hi: int = 600, participant: str | None = None) -> int:
        if participant is not None and self.available is not None and self.draw(0, 3) == 0:
            return max(1, self.available(participant) + self.draw(0, 1))
        return self.draw(lo, hi)

    def hold(self, event: str, participant: str, amount: int) -> list[L.Transfer]:
        out = P.hold(event, participant, amount)
        self.pendings.append(out[0].id)
        self.held[out[0].id] = amount
        return out

    def pending_ref(self) -> str:
        choice = self.draw(0, 9)
        if choice == 0 or not self.pendings:
            return "e0:nothing"  # pending_not_found
        if choice == 1 and self.seen:
            return self.pick(self.seen).id  # maybe not a pending transfer
        return self.pick(self.pendings)

    def one(self) -> list[L.Transfer]:
        op = self.draw(0, 10)
        p = self.pick(PARTICIPANTS)
        if op == 0:
            return P.deposit(self.event(), p, self.amount(1, 2_000), self.event())
        if op == 1:
            return P.withdrawal(self.event(), p, self.amount(participant=p), self.event())
        if op == 2:
            return self.hold(self.event(), p, self.amount(participant=p))
        if op in (3, 4, 5, 6):
            kind = (L.POST_PENDING, L.VOID_PENDING, L.FREEZE_PENDING, L.UNFREEZE_PENDING)[op - 3]
            pending_id = self.pending_ref()
            amount = None
            if self.draw(0, 2) == 0:  # around the held amount, or anything
                held = self.held.get(pending_id, 300)
                amount = self.pick((held - 1, held, held + 1, self.amount(-1, 700)))
            return [L.Transfer(L.transfer_id(self.event(), kind), kind, amount_fen=amount,
                               pending_id=pending_id, code=kind)]  # fmt: skip
        if op == 7:  # anything between any accounts, some of them wrong on purpose
            accounts = (*ACCOUNT_IDS, UNKNOWN_ACCOUNT)
            kind = L.PENDING if self.draw(0, 2) == 0 else L.SINGLE_PHASE
            t = L.Transfer(L.transfer_id(self.event(), "any"), kind, self.pick(accounts),
                           self.pick(accounts), self.amount(-1, 600), code="any")  # fmt: skip
            if kind == L.PENDING:
                self.pendings.append(t.id)
            return [t]
        if op == 8 and self.seen:  # a retry, or an id used again for something else
            t = self.pick(self.seen)
            if self.draw(0, 1) == 0:
                return [t]
            return [L.Transfer(t.id, t.kind, t.debit_account_id, t.credit_account_id,
                               (t.amount_fen or 0) + 1, t.pending_id, t.code, t.cause, t.linked)]  # fmt: skip
        if op == 9 and self.pendings:  # a delivery: post and pay out, linked
            price = self.amount(1, 600)
            fee = self.draw(0, price)
            premium = self.draw(0, 2) * self.draw(0, 50)
            return P.settle(self.event(), self.pick(self.pendings), self.pick(PARTICIPANTS),
                            price, fee, insurer_id=INSURER, premium_fen=premium)  # fmt: skip
        if op == 10 and self.pendings:  # a deal: re-size the hold
            out = P.resize_hold(self.event(), self.pick(self.pendings), p, self.amount())
            self.pendings.append(out[1].id)
            self.held[out[1].id] = out[1].amount_fen
            return out
        return P.deposit(self.event(), p, self.amount(), self.event())

    def batch(self, size_max: int = 6) -> list[L.Transfer]:
        out: list[L.Transfer] = []
        for _ in range(self.draw(1, size_max)):
            group = self.one()
            if self.draw(0, 5) == 0:  # chain it to what follows (maybe nothing: open)
                group = [_linked(t) for t in group]
            out += group
        self.seen += out
        return out


def _linked(t: L.Transfer) -> L.Transfer:
    return L.Transfer(t.id, t.kind, t.debit_account_id, t.credit_account_id, t.amount_fen,
                      t.pending_id, t.code, t.cause, linked=True)  # fmt: skip
