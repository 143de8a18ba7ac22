// The audit export (NEXUS_AUDIT_EXPORT): every committed audit event, as one
// JSON line with its MAC (or signature and signer), for a SIEM. The database
// stays the record: the export follows audit_events from outside the call
// path, so a slow or broken export never holds back or fails a call.
//
// Order and gaps. The exporter follows the table by id (ids are drawn in
// order, but a transaction can commit after one that drew a later id). It
// exports ids in order and stops at a missing id, which is either still in an
// open transaction or rolled back and gone. It notes the snapshot's xmax one
// poll after it first saw the hole (every transaction that could have drawn
// the id exists by then) and skips the hole only once every transaction below
// that xmax has ended: what was going to commit has committed. So nothing is
// skipped that later commits, and nothing is waited for forever.
//
// Resuming. A file export is its own record: the id of its last complete line
// is where it resumes (a torn last line from a crash is cut off), so a restart
// neither repeats nor skips. A stdout export keeps its position in
// <data dir>/audit-export.position, written after each batch reaches stdout;
// a crash between the two can repeat that batch, and each line carries its id
// for the consumer to drop repeats.

import { open, stat, readFile, rename, writeFile, type FileHandle } from "node:fs/promises";
import path from "node:path";
import { NexusError } from "../errors/nexus-error.js";
import type { Logger } from "../log/logger.js";
import type { AuditStore, StoredAuditRow } from "../store/audit-store.js";

/** Where exported lines go, and where the export resumes. */
export interface ExportTarget {
  /** The id of the last event exported before (0: none). */
  resumeAfter(): Promise<number>;
  /** Appends lines; `lastId` is the id of the last one. Resolves once they are durable (file) or handed over (stdout). */
  write(lines: readonly string[], lastId: number): Promise<void>;
  close(): Promise<void>;
}

export interface AuditExportOptions {
  readonly pollIntervalMs?: number;
  readonly batchSize?: number;
}

const STOP_WAIT_MS = 2000;

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms).unref());

/** Missing ids the export waits for; it skips them once every transaction below `xmax` has ended. */
interface Hole {
  readonly firstMissing: number;
  xmax?: bigint;
}

export class AuditExporter {
  private position = 0;
  private hole: Hole | undefined;
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private passes: Promise<void> = Promise.resolve();
  private resync = false;
  private stopped = false;
  private readonly pollIntervalMs: number;
  private readonly batchSize: number;

  constructor(
    private readonly store: AuditStore,
    private readonly target: ExportTarget,
    private readonly logger: Logger,
    options: AuditExportOptions = {},
  ) {
    this.pollIntervalMs = options.pollIntervalMs ?? 500;
    this.batchSize = options.batchSize ?? 500;
  }

  /** Fails if the export has passed the end of this database's log (a restored backup): it would skip the ids drawn next. */
  async start(): Promise<void> {
    this.position = await this.target.resumeAfter();
    const last = await this.store.lastIdDrawn();
    if (this.position > last) {
      await this.target.close();
      throw new NexusError(
        "failed_precondition",
        `NEXUS_AUDIT_EXPORT: the export has passed audit event id ${this.position}, but this database's log ends at ${last} (restored from a backup?); move the export (or its position file) away to export this log afresh`,
        { reason: "AUDIT_EXPORT_AHEAD" },
      );
    }
    this.logger.info("audit export started", { after: this.position });
    this.schedule(0);
  }

  /**
   * Exports what is exportable now, then stops. A destination that does not
   * take the lines (a full pipe, a hung mount) gets STOP_WAIT_MS, never holds
   * up the shutdown: the next start resumes where the export stopped.
   */
  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    const finished = (async () => {
      await this.running;
      await this.exportAvailable();
      await this.target.close();
    })();
    const waited = await Promise.race([finished.then(() => "done" as const), sleep(STOP_WAIT_MS).then(() => "timeout" as const)]).catch((err: unknown) => err);
    if (waited !== "done") this.logger.warn("audit export stopped before it caught up; the next start resumes", { err: waited === "timeout" ? "destination not taking lines" : waited });
  }

  /**
   * Exports every event that can be exported now. Tests call it to wait for
   * the export; passes never overlap (two would export the same rows).
   */
  exportAvailable(): Promise<void> {
    const pass = this.passes.then(() => this.pass());
    this.passes = pass.catch(() => {});
    return pass;
  }

  private async pass(): Promise<void> {
    // After a failed write the destination's state is unknown: ask it again where it stands.
    if (this.resync) {
      this.position = await this.target.resumeAfter();
      this.resync = false;
    }
    for (;;) {
      const rows = await this.store.eventsAfterId(this.position, this.batchSize);
      const take = await this.exportable(rows);
      if (take.length > 0) {
        this.resync = true;
        await this.target.write(take.map(exportLine), take[take.length - 1].id);
        this.resync = false;
        this.position = take[take.length - 1].id;
      }
      if (take.length < this.batchSize) return;
    }
  }

  private schedule(delayMs: number): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      this.running = this.exportAvailable().then(
        () => this.schedule(this.pollIntervalMs),
        (err: unknown) => {
          this.logger.warn("audit export paused; retrying", { err });
          this.schedule(this.pollIntervalMs * 4);
        },
      );
    }, delayMs);
    this.timer.unref();
  }

  /** The rows that follow the position without an unresolved hole. */
  private async exportable(rows: readonly StoredAuditRow[]): Promise<StoredAuditRow[]> {
    const take: StoredAuditRow[] = [];
    let expected = this.position + 1;
    for (const row of rows) {
      if (row.id !== expected && !(await this.holeSettled(expected))) break;
      this.hole = undefined;
      take.push(row);
      expected = row.id + 1;
    }
    return take;
  }

  private async holeSettled(firstMissing: number): Promise<boolean> {
    if (this.hole?.firstMissing !== firstMissing) {
      this.hole = { firstMissing };
      return false;
    }
    const horizon = await this.store.transactionHorizon();
    if (this.hole.xmax === undefined) {
      this.hole.xmax = horizon.xmax;
      return false;
    }
    return horizon.xmin >= this.hole.xmax;
  }
}

