"""A brute-force ledger to check ledger.py against: it keeps only the log of recorded
transfers and derives every balance and pending state by reading the whole log again.
Slow and obviously right, the way a reader states the rules, not the way ledger.py
keeps them."""

from __future__ import annotations

from services.settlement import ledger as L

LIMIT = 2**63 - 1


class Model:
    def __init__(self, accounts: list[L.Account]) -> None:
        self.defs = {a.id: a for a in accounts}
        self.log: list[L.Transfer] = []

    # -- derived ------------------------------------------------------------------------

    def recorded(self, tid: str) -> L.Transfer | None:
        return next((t for t in self.log if t.id == tid), None)

    def state(self, pending_id: str) -> str:
        state = L.HELD
        for t in self.log:
            if t.pending_id == pending_id:
                state = {L.POST_PENDING: L.POSTED, L.VOID_PENDING: L.VOIDED,
                         L.FREEZE_PENDING: L.FROZEN, L.UNFREEZE_PENDING: L.HELD}[t.kind]  # fmt: skip
        return state

    def balances(self, account_id: str) -> tuple[int, int, int, int]:
        dp = dpo = cp = cpo = 0
        for t in self.log:
            posted = t.kind in (L.SINGLE_PHASE, L.POST_PENDING)
            live = t.kind == L.PENDING and self.state(t.id) in (L.HELD, L.FROZEN)
            if t.debit_account_id == account_id:
                dpo += t.amount_fen if posted else 0
                dp += t.amount_fen if live else 0
            if t.credit_account_id == account_id:
                cpo += t.amount_fen if posted else 0
                cp += t.amount_fen if live else 0
        return dp, dpo, cp, cpo

    # -- the rules ------------------------------------------------------------------------

    def apply(self, batch: list[L.Transfer]) -> list[str]:
        chains: list[list[L.Transfer]] = [[]]
        for t in batch:
            chains[-1].append(t)
            if not t.linked:
                chains.append([])
        out: list[str] = []
        for chain in chains:
            if not chain:
                continue
            if chain[-1].linked:
                out += [L.LINKED_EVENT_CHAIN_OPEN] * len(chain)
                continue
            saved = list(self.log)
            codes = []
            for t in chain:
                codes.append(self.one(t))
                if codes[-1] not in (L.OK, L.EXISTS):
                    break
            if len(chain) == 1 or codes == [L.OK] * len(chain) or codes == [L.EXISTS] * len(chain):
                out += codes
                continue
            self.log = saved
            failed = [L.LINKED_EVENT_FAILED] * len(chain)
            first = next(i for i, c in enumerate(codes) if c != L.OK)
            failed[first] = codes[first]
            out += failed
        return out

    def one(self, t: L.Transfer) -> str:
        if not t.id:
            return L.ID_MUST_NOT_BE_EMPTY
        old = self.recorded(t.id)
        if old is not None:
            same = (t.kind, t.pending_id, t.code, t.cause, t.linked) == (
                old.kind, old.pending_id, old.code, old.cause, old.linked)  # fmt: skip
            resolving = t.kind in L.RESOLVING_KINDS
            for mine, theirs, empty in ((t.debit_account_id, old.debit_account_id, ""),
                                        (t.credit_account_id, old.credit_account_id, ""),
                                        (t.amount_fen, old.amount_fen, None)):  # fmt: skip
                if mine != theirs and not (resolving and mine == empty):
                    same = False
            return L.EXISTS if same else L.EXISTS_WITH_DIFFERENT_FIELDS
        if t.kind in (L.SINGLE_PHASE, L.PENDING):
            return self.move(t)
        if t.kind in L.RESOLVING_KINDS:
            return self.resolve(t)
        return L.KIND_INVALID

    def move(self, t: L.Transfer) -> str:
        if t.pending_id:
            return L.PENDING_ID_MUST_BE_EMPTY
        if not isinstance(t.amount_fen, int) or t.amount_fen <= 0:
            return L.AMOUNT_MUST_BE_POSITIVE
        if t.debit_account_id == t.credit_account_id:
            return L.ACCOUNTS_MUST_BE_DIFFERENT
        if t.debit_account_id not in self.defs:
            return L.DEBIT_ACCOUNT_NOT_FOUND
        if t.credit_account_id not in self.defs:
            return L.CREDIT_ACCOUNT_NOT_FOUND
        dp, dpo, _, cpo = self.balances(t.debit_account_id)
        if (
            self.defs[t.debit_account_id].debits_must_not_exceed_credits
            and dp + dpo + t.amount_fen > cpo
        ):
            return L.EXCEEDS_CREDITS
        _, cdpo, cp, ccpo = self.balances(t.credit_account_id)
        if (
            self.defs[t.credit_account_id].credits_must_not_exceed_debits
            and cp + ccpo + t.amount_fen > cdpo
        ):
            return L.EXCEEDS_DEBITS
        if dp + dpo + t.amount_fen > LIMIT or cp + ccpo + t.amount_fen > LIMIT:
            return L.OVERFLOWS
        self.log.append(t)
        return L.OK

    def resolve(self, t: L.Transfer) -> str:
        if not t.pending_id:
            return L.PENDING_ID_REQUIRED
        p = self.recorded(t.pending_id)
        if p is None:
            return L.PENDING_NOT_FOUND
        if p.kind != L.PENDING:
            return L.PENDING_TRANSFER_NOT_PENDING
        if t.debit_account_id not in ("", p.debit_account_id) or t.credit_account_id not in (
            "",
            p.credit_account_id,
        ):
            return L.PENDING_DIFFERENT_ACCOUNTS
        state = self.state(p.id)
        if state == L.POSTED:
            return L.PENDING_ALREADY_POSTED
        if state == L.VOIDED:
            return L.PENDING_ALREADY_VOIDED
        if t.kind == L.UNFREEZE_PENDING and state != L.FROZEN:
            return L.PENDING_NOT_FROZEN
        if t.kind == L.FREEZE_PENDING and state == L.FROZEN:
            return L.PENDING_ALREADY_FROZEN
        if t.kind in (L.POST_PENDING, L.VOID_PENDING) and state == L.FROZEN:
            return L.PENDING_FROZEN
        amount = p.amount_fen if t.amount_fen is None else t.amount_fen
        if t.kind == L.POST_PENDING:
            if amount <= 0:
                return L.AMOUNT_MUST_BE_POSITIVE
            if amount > p.amount_fen:
                return L.EXCEEDS_PENDING_AMOUNT
        elif amount != p.amount_fen:
            return L.PENDING_DIFFERENT_AMOUNT
        self.log.append(L.Transfer(t.id, t.kind, p.debit_account_id, p.credit_account_id, amount,
                                   t.pending_id, t.code, t.cause, t.linked))  # fmt: skip
        return L.OK
