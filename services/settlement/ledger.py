"""The settlement ledger's rules: double-entry accounts and transfers, pure.

Modelled on TigerBeetle (DESIGN "Settlement ledger"). No I/O, no clock: `Ledger.apply`
takes a batch of transfers and returns one result word per transfer, in order; the same
state and batch always give the same results and the same state. The PostgreSQL store
(store.py) runs these same rules over the rows it has locked.

Accounts carry four balances in fen: debits and credits, each pending or posted. A
transfer is one of
- single_phase: moves amount_fen from the debit to the credit account, posted at once;
- pending: reserves amount_fen on both accounts (a hold) until it is resolved;
- post_pending: posts a pending transfer, all of it or less (the rest is released);
- void_pending: releases a pending transfer;
- freeze_pending / unfreeze_pending: a frozen pending transfer (a disputed escrow) can be
  neither posted nor voided until it is unfrozen; freezing moves no money.
Each pending transfer is resolved (posted or voided) at most once.

Transfers flagged `linked` form a chain with the transfers after them, up to and
including the first one not flagged: the chain applies as a whole or not at all.

Idempotence: a transfer id is derived from the event that caused it (`transfer_id`). A
transfer whose id is already recorded is not applied again; it returns `exists` when it
asks for the same effect and `exists_with_different_fields` when it does not. A retried
batch therefore returns `exists` for what it did before and changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

# -- kinds of account, and what each may not do ---------------------------------------
# The exchange's books. A participant's cash is money the exchange owes the participant:
# a liability, credit-normal, so its debits may not exceed its credits ("no participant
# below zero"). Clearing is the exchange's money at the bank, the external counterpart of
# deposits and withdrawals: an asset, debit-normal, never credited beyond its debits.
CASH = "cash"  # one per participant: shippers, carriers, insurers
ESCROW = "escrow"  # holds posted at delivery, until paid out in the same chain
FEE_REVENUE = "fee_revenue"  # the platform's fees
INSURER_PREMIUMS = "insurer_premiums"  # one per insurer
CLEARING = "clearing"  # the bank

ACCOUNT_KINDS: tuple[str, ...] = (CASH, ESCROW, FEE_REVENUE, INSURER_PREMIUMS, CLEARING)
CREDIT_NORMAL: frozenset[str] = frozenset({CASH, ESCROW, FEE_REVENUE, INSURER_PREMIUMS})

# -- kinds of transfer ------------------------------------------------------------------
SINGLE_PHASE = "single_phase"
PENDING = "pending"
POST_PENDING = "post_pending"
VOID_PENDING = "void_pending"
FREEZE_PENDING = "freeze_pending"
UNFREEZE_PENDING = "unfreeze_pending"

TRANSFER_KINDS: tuple[str, ...] = (
    SINGLE_PHASE, PENDING, POST_PENDING, VOID_PENDING, FREEZE_PENDING, UNFREEZE_PENDING,
)  # fmt: skip
# Kinds that act on a pending transfer and take its accounts (and amount) from it.
RESOLVING_KINDS: frozenset[str] = frozenset(
    {POST_PENDING, VOID_PENDING, FREEZE_PENDING, UNFREEZE_PENDING}
)

# -- states of a pending transfer ---------------------------------------------------------
HELD = "pending"
FROZEN = "frozen"
POSTED = "posted"
VOIDED = "voided"
LIVE_STATES: frozenset[str] = frozenset({HELD, FROZEN})  # still reserving its amount

# -- result words, in the order the rules are checked --------------------------------------
OK = "ok"
LINKED_EVENT_FAILED = "linked_event_failed"
LINKED_EVENT_CHAIN_OPEN = "linked_event_chain_open"
ID_MUST_NOT_BE_EMPTY = "id_must_not_be_empty"
EXISTS = "exists"
EXISTS_WITH_DIFFERENT_FIELDS = "exists_with_different_fields"
KIND_INVALID = "kind_invalid"
PENDING_ID_MUST_BE_EMPTY = "pending_id_must_be_empty"
AMOUNT_MUST_BE_POSITIVE = "amount_must_be_positive"
ACCOUNTS_MUST_BE_DIFFERENT = "accounts_must_be_different"
DEBIT_ACCOUNT_NOT_FOUND = "debit_account_not_found"
CREDIT_ACCOUNT_NOT_FOUND = "credit_account_not_found"
EXCEEDS_CREDITS = "exceeds_credits"  # the funding gate reports it as insufficient_funds
EXCEEDS_DEBITS = "exceeds_debits"
OVERFLOWS = "overflows"
PENDING_ID_REQUIRED = "pending_id_required"
PENDING_NOT_FOUND = "pending_not_found"
PENDING_TRANSFER_NOT_PENDING = "pending_transfer_not_pending"
PENDING_DIFFERENT_ACCOUNTS = "pending_different_accounts"
PENDING_ALREADY_POSTED = "pending_already_posted"
PENDING_ALREADY_VOIDED = "pending_already_voided"
PENDING_FROZEN = "pending_frozen"
PENDING_ALREADY_FROZEN = "pending_already_frozen"
PENDING_NOT_FROZEN = "pending_not_frozen"
EXCEEDS_PENDING_AMOUNT = "exceeds_pending_amount"
PENDING_DIFFERENT_AMOUNT = "pending_different_amount"

RESULTS: tuple[str, ...] = (
    OK, LINKED_EVENT_FAILED, LINKED_EVENT_CHAIN_OPEN, ID_MUST_NOT_BE_EMPTY, EXISTS,
    EXISTS_WITH_DIFFERENT_FIELDS, KIND_INVALID, PENDING_ID_MUST_BE_EMPTY,
    AMOUNT_MUST_BE_POSITIVE, ACCOUNTS_MUST_BE_DIFFERENT, DEBIT_ACCOUNT_NOT_FOUND,
    CREDIT_ACCOUNT_NOT_FOUND, EXCEEDS_CREDITS, EXCEEDS_DEBITS, OVERFLOWS, PENDING_ID_REQUIRED,
    PENDING_NOT_FOUND, PENDING_TRANSFER_NOT_PENDING, PENDING_DIFFERENT_ACCOUNTS,
    PENDING_ALREADY_POSTED, PENDING_ALREADY_VOIDED, PENDING_FROZEN, PENDING_ALREADY_FROZEN,
    PENDING_NOT_FROZEN, EXCEEDS_PENDING_AMOUNT, PENDING_DIFFERENT_AMOUNT,
)  # fmt: skip

# PostgreSQL keeps balances in bigint; a balance past this would fail there, so the rules
# refuse it here, where the refusal is a result and not an aborted batch.
BALANCE_MAX_FEN = 2**63 - 1


def transfer_id(event_id: str, leg: str) -> str:
    """The id of the transfer `leg` caused by event `event_id`: the same on every retry."""
    return f"{event_id}:{leg}"


@dataclass(slots=True)
class Account:
    id: str
    kind: str
    debits_must_not_exceed_credits: bool = False
    credits_must_not_exceed_debits: bool = False
    debits_pending_fen: int = 0
    debits_posted_fen: int = 0
    credits_pending_fen: int = 0
    credits_posted_fen: int = 0

    def balances(self) -> tuple[int, int, int, int]:
        return (self.debits_pending_fen, self.debits_posted_fen,
                self.credits_pending_fen, self.credits_posted_fen)  # fmt: skip

    def same_definition(self, other: Account) -> bool:
        return (self.kind, self.debits_must_not_exceed_credits,
                self.credits_must_not_exceed_debits) == (other.kind,
                other.debits_must_not_exceed_credits, other.credits_must_not_exceed_debits)  # fmt: skip

    @property
    def available_fen(self) -> int:
        """What a credit-normal account may still be debited: posted credits less every
        debit, pending ones included."""
        return self.credits_posted_fen - self.debits_posted_fen - self.debits_pending_fen


def new_account(account_id: str, kind: str) -> Account:
    """An empty account with the limits of its kind."""
    if kind not in ACCOUNT_KINDS:
        raise ValueError(f"unknown account kind {kind!r}")
    return Account(
        id=account_id,
        kind=kind,
        debits_must_not_exceed_credits=kind in CREDIT_NORMAL,
        credits_must_not_exceed_debits=kind == CLEARING,
    )


class Transfer(NamedTuple):
    """A request, or (in `Ledger.transfers`) what was recorded for it.

    For the resolving kinds the accounts and amount may be left empty ("" / None): they
    are taken from the pending transfer, and the recorded transfer carries them. A
    post_pending's amount_fen is what it posts (None: all of it).

    A tuple: the settler builds and reads thousands a batch, and a tuple is built four
    times faster than a frozen dataclass (docs/performance.md "Settlement ledger").
    """

    id: str
    kind: str
    debit_account_id: str = ""
    credit_account_id: str = ""
    amount_fen: int | None = None
    pending_id: str = ""
    code: str = ""  # what it is for, one word: deposit, hold, payout, fee, premium...
    cause: str = ""  # the id of the event that caused it
    linked: bool = False

    def same_effect(self, recorded: Transfer) -> bool:
        """Whether this request asks for what `recorded` did: every field equal, except
        that a resolving kind may leave out the accounts and amount it took from the
        pending transfer."""
        r = recorded
        if (self.kind, self.pending_id, self.code, self.cause, self.linked) != (
            r.kind, r.pending_id, r.code, r.cause, r.linked,
        ):  # fmt: skip
            return False
        may_omit = self.kind in RESOLVING_KINDS
        return (
            (self.debit_account_id == r.debit_account_id or (may_omit and not self.debit_account_id))
            and (self.credit_account_id == r.credit_account_id or (may_omit and not self.credit_account_id))
            and (self.amount_fen == r.amount_fen or (may_omit and self.amount_fen is None))
        )  # fmt: skip


class Ledger:
    """Accounts, recorded transfers and the state of each pending transfer.

    The store builds one over just the rows a batch touches; tests build one over all.
    """

    __slots__ = ("accounts", "transfers", "pending_states")

    def __init__(
        self,
        accounts: Iterable[Account] = (),
        transfers: Iterable[Transfer] = (),
        pending_states: dict[str, str] | None = None,
    ) -> None:
        self.accounts: dict[str, Account] = {a.id: a for a in accounts}
        self.transfers: dict[str, Transfer] = {t.id: t for t in transfers}
        # pending transfer id -> HELD, FROZEN, POSTED or VOIDED
        self.pending_states: dict[str, str] = dict(pending_states or {})

    # -- accounts ----------------------------------------------------------------------

    def open_accounts(self, accounts: Sequence[Account]) -> list[str]:
        """Open each account unless it exists: `ok`, `exists`, or
        `exists_with_different_fields` when its kind or limits differ."""
        results = []
        for a in accounts:
            have = self.accounts.get(a.id)
            if have is None:
                self.accounts[a.id] = replace(a, debits_pending_fen=0, debits_posted_fen=0,
                                              credits_pending_fen=0, credits_posted_fen=0)  # fmt: skip
                results.append(OK)
            else:
                results.append(EXISTS if have.same_definition(a) else EXISTS_WITH_DIFFERENT_FIELDS)
        return results

    # -- transfers ---------------------------------------------------------------------

    def apply(self, transfers: Sequence[Transfer]) -> list[str]:
        """Apply a batch in order; one result per transfer. A chain that fails leaves no
        trace: its failing transfer reports why, the others `linked_event_failed`."""
        results: list[str] = []
        n = len(transfers)
        i = 0
        while i < n:
            t = transfers[i]
            if not t.linked:
                results.append(self._apply_one(t, None))
                i += 1
                continue
            j = i
            while j < n and transfers[j].linked:
                j += 1
            if j == n:  # the batch ends inside the chain
                results.extend([LINKED_EVENT_CHAIN_OPEN] * (n - i))
                break
            results.extend(self._apply_chain(transfers[i : j + 1]))
            i = j + 1
        return results

    def _apply_chain(self, chain: Sequence[Transfer]) -> list[str]:
        undo = _Undo()
        codes = []
        for t in chain:
            code = self._apply_one(t, undo)
            codes.append(code)
            if code not in (OK, EXISTS):
                break
        if len(codes) == len(chain):
            if all(c == OK for c in codes):
                return codes
            if all(c == EXISTS for c in codes):  # the whole chain is a retry
                return codes
        undo.rollback(self)
        first = next(k for k, c in enumerate(codes) if c != OK)
        out = [LINKED_EVENT_FAILED] * len(chain)
        out[first] = codes[first]
        return out

    def _apply_one(self, t: Transfer, undo: _Undo | None) -> str:
        if not t.id:
            return ID_MUST_NOT_BE_EMPTY
        recorded = self.transfers.get(t.id)
        if recorded is not None:
            return EXISTS if t.same_effect(recorded) else EXISTS_WITH_DIFFERENT_FIELDS
        kind = t.kind
        if kind == SINGLE_PHASE or kind == PENDING:
            return self._move(t, undo)
        if kind in RESOLVING_KINDS:
            return self._resolve(t, undo)
        return KIND_INVALID

    def _move(self, t: Transfer, undo: _Undo | None) -> str:
        if t.pending_id:
            return PENDING_ID_MUST_BE_EMPTY
        amount = t.amount_fen
        if type(amount) is not int or amount <= 0:
            return AMOUNT_MUST_BE_POSITIVE
        if t.debit_account_id == t.credit_account_id:
            return ACCOUNTS_MUST_BE_DIFFERENT
        dr = self.accounts.get(t.debit_account_id)
        if dr is None:
            return DEBIT_ACCOUNT_NOT_FOUND
        cr = self.accounts.get(t.credit_account_id)
        if cr is None:
            return CREDIT_ACCOUNT_NOT_FOUND
        dr_debits = dr.debits_pending_fen + dr.debits_posted_fen + amount
        if dr.debits_must_not_exceed_credits and dr_debits > dr.credits_posted_fen:
            return EXCEEDS_CREDITS
        cr_credits = cr.credits_pending_fen + cr.credits_posted_fen + amount
        if cr.credits_must_not_exceed_debits and cr_credits > cr.debits_posted_fen:
            return EXCEEDS_DEBITS
        if dr_debits > BALANCE_MAX_FEN or cr_credits > BALANCE_MAX_FEN:
            return OVERFLOWS
        if undo is not None:
            undo.save_account(dr)
            undo.save_account(cr)
            undo.new_transfers.append(t.id)
        if t.kind == PENDING:
            dr.debits_pending_fen += amount
            cr.credits_pending_fen += amount
            self.pending_states[t.id] = HELD
        else:
            dr.debits_posted_fen += amount
            cr.credits_posted_fen += amount
        self.transfers[t.id] = t
        return OK

    def _resolve(self, t: Transfer, undo: _Undo | None) -> str:
        if not t.pending_id:
            return PENDING_ID_REQUIRED
        p = self.transfers.get(t.pending_id)
        if p is None:
            return PENDING_NOT_FOUND
        if p.kind != PENDING:
            return PENDING_TRANSFER_NOT_PENDING
        if (t.debit_account_id and t.debit_account_id != p.debit_account_id) or (
            t.credit_account_id and t.credit_account_id != p.credit_account_id
        ):
            return PENDING_DIFFERENT_ACCOUNTS
        state = self.pending_states[p.id]
        if state == POSTED:
            return PENDING_ALREADY_POSTED
        if state == VOIDED:
            return PENDING_ALREADY_VOIDED
        kind = t.kind
        if kind == UNFREEZE_PENDING:
            if state != FROZEN:
                return PENDING_NOT_FROZEN
        elif state == FROZEN:
            return PENDING_ALREADY_FROZEN if kind == FREEZE_PENDING else PENDING_FROZEN
        held: int = p.amount_fen  # type: ignore[assignment]  # a recorded pending has one
        amount = t.amount_fen
        if kind == POST_PENDING:
            if amount is None:
                amount = held
            elif type(amount) is not int or amount <= 0:
                return AMOUNT_MUST_BE_POSITIVE
            elif amount > held:
                return EXCEEDS_PENDING_AMOUNT
        elif amount is None:
            amount = held
        elif amount != held:
            return PENDING_DIFFERENT_AMOUNT

        if undo is not None:
            undo.save_pending(p.id, state)
            undo.new_transfers.append(t.id)
        if kind == POST_PENDING or kind == VOID_PENDING:
            dr = self.accounts[p.debit_account_id]
            cr = self.accounts[p.credit_account_id]
            if undo is not None:
                undo.save_account(dr)
                undo.save_account(cr)
            dr.debits_pending_fen -= held
            cr.credits_pending_fen -= held
            if kind == POST_PENDING:
                # Posting less than was held releases the rest: the limits checked when the
                # hold was placed cover any amount up to it.
                dr.debits_posted_fen += amount
                cr.credits_posted_fen += amount
                self.pending_states[p.id] = POSTED
            else:
                self.pending_states[p.id] = VOIDED
        else:
            self.pending_states[p.id] = FROZEN if kind == FREEZE_PENDING else HELD
        # Positional: dataclasses.replace costs several times more, per resolved hold.
        self.transfers[t.id] = Transfer(t.id, kind, p.debit_account_id, p.credit_account_id,
                                        amount, t.pending_id, t.code, t.cause, t.linked)  # fmt: skip
        return OK


class _Undo:
    """What a chain changed, to put back when one of its transfers fails."""

    __slots__ = ("accounts", "pending", "new_transfers")

    def __init__(self) -> None:
        self.accounts: dict[str, tuple[Account, tuple[int, int, int, int]]] = {}
        self.pending: dict[str, str] = {}
        self.new_transfers: list[str] = []

    def save_account(self, a: Account) -> None:
        if a.id not in self.accounts:
            self.accounts[a.id] = (a, a.balances())

    def save_pending(self, pending_id: str, state: str) -> None:
        self.pending.setdefault(pending_id, state)

    def rollback(self, ledger: Ledger) -> None:
        for a, (dp, dpo, cp, cpo) in self.accounts.values():
            a.debits_pending_fen, a.debits_posted_fen = dp, dpo
            a.credits_pending_fen, a.credits_posted_fen = cp, cpo
        # States first: a hold placed and resolved within the chain goes with its transfer.
        ledger.pending_states.update(self.pending)
        for tid in self.new_transfers:
            t = ledger.transfers.pop(tid)
            if t.kind == PENDING:
                del ledger.pending_states[tid]
