"""What each business event posts to the ledger: the chart of accounts and the transfers
of deposits, withdrawals, holds and settlements. Pure, like ledger.py.

Every transfer id is `transfer_id(cause event id, leg)`, so the settler may hand the same
event to the ledger any number of times and only the first changes anything. Multi-leg
postings are linked chains: a delivery posts the hold and pays carrier, fee and insurer
in one piece or not at all.

The money path of a load: deposit (clearing -> shipper cash); at the load request a hold
(pending shipper cash -> escrow); at the deal the hold re-sized to the deal price (void
the old hold, hold the new amount, linked); at delivery the hold posted and escrow paid
out (carrier: price less fee; fee revenue: the fee; insurer: the premium). Cancel,
expiry, rejection and non-award void the hold. A dispute freezes it; the operator's
resolution unfreezes it and posts all of it (release), none (refund) or part (split).
"""

from __future__ import annotations

from dataclasses import dataclass

from services.settlement.ledger import (
    CASH,
    CLEARING,
    ESCROW,
    FEE_REVENUE,
    FREEZE_PENDING,
    INSURER_PREMIUMS,
    PENDING,
    POST_PENDING,
    SINGLE_PHASE,
    UNFREEZE_PENDING,
    VOID_PENDING,
    Account,
    Transfer,
    new_account,
    transfer_id,
)

CLEARING_ACCOUNT_ID = "clearing"
ESCROW_ACCOUNT_ID = "escrow"
FEE_ACCOUNT_ID = "fee_revenue"


def cash_account_id(participant_id: str) -> str:
    return f"cash:{participant_id}"


def premiums_account_id(insurer_id: str) -> str:
    return f"premiums:{insurer_id}"


def platform_accounts() -> list[Account]:
    return [
        new_account(CLEARING_ACCOUNT_ID, CLEARING),
        new_account(ESCROW_ACCOUNT_ID, ESCROW),
        new_account(FEE_ACCOUNT_ID, FEE_REVENUE),
    ]


def participant_accounts(participant_id: str, *, insurer: bool = False) -> list[Account]:
    accounts = [new_account(cash_account_id(participant_id), CASH)]
    if insurer:
        accounts.append(new_account(premiums_account_id(participant_id), INSURER_PREMIUMS))
    return accounts


@dataclass(frozen=True, slots=True)
class FeeSchedule:
    """The platform fee: basis points of the price, at least minimum_fen, at most the price."""

    bps: int
    minimum_fen: int

    def fee_fen(self, price_fen: int) -> int:
        # Half a fen rounds up; integers throughout, never a float near money.
        fee = (price_fen * self.bps + 5_000) // 10_000
        return min(price_fen, max(self.minimum_fen, fee))


def bank_transfer_id(participant_id: str, bank_ref: str, leg: str) -> str:
    """The id of a deposit's or withdrawal's transfer: named by the bank rail's reference,
    not by the command, because the money movement is the bank's. The same reference sent
    twice (under two commands, say after a client lost its Idempotency-Key) then finds the
    id recorded and moves nothing. Scoped by participant, so no one can take another's
    reference; a bank_ref has no space (schema: printable ASCII), so the space ends it and
    no two (participant, reference) pairs share an id."""
    return transfer_id(f"bank {bank_ref} {participant_id}", leg)


def deposit(event_id: str, participant_id: str, amount_fen: int, bank_ref: str) -> list[Transfer]:
    """Clearing -> the participant's cash; see bank_transfer_id for the id."""
    return [Transfer(bank_transfer_id(participant_id, bank_ref, "deposit"), SINGLE_PHASE,
                     CLEARING_ACCOUNT_ID, cash_account_id(participant_id), amount_fen,
                     code="deposit", cause=event_id)]  # fmt: skip


def withdrawal(
    event_id: str, participant_id: str, amount_fen: int, bank_ref: str
) -> list[Transfer]:
    """The participant's cash -> clearing; see bank_transfer_id for the id. A refused
    withdrawal is not recorded, so its reference may be sent again."""
    return [Transfer(bank_transfer_id(participant_id, bank_ref, "withdrawal"), SINGLE_PHASE,
                     cash_account_id(participant_id), CLEARING_ACCOUNT_ID, amount_fen,
                     code="withdrawal", cause=event_id)]  # fmt: skip


def hold(event_id: str, shipper_id: str, amount_fen: int) -> list[Transfer]:
    """The hold placed at a load request; its id is `transfer_id(event_id, "hold")`."""
    return [Transfer(transfer_id(event_id, "hold"), PENDING, cash_account_id(shipper_id),
                     ESCROW_ACCOUNT_ID, amount_fen, code="hold", cause=event_id)]  # fmt: skip


