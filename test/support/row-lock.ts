// Holds row locks in a transaction of the test's own, so a call that needs the
// same rows waits: the way tests line up a duplicate behind a running write.

import type postgres from "postgres";

/**
 * Runs `lock` (a SELECT … FOR UPDATE) in a transaction that stays open until
 * the returned function is called; resolves once the lock is held.
 */
export async function holdRowLock(db: postgres.Sql, lock: (tx: postgres.TransactionSql) => Promise<unknown>): Promise<() => Promise<void>> {
  let release!: () => void;
  const released = new Promise<void>((r) => (release = r));
  let locked!: () => void;
  const isLocked = new Promise<void>((r) => (locked = r));
  const done = db.begin(async (tx) => {
    await lock(tx);
    locked();
    await released;
  });
  await isLocked;
  return async () => {
    release();
    await done;
  };
}