/** One event as its export line: the stored fields, binary ones in hex. */
export function exportLine(r: StoredAuditRow): string {
  return JSON.stringify({
    id: r.id,
    replica_id: r.replicaId,
    sequence: r.sequence,
    time: r.time.toISOString(),
    request_id: r.requestId,
    caller: r.caller,
    rpc: r.rpc,
    path: r.path,
    version: r.version,
    outcome: r.outcome,
    code: r.code,
    detail: r.detail,
    mac: r.mac?.toString("hex") ?? null,
    signature: r.signature?.toString("hex") ?? null,
    signer: r.signer?.toString("hex") ?? null,
  });
}

/** Appends to a file; the file's last complete line says where to resume. */
export class FileExportTarget implements ExportTarget {
  private handle: FileHandle | undefined;

  constructor(private readonly file: string) {}

  async resumeAfter(): Promise<number> {
    await this.close();
    // Only a regular file: a named pipe or a device cannot be read back to
    // resume, and a write to one nobody reads would block a libuv thread for
    // good (and with it the process's exit). "-" handles pipes without blocking.
    const existing = await stat(this.file).catch(() => undefined);
    if (existing !== undefined && !existing.isFile()) {
      throw new NexusError("failed_precondition", `NEXUS_AUDIT_EXPORT: ${this.file} is not a regular file; name a regular file, or "-" for stdout`, {
        reason: "AUDIT_EXPORT_NOT_A_FILE",
      });
    }
    this.handle = await open(this.file, "a+", 0o600);
    const { size } = await this.handle.stat();
    const { lastLine, completeBytes } = await lastCompleteLine(this.handle, size);
    // A crash mid-write leaves a torn line: cut it, it is written again.
    if (completeBytes < size) await this.handle.truncate(completeBytes);
    if (lastLine === undefined) return 0;
    const id = (JSON.parse(lastLine) as { id?: unknown }).id;
    if (typeof id !== "number") throw new Error(`${this.file}: the last line has no id; not an audit export`);
    return id;
  }

  async write(lines: readonly string[]): Promise<void> {
    await this.handle!.appendFile(lines.join("\n") + "\n");
    await this.handle!.datasync();
  }

  async close(): Promise<void> {
    const handle = this.handle;
    this.handle = undefined;
    await handle?.close();
  }
}

/** Writes to a stream (stdout); the position is kept in a small file beside the data. */
export class StreamExportTarget implements ExportTarget {
  constructor(
    private readonly stream: NodeJS.WritableStream,
    private readonly positionFile: string,
  ) {}

  async resumeAfter(): Promise<number> {
    try {
      return (JSON.parse(await readFile(this.positionFile, "utf8")) as { after: number }).after;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return 0;
      throw err;
    }
  }

  async write(lines: readonly string[], lastId: number): Promise<void> {
    await new Promise<void>((resolve, reject) => this.stream.write(lines.join("\n") + "\n", (err) => (err ? reject(err) : resolve())));
    const tmp = `${this.positionFile}.tmp`;
    await writeFile(tmp, JSON.stringify({ after: lastId }) + "\n", { mode: 0o600 });
    await rename(tmp, this.positionFile);
  }

  async close(): Promise<void> {}
}

/**
 * The target NEXUS_AUDIT_EXPORT names: "-" is stdout, with its position in the
 * data folder. A stdout pipe nobody reads (a stalled log collector) only stalls
 * the export: process.stdout queues in the event loop rather than blocking it
 * (audit-export.spec.ts fills a FIFO and keeps calling).
 */
export function exportTarget(setting: string, dataDir: string): ExportTarget {
  return setting === "-" ? new StreamExportTarget(process.stdout, path.join(dataDir, "audit-export.position")) : new FileExportTarget(setting);
}

/** Reads backwards from the end to the last newline-terminated line. */
async function lastCompleteLine(handle: FileHandle, size: number): Promise<{ lastLine: string | undefined; completeBytes: number }> {
  const chunk = 64 * 1024;
  let end = size;
  let tail = Buffer.alloc(0);
  let completeBytes: number | undefined;
  while (end > 0) {
    const start = Math.max(0, end - chunk);
    const buf = Buffer.alloc(end - start);
    await handle.read(buf, 0, buf.length, start);
    tail = Buffer.concat([buf, tail]);
    end = start;
    const lastNewline = tail.lastIndexOf(0x0a);
    if (lastNewline === -1) continue;
    completeBytes ??= end + lastNewline + 1;
    const body = tail.subarray(0, lastNewline);
    const previous = body.lastIndexOf(0x0a);
    if (previous !== -1 || end === 0) return { lastLine: body.subarray(previous + 1).toString("utf8"), completeBytes };
  }
  return { lastLine: undefined, completeBytes: completeBytes ?? 0 };
}
