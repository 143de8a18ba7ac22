// Whether an object can be garbage-collected: a WeakRef to it, empty after a
// full collection. For properties like "a cache keeps no slice of a row's
// memory", where what is kept is not visible through any API. gc() is taken
// from a fresh context after enabling it (no --expose-gc on the test run).

import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";

setFlagsFromString("--expose-gc");
const gc = runInNewContext("gc") as () => void;

/** True once the object behind `ref` is collected (a few full collections, each after a turn of the event loop: a WeakRef keeps its target until the current job ends). */
export async function isCollected(ref: WeakRef<object>): Promise<boolean> {
  for (let i = 0; i < 5; i++) {
    await new Promise((resolve) => setImmediate(resolve));
    gc();
    if (ref.deref() === undefined) return true;
  }
  return false;
}
