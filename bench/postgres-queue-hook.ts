// A module-loader hook (registered by server-patches.ts for the A/B patch
// "postgres-queue") that serves postgres.js 3.4.9's src/queue.js with one
// change. The original shift() blanks the slot it takes and only resets the
// array once the queue is drained; when every pooled connection is busy, the
// pool does busy.shift() then move(c, busy) = busy.remove(c) (an indexOf over
// the whole array, which no longer holds c) + busy.push(c): the array grows by
// one slot per query and every query scans it. This version searches only the
// live part and compacts once the dead prefix is larger than the live part.

export const FIXED_QUEUE = `export default Queue

function Queue(initial = []) {
  let xs = initial.slice()
  let index = 0

  return {
    get length() {
      return xs.length - index
    },
    remove: (x) => {
      const i = xs.indexOf(x, index)
      return i === -1
        ? null
        : (xs.splice(i, 1), x)
    },
    push: (x) => (xs.push(x), x),
    shift: () => {
      const out = xs[index++]

      if (index === xs.length) {
        index = 0
        xs = []
      } else if (index > 32 && index * 2 > xs.length) {
        xs = xs.slice(index)
        index = 0
      } else {
        xs[index - 1] = undefined
      }

      return out
    }
  }
}
`;

interface LoadResult {
  format?: string;
  source?: string | ArrayBuffer | Uint8Array;
  shortCircuit?: boolean;
}

export async function load(url: string, context: { format?: string }, nextLoad: (url: string, context: object) => Promise<LoadResult>): Promise<LoadResult> {
  if (url.endsWith("/node_modules/postgres/src/queue.js")) return { format: "module", source: FIXED_QUEUE, shortCircuit: true };
  return nextLoad(url, context);
}