def resize_hold(event_id: str, hold_id: str, shipper_id: str, amount_fen: int) -> list[Transfer]:
    """Replace hold `hold_id` with one of amount_fen (the deal price), atomically. The new
    hold's id is `transfer_id(event_id, "hold")`: the settler keeps it with the deal."""
    return [
        Transfer(transfer_id(event_id, "resize"), VOID_PENDING, pending_id=hold_id,
                 code="resize", cause=event_id, linked=True),
        Transfer(transfer_id(event_id, "hold"), PENDING, cash_account_id(shipper_id),
                 ESCROW_ACCOUNT_ID, amount_fen, code="hold", cause=event_id),
    ]  # fmt: skip


def release_hold(event_id: str, hold_id: str) -> list[Transfer]:
    """Void the hold: cancelled, expired, rejected or unawarded."""
    return [Transfer(transfer_id(event_id, "release"), VOID_PENDING, pending_id=hold_id,
                     code="release", cause=event_id)]  # fmt: skip


def settle(
    event_id: str,
    hold_id: str,
    carrier_id: str,
    price_fen: int,
    fee_fen: int,
    *,
    insurer_id: str | None = None,
    premium_fen: int = 0,
    code: str = "delivery",
    linked_tail: bool = False,
) -> list[Transfer]:
    """Post price_fen + premium_fen of the hold and pay it out of escrow, as one chain.

    Whatever the hold has beyond that goes back to the shipper (a partial post). With
    `linked_tail` the chain stays open so a caller may put transfers before it.
    """
    cause = event_id
    legs = [Transfer(transfer_id(event_id, "post"), POST_PENDING, pending_id=hold_id,
                     amount_fen=price_fen + premium_fen, code=code, cause=cause, linked=True)]  # fmt: skip
    if price_fen - fee_fen > 0:
        legs.append(Transfer(transfer_id(event_id, "payout"), SINGLE_PHASE, ESCROW_ACCOUNT_ID,
                             cash_account_id(carrier_id), price_fen - fee_fen, code="payout",
                             cause=cause, linked=True))  # fmt: skip
    if fee_fen > 0:
        legs.append(Transfer(transfer_id(event_id, "fee"), SINGLE_PHASE, ESCROW_ACCOUNT_ID,
                             FEE_ACCOUNT_ID, fee_fen, code="fee", cause=cause, linked=True))  # fmt: skip
    if premium_fen > 0:
        if insurer_id is None:
            raise ValueError("a premium needs its insurer")
        legs.append(Transfer(transfer_id(event_id, "premium"), SINGLE_PHASE, ESCROW_ACCOUNT_ID,
                             premiums_account_id(insurer_id), premium_fen, code="premium",
                             cause=cause, linked=True))  # fmt: skip
    if not linked_tail:
        legs[-1] = _unlinked(legs[-1])
    return legs


def freeze(event_id: str, hold_id: str) -> list[Transfer]:
    """A dispute: the hold can be neither posted nor voided until an operator resolves it."""
    return [Transfer(transfer_id(event_id, "freeze"), FREEZE_PENDING, pending_id=hold_id,
                     code="dispute", cause=event_id)]  # fmt: skip


def _unfreeze(event_id: str, hold_id: str) -> Transfer:
    return Transfer(transfer_id(event_id, "unfreeze"), UNFREEZE_PENDING, pending_id=hold_id,
                    code="resolution", cause=event_id, linked=True)  # fmt: skip


def resolve_release(event_id: str, hold_id: str, carrier_id: str, price_fen: int, fee_fen: int,
                    **premium) -> list[Transfer]:  # fmt: skip
    """Operator: the carrier is paid as at delivery."""
    return [_unfreeze(event_id, hold_id),
            *settle(event_id, hold_id, carrier_id, price_fen, fee_fen, code="release", **premium)]  # fmt: skip


def resolve_refund(event_id: str, hold_id: str) -> list[Transfer]:
    """Operator: the whole hold goes back to the shipper."""
    return [_unfreeze(event_id, hold_id),
            Transfer(transfer_id(event_id, "refund"), VOID_PENDING, pending_id=hold_id,
                     code="refund", cause=event_id)]  # fmt: skip


def resolve_split(event_id: str, hold_id: str, carrier_id: str, carrier_price_fen: int,
                  fee_fen: int, **premium) -> list[Transfer]:  # fmt: skip
    """Operator: carrier_price_fen of the hold is settled as a price, the rest refunded.
    The insurer is paid its premium as at delivery: the cargo travelled under its policy,
    and a split is what follows a loss the policy covers."""
    return [
        _unfreeze(event_id, hold_id),
        *settle(event_id, hold_id, carrier_id, carrier_price_fen, fee_fen, code="split", **premium),
    ]


def _unlinked(t: Transfer) -> Transfer:
    return Transfer(t.id, t.kind, t.debit_account_id, t.credit_account_id, t.amount_fen,
                    t.pending_id, t.code, t.cause, linked=False)  # fmt: skip
