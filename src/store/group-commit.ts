// Group commit: work submitted while a batch is running waits for the next
// batch, so under load one statement (and one commit) carries many requests,
// and with one request in flight nothing waits longer than one event-loop turn.
// One batch runs at a time. Items with the same key never share a batch.

interface Waiting<T, R> {
  readonly item: T;
  readonly resolve: (result: R | Promise<R>) => void;
  readonly reject: (err: unknown) => void;
}

export interface GroupCommitOptions<T> {
  readonly maxBatch: number;
  /** Items with equal keys go in different batches, in submission order. */
  readonly key?: (item: T) => string;
}

export class GroupCommit<T, R> {
  private queue: Array<Waiting<T, R>> = [];
  private running = false;

  /**
   * `run` returns one result per item, in order — a value, or a promise that
   * settles as that item's outcome; if it throws, every item of the batch fails
   * with that error.
   */
  constructor(
    private readonly run: (batch: T[]) => Promise<Array<R | Promise<R>>>,
    private readonly options: GroupCommitOptions<T>,
  ) {}

  /** Items waiting for a batch (not counting the one being written). */
  get waiting(): number {
    return this.queue.length;
  }

  submit(item: T): Promise<R> {
    return new Promise<R>((resolve, reject) => {
      this.queue.push({ item, resolve, reject });
      if (!this.running) {
        this.running = true;
        setImmediate(() => void this.drain());
      }
    });
  }

  private async drain(): Promise<void> {
    while (this.queue.length > 0) {
      const batch = this.take();
      try {
        const results = await this.run(batch.map((w) => w.item));
        batch.forEach((w, i) => w.resolve(results[i]));
      } catch (err) {
        for (const w of batch) w.reject(err);
      }
    }
    this.running = false;
  }

  private take(): Array<Waiting<T, R>> {
    const { maxBatch, key } = this.options;
    if (key === undefined) return this.queue.splice(0, maxBatch);
    const batch: Array<Waiting<T, R>> = [];
    const rest: Array<Waiting<T, R>> = [];
    const keys = new Set<string>();
    for (const w of this.queue) {
      const k = key(w.item);
      if (batch.length < maxBatch && !keys.has(k)) {
        keys.add(k);
        batch.push(w);
      } else rest.push(w);
    }
    this.queue = rest;
    return batch;
  }
}

/** Runs the functions given to it at most `n` at a time, in the order given. */
export function concurrencyLimit(n: number): <T>(f: () => Promise<T>) => Promise<T> {
  let active = 0;
  const waiting: Array<() => void> = [];
  return async <T>(f: () => Promise<T>): Promise<T> => {
    if (active < n) active++;
    else await new Promise<void>((resolve) => waiting.push(resolve));
    try {
      return await f();
    } finally {
      // Hand the slot straight to the next waiter, so no newcomer slips in between.
      const next = waiting.shift();
      if (next) next();
      else active--;
    }
  };
}
