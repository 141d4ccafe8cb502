-- Cheaper writes for the settler (docs/performance.md "Settlement ledger" has the
-- figures).
--
-- Room on every page for the next version of its rows. A hold's transfer row changes
-- state once (posted or voided) and a load_hold row three or four times, each soon after
-- it was written; with free space on its page the new version stays there and, as no
-- indexed column changes, PostgreSQL skips every index (a HOT update). Full pages sent
-- each of those updates to a new page with a new entry in every index of the table.
ALTER TABLE transfers SET (fillfactor = 80);
ALTER TABLE load_hold SET (fillfactor = 70);

-- A statement is a participant's, read from its cash account (statement.py): the
-- platform's own accounts (escrow, fee revenue, clearing) sit on a side of most
-- transfers and no statement reads them, so the (account, seq) indexes keep cash accounts
-- only, four entries of the ten a load's five transfers made. The query repeats the
-- predicate literally, so even a generic plan may use them.
DROP INDEX transfers_debit_seq;
DROP INDEX transfers_credit_seq;
CREATE INDEX transfers_cash_debit_seq ON transfers (debit_account_id, seq)
    WHERE debit_account_id LIKE 'cash:%';
CREATE INDEX transfers_cash_credit_seq ON transfers (credit_account_id, seq)
    WHERE credit_account_id LIKE 'cash:%';

-- The unique index on seq served no query (statements read through the indexes above,
-- and bigserial already hands out distinct values); it was one more entry per transfer.
DROP INDEX transfers_seq;
