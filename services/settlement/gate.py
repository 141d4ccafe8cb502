"""The funding gate's rules, pure: what each command of `commands` becomes.

Every participant command passes the gate on its way to the engine (DESIGN "Services and
topics"). A batch is decided in two steps, because a decision may depend on what the
ledger answers and the ledger is asked once per batch:

    plan = plan_batch(commands, participants, held_load_ids, rules)
    # the adapter opens plan.accounts, applies plan.transfers (one result each, in
    # order), writes plan.participants; then
    decisions = plan.decide(results)

- load.post: the first that applies of unknown_shipper (no such participant, or not a
  shipper), suspended, duplicate_id (the gate has a hold for that load id, or an earlier
  load.post of the batch claimed it), insufficient_funds (the hold's transfer exceeds
  the shipper's credits, or the shipper has no cash account) rejects it: load.rejected,
  nothing forwarded. Otherwise it is held and forwarded, with load.funded. The hold is
  the limit (market) or the reserve (auction) plus the premium when insured; an auction
  without a reserve is held at max(cap, instant price) and forwarded with that as its
  reserve, so the engine itself refuses a bid the hold could not pay (above_reserve).
- offer.post, bid.place, load.cancel, offer.cancel, bid.withdraw: forwarded as they
  came, byte for byte.
- participant.register / participant.suspend: the gate's participant rows and the
  participant's accounts; nothing is produced.
- funds.deposit -> funds.deposited, or deposit.rejected (duplicate_bank_ref);
  funds.withdraw -> funds.withdrawn or withdrawal.rejected (insufficient_funds,
  unknown_participant, duplicate_bank_ref). A bank reference moves money once per
  participant and kind: the transfer's id is named by it (postings.bank_transfer_id).

The outputs are bytes, built deterministically from the command (id = command id +
":gate:" + index, ts = the command's ts, cause = the command id, source "settlement"): deciding the
same command against the same state gives the same bytes. The adapter records them with
the decision, so a re-run produces what was recorded rather than deciding again.
The ":gate:" keeps the ids apart from the engine's answers to the same command, which
are command id + ":" + index (DESIGN): a consumer of both topics, deduplicating by event
id, must never take a deal.made for the load.funded of the same load.post.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from services.common import reasons
from services.common.envelope import encode, make
from services.settlement import postings
from services.settlement.holds import HELD, LoadHold
from services.settlement.ledger import (
    DEBIT_ACCOUNT_NOT_FOUND,
    EXCEEDS_CREDITS,
    EXISTS,
    EXISTS_WITH_DIFFERENT_FIELDS,
    OK,
    Account,
    Transfer,
)

SOURCE = "settlement"

# Topic addresses (the adapter adds the prefix).
ORDERS = "orders"
SETTLEMENT = "settlement"

LOAD_POST = "load.post"
FORWARDED_TYPES: frozenset[str] = frozenset(
    {"offer.post", "bid.place", "load.cancel", "offer.cancel", "bid.withdraw"}
)
REGISTER = "participant.register"
SUSPEND = "participant.suspend"
DEPOSIT = "funds.deposit"
WITHDRAW = "funds.withdraw"
COMMAND_TYPES: frozenset[str] = FORWARDED_TYPES | {LOAD_POST, REGISTER, SUSPEND, DEPOSIT, WITHDRAW}

SHIPPER = "shipper"
INSURER = "insurer"
ACTIVE = "active"
SUSPENDED = "suspended"

# Outcomes: one word per kind of decision (a metric label, a column of gate_decisions).
FORWARDED = "forwarded"
FUNDED = "funded"
REJECTED = "rejected"  # load.rejected; the reason says why
REGISTERED = "registered"
PARTICIPANT_SUSPENDED = "participant_suspended"
IGNORED = "ignored"  # a suspend of a participant the gate does not know
DEPOSITED = "deposited"
DEPOSIT_REJECTED = "deposit_rejected"  # only ever duplicate_bank_ref
WITHDRAWN = "withdrawn"
WITHDRAWAL_REJECTED = "withdrawal_rejected"
# The ledger refused a transfer for a reason that is no participant's doing (an amount
# that overflows, a platform account missing): nothing is produced, the reason is the
# ledger's result word, and the adapter logs it as an error.
LEDGER_REFUSED = "ledger_refused"


def is_command(type_: str) -> bool:
    return type_ in COMMAND_TYPES


def lane_key(lane: Mapping[str, str]) -> str:
    """The lane key "origin>destination>vehicle_class" (DESIGN "Matching rules")."""
    return f"{lane['origin']}>{lane['destination']}>{lane['vehicle_class']}"


@dataclass(frozen=True, slots=True)
class Rules:
    auction_hold_cap_fen: int  # the hold of an auction load without a reserve (at least)


@dataclass(frozen=True, slots=True)
class Participant:
    id: str
    role: str
    status: str  # ACTIVE or SUSPENDED
    updated_ms: int


@dataclass(frozen=True, slots=True)
class Command:
    """One valid record of `commands`: its envelope, its exact value bytes, its key."""

    envelope: dict[str, Any]
    value: bytes
    key: bytes | None

    @property
    def id(self) -> str:
        return self.envelope["id"]

    @property
    def type(self) -> str:
        return self.envelope["type"]

    @property
    def data(self) -> dict[str, Any]:
        return self.envelope["data"]


@dataclass(frozen=True, slots=True)
class Output:
    topic: str  # ORDERS or SETTLEMENT
    key: bytes | None
    value: bytes


@dataclass(frozen=True, slots=True)
class Decision:
    command_id: str
    command_type: str
    outcome: str
    reason: str | None
    outputs: tuple[Output, ...]
    load_hold: LoadHold | None = None


Finish = Callable[[Sequence[str]], Decision]


@dataclass(slots=True)
class Plan:
    """What a batch needs from the ledger, and how to finish each decision.

    accounts: to open (if not open yet) before the transfers; transfers: to apply as one
    batch, in order; participants: the rows the batch changed, in their final state.
    """

    accounts: list[Account] = field(default_factory=list)
    transfers: list[Transfer] = field(default_factory=list)
    participants: dict[str, Participant] = field(default_factory=dict)
    _steps: list[tuple[int, int, Finish]] = field(default_factory=list)

    def decide(self, results: Sequence[str]) -> list[Decision]:
        """One decision per planned command, in order, given one ledger result per
        transfer of `transfers`."""
        if len(results) != len(self.transfers):
            raise ValueError(f"{len(results)} results for {len(self.transfers)} transfers")
        return [finish(results[start:stop]) for start, stop, finish in self._steps]


def participant_ids(commands: Sequence[Command]) -> set[str]:
    """The participants whose rows plan_batch needs."""
    ids = set()
    for c in commands:
        if c.type == LOAD_POST:
            ids.add(c.data["shipper_id"])
        elif c.type in (REGISTER, SUSPEND):
            ids.add(c.data["participant_id"])
    return ids


def load_ids(commands: Sequence[Command]) -> set[str]:
    """The load ids whose load_hold rows plan_batch needs to know of."""
    return {c.data["load_id"] for c in commands if c.type == LOAD_POST}


def plan_batch(
    commands: Sequence[Command],
    participants: Mapping[str, Participant],
    held_load_ids: Collection[str],
    rules: Rules,
) -> Plan:
    """Plan the decisions of commands, in order, each seeing the effects of those before
    it (a registration, a suspension, a load id claimed).

    participants: the rows of (at least) participant_ids(commands); held_load_ids: those
    of load_ids(commands) that load_hold has. Every command must be of COMMAND_TYPES.
    """
    return _Planner(participants, held_load_ids, rules).plan(commands)


class _Planner:
    def __init__(self, participants: Mapping[str, Participant], held: Collection[str],
                 rules: Rules) -> None:  # fmt: skip
        self.view = dict(participants)
        self.held = held
        self.claimed: set[str] = set()
        self.rules = rules
        self.out = Plan()

    def plan(self, commands: Sequence[Command]) -> Plan:
        for c in commands:
            if c.type == LOAD_POST:
                self._load_post(c)
            elif c.type in FORWARDED_TYPES:
                self._decided(_decision(c, FORWARDED, None, [_forward(c)]))
            elif c.type == REGISTER:
                self._register(c)
            elif c.type == SUSPEND:
                self._suspend(c)
            elif c.type == DEPOSIT:
                self._deposit(c)
            elif c.type == WITHDRAW:
                self._withdraw(c)
            else:
                raise ValueError(f"{c.type}: not a command of the funding gate")
        return self.out

    def _step(self, transfers: list[Transfer], finish: Finish) -> None:
        start = len(self.out.transfers)
        self.out.transfers.extend(transfers)
        self.out._steps.append((start, len(self.out.transfers), finish))

    def _decided(self, decision: Decision) -> None:
        """A decision that needs no transfer."""
        self._step([], lambda _: decision)

    # -- load.post -----------------------------------------------------------------------

    def _load_post(self, c: Command) -> None:
        d = c.data
        load_id, shipper_id = d["load_id"], d["shipper_id"]
        shipper = self.view.get(shipper_id)
        reason = None
        if shipper is None or shipper.role != SHIPPER:
            reason = reasons.UNKNOWN_SHIPPER
        elif shipper.status == SUSPENDED:
            reason = reasons.SUSPENDED
        elif load_id in self.held or load_id in self.claimed:
            reason = reasons.DUPLICATE_ID
        if reason is not None:
            self._decided(_load_rejected(c, reason))
            return
        # Claimed now, whatever the ledger answers: a second load.post of the same id in
        # this batch is duplicate_id even if this one turns out unfunded. Load ids are
        # the gateway's UUIDv7s, so only a bug repeats one, and the decision is recorded.
        self.claimed.add(load_id)
        hold_fen, reserve_fen = hold_amount(d, self.rules)
        transfers = postings.hold(c.id, shipper_id, hold_fen)
        hold_id = transfers[0].id

        def finish(results: Sequence[str]) -> Decision:
            (result,) = results
            if result in (OK, EXISTS):
                insurance = d.get("insurance")
                row = LoadHold(
                    load_id=load_id,
                    shipper_id=shipper_id,
                    post_command_id=c.id,
                    lane_key=lane_key(d["lane"]),
                    mode=d["mode"],
                    hold_id=hold_id,
                    hold_fen=hold_fen,
                    insurer_id=insurance["insurer_id"] if insurance else None,
                    premium_fen=insurance["premium_fen"] if insurance else 0,
                    state=HELD,
                    updated_ms=c.envelope["ts"],
                )
                funded = _event(c, 0, "load.funded", load_id, {
                    "load_id": load_id, "shipper_id": shipper_id, "hold_fen": hold_fen,
                    "transfer_id": hold_id,
                })  # fmt: skip
                forward = (
                    _forward(c) if reserve_fen is None else _forward_with_reserve(c, reserve_fen)
                )
                return _decision(c, FUNDED, None, [funded, forward], row)
            if result in (EXCEEDS_CREDITS, DEBIT_ACCOUNT_NOT_FOUND):
                return _load_rejected(c, reasons.INSUFFICIENT_FUNDS)
            return _decision(c, LEDGER_REFUSED, result, [])

        self._step(transfers, finish)

    # -- participants ----------------------------------------------------------------------

    def _register(self, c: Command) -> None:
        pid, role = c.data["participant_id"], c.data["role"]
        self._set(Participant(pid, role, ACTIVE, c.envelope["ts"]))
        self.out.accounts.extend(postings.participant_accounts(pid, insurer=role == INSURER))
        self._decided(_decision(c, REGISTERED, None, []))

    def _suspend(self, c: Command) -> None:
        pid = c.data["participant_id"]
        known = self.view.get(pid)
        if known is None:
            self._decided(_decision(c, IGNORED, reasons.UNKNOWN_PARTICIPANT, []))
            return
        self._set(replace(known, status=SUSPENDED, updated_ms=c.envelope["ts"]))
        self._decided(_decision(c, PARTICIPANT_SUSPENDED, None, []))

    def _set(self, p: Participant) -> None:
        self.view[p.id] = p
        self.out.participants[p.id] = p

    # -- money -------------------------------------------------------------------------------

    def _deposit(self, c: Command) -> None:
        d = c.data
        pid = d["participant_id"]
        # The cash account is opened (if it is not open yet) for every deposit, even of a
        # participant the gate does not know: the money has arrived at the bank, and
        # refusing it here would lose it from the books. It waits there for the
        # participant's registration (which finds the account open) or a withdrawal.
        self.out.accounts.append(postings.participant_accounts(pid)[0])
        transfers = postings.deposit(c.id, pid, d["amount_fen"], d["bank_ref"])

        def finish(results: Sequence[str]) -> Decision:
            (result,) = results
            if result in (OK, EXISTS):
                return _decision(
                    c, DEPOSITED, None, [_money_event(c, "funds.deposited", transfers[0].id)]
                )
            if result == EXISTS_WITH_DIFFERENT_FIELDS:
                # The id is the bank reference's, recorded under another command (the
                # cause differs): this money was booked once already.
                return _money_rejected(c, DEPOSIT_REJECTED, reasons.DUPLICATE_BANK_REF)
            return _decision(c, LEDGER_REFUSED, result, [])

        self._step(transfers, finish)

    def _withdraw(self, c: Command) -> None:
        d = c.data
        transfers = postings.withdrawal(c.id, d["participant_id"], d["amount_fen"], d["bank_ref"])

        def finish(results: Sequence[str]) -> Decision:
            (result,) = results
            if result in (OK, EXISTS):
                return _decision(
                    c, WITHDRAWN, None, [_money_event(c, "funds.withdrawn", transfers[0].id)]
                )
            reason = {EXCEEDS_CREDITS: reasons.INSUFFICIENT_FUNDS,
                      DEBIT_ACCOUNT_NOT_FOUND: reasons.UNKNOWN_PARTICIPANT,
                      EXISTS_WITH_DIFFERENT_FIELDS: reasons.DUPLICATE_BANK_REF}.get(result)  # fmt: skip
            if reason is None:
                return _decision(c, LEDGER_REFUSED, result, [])
            return _money_rejected(c, WITHDRAWAL_REJECTED, reason)

        self._step(transfers, finish)


def hold_amount(data: Mapping[str, Any], rules: Rules) -> tuple[int, int | None]:
    """(hold_fen, reserve_fen to forward or None) of a load.post's data.

    The hold is what the shipper can be made to pay at most: the limit (market) or the
    reserve (auction), plus the premium when insured. An auction without a reserve is
    held at max(cap, instant price), which then becomes its reserve (never below the
    instant price, which the engine requires to be at or under the reserve).
    """
    insurance = data.get("insurance")
    premium_fen = insurance["premium_fen"] if insurance else 0
    if data["mode"] == "market":
        return data["limit_fen"] + premium_fen, None
    auction = data["auction"]
    if auction["reserve_fen"] is not None:
        return auction["reserve_fen"] + premium_fen, None
    reserve_fen = max(rules.auction_hold_cap_fen, auction["instant_fen"] or 0)
    return reserve_fen + premium_fen, reserve_fen


# -- outputs -------------------------------------------------------------------------------


def _decision(c: Command, outcome: str, reason: str | None, outputs: list[Output],
              load_hold: LoadHold | None = None) -> Decision:  # fmt: skip
    return Decision(c.id, c.type, outcome, reason, tuple(outputs), load_hold)


def _forward(c: Command) -> Output:
    """The command as it came: the engine's input log keeps the gateway's bytes."""
    return Output(ORDERS, c.key, c.value)


def _forward_with_reserve(c: Command, reserve_fen: int) -> Output:
    """The command with data.auction.reserve_fen set and nothing else changed (same id,
    ts, key, cause; key order kept, so the bytes are the same on every run)."""
    data = dict(c.data)
    data["auction"] = dict(data["auction"], reserve_fen=reserve_fen)
    return Output(ORDERS, c.key, encode({**c.envelope, "data": data}))


def _event(c: Command, index: int, type_: str, key: str, data: dict[str, Any]) -> Output:
    envelope = make(
        type_, data, key, SOURCE, c.envelope["ts"], cause=c.id, id=f"{c.id}:gate:{index}"
    )
    return Output(SETTLEMENT, key.encode(), encode(envelope))


def _load_rejected(c: Command, reason: str) -> Decision:
    d = c.data
    event = _event(c, 0, "load.rejected", d["load_id"], {
        "load_id": d["load_id"], "shipper_id": d["shipper_id"], "reason": reason,
    })  # fmt: skip
    return _decision(c, REJECTED, reason, [event])


def _money_rejected(c: Command, outcome: str, reason: str) -> Decision:
    """deposit.rejected or withdrawal.rejected: nothing moved."""
    d = c.data
    type_ = "deposit.rejected" if outcome == DEPOSIT_REJECTED else "withdrawal.rejected"
    rejected = _event(c, 0, type_, d["participant_id"], {
        "participant_id": d["participant_id"], "amount_fen": d["amount_fen"],
        "bank_ref": d["bank_ref"], "reason": reason,
    })  # fmt: skip
    return _decision(c, outcome, reason, [rejected])


def _money_event(c: Command, type_: str, transfer_id: str) -> Output:
    d = c.data
    return _event(c, 0, type_, d["participant_id"], {
        "participant_id": d["participant_id"], "amount_fen": d["amount_fen"],
        "bank_ref": d["bank_ref"], "transfer_id": transfer_id,
    })  # fmt: skip
