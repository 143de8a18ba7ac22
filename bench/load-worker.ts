// A load-generating process (forked by the harness from dist/bench/): opens its
// share of the connections as one workload, keeps its share of the calls in
// flight from the agreed start time, and reports what completed inside the
// measured window (after the warm-up): counts, errors and a latency histogram.

import * as grpc from "@grpc/grpc-js";
import { fromBinary } from "@bufbuild/protobuf";
import { performance } from "node:perf_hooks";
import { ListSecretsResponseSchema } from "../gen/spike/nexus/v1/secret_pb.js";
import { authorizeServerId } from "../src/identity/server-authorizer.js";
import { LatencyHistogram } from "./latency-histogram.js";
import {
  encodeGet,
  encodeHealth,
  encodeList,
  encodePut,
  LIST_PREFIXES,
  listPrefix,
  METHODS,
  random,
  readPath,
  secretData,
  writePath,
  type Operation,
  type ParentMessage,
  type WorkerMessage,
  type WorkerResult,
  type WorkerTask,
} from "./load-protocol.js";

interface Prepared {
  readonly task: WorkerTask;
  readonly clients: grpc.Client[];
  readonly requests: Partial<Record<Operation, Buffer[]>>;
}

const passThrough = (b: Buffer) => b;

export async function prepare(task: WorkerTask): Promise<Prepared> {
  const credentials = grpc.credentials.createSsl(Buffer.from(task.ca), Buffer.from(task.identity.key), Buffer.from(task.identity.cert), {
    checkServerIdentity: authorizeServerId(task.serverId),
  });
  const clients: grpc.Client[] = [];
  for (let i = 0; i < task.channels; i++) {
    clients.push(
      new grpc.Client(task.address, credentials, {
        "grpc.ssl_target_name_override": "localhost",
        "grpc.use_local_subchannel_pool": 1,
        "grpc.max_receive_message_length": 16 * 1024 * 1024,
        "nexus.bench.channel": `${task.channelSalt}/${task.workerId}/${i}`,
      }),
    );
  }
  await Promise.all(clients.map((c) => new Promise<void>((resolve, reject) => c.waitForReady(Date.now() + 15_000, (err) => (err ? reject(err) : resolve())))));

  const requests: Partial<Record<Operation, Buffer[]>> = {};
  const { data } = task;
  if (task.kind === "health") requests.health = [encodeHealth()];
  if (task.kind === "get" || task.kind === "mix") requests.get = Array.from({ length: data.readSecrets }, (_, i) => encodeGet(readPath(i)));
  if (task.kind === "put" || task.kind === "mix") {
    const offset = data.writeOffset ?? 0;
    requests.put = Array.from({ length: data.writeSecrets }, (_, i) => encodePut(writePath(offset + i), secretData(data.valueBytes, task.seed * 7919 + i)));
  }
  if (task.kind === "list") requests.list = Array.from({ length: LIST_PREFIXES }, (_, i) => encodeList(listPrefix(i), data.listPageSize));
  return { task, clients, requests };
}

/** Runs the load from `startAt` (epoch ms) through warm-up and the measured window. */
export function run(prepared: Prepared, startAt: number): Promise<WorkerResult> {
  const { task, clients, requests } = prepared;
  const rnd = random(task.seed);
  const origin = startAt - performance.timeOrigin;
  const measureFrom = origin + task.warmupMs;
  const measureTo = measureFrom + task.durationMs;
  const histograms = new Map<Operation, LatencyHistogram>();
  const counts = new Map<Operation, { count: number; errors: number }>();
  const errorCodes: Record<string, number> = {};
  let firstError: string | undefined;
  let shortPages = 0;
  // CPU of this process over the measured window only (warm-up excluded).
  let cpuAtStart: NodeJS.CpuUsage | undefined;
  let cpuInWindow: NodeJS.CpuUsage | undefined;
  setTimeout(() => (cpuAtStart = process.cpuUsage()), Math.max(0, measureFrom - performance.now()));
  setTimeout(() => (cpuInWindow = process.cpuUsage(cpuAtStart)), Math.max(0, measureTo - performance.now()));

  const pick = (): Operation => {
    switch (task.kind) {
      case "mix":
        return rnd() * 100 < task.putPercent ? "put" : "get";
      default:
        return task.kind;
    }
  };

  const record = (op: Operation, started: number, ended: number, failed: boolean) => {
    if (started < measureFrom || ended > measureTo) return;
    let h = histograms.get(op);
    let c = counts.get(op);
    if (h === undefined || c === undefined) {
      h = new LatencyHistogram();
      c = { count: 0, errors: 0 };
      histograms.set(op, h);
      counts.set(op, c);
    }
    if (failed) c.errors++;
    else {
      c.count++;
      h.record(ended - started);
    }
  };

  return new Promise((resolve) => {
    let running = task.rate === undefined ? task.inFlight : 1;
    const finish = () => {
      if (--running > 0) return;
      const cpu = cpuInWindow ?? process.cpuUsage(cpuAtStart);
      const operations: WorkerResult["operations"] = {};
      for (const [op, c] of counts) operations[op] = { count: c.count, errors: c.errors, histogram: histograms.get(op)!.toArray() };
      resolve({
        workerId: task.workerId,
        operations,
        errorCodes,
        firstError,
        measuredMs: task.durationMs,
        clientCpuSeconds: (cpu.user + cpu.system) / 1e6,
        shortPages,
      });
    };

    const slot = (client: grpc.Client) => {
      const issue = () => {
        const started = performance.now();
        if (started >= measureTo) return finish();
        const op = pick();
        const pool = requests[op]!;
        const request = pool.length === 1 ? pool[0] : pool[Math.floor(rnd() * pool.length)];
        client.makeUnaryRequest(METHODS[op], passThrough, passThrough, request, new grpc.Metadata(), {}, (err, response) => {
          const ended = performance.now();
          if (err) {
            errorCodes[grpc.status[err.code] ?? String(err.code)] = (errorCodes[grpc.status[err.code] ?? String(err.code)] ?? 0) + 1;
            firstError ??= `${op}: ${grpc.status[err.code]} ${err.details}`;
          } else if (op === "list" && response && fromBinary(ListSecretsResponseSchema, response).paths.length < task.data.listPageSize) {
            shortPages++;
          }
          record(op, started, ended, err !== null);
          issue();
        });
      };
      issue();
    };

    // Open loop: a timer sends the calls due since the last tick, each timed
    // from when it was due; calls beyond the cap of outstanding ones count as
    // errors (the server fell behind the rate), not as silently skipped.
    const openLoop = (rate: number) => {
      const interval = 1000 / rate;
      let due = performance.now();
      let outstanding = 0;
      let next = 0;
      const tick = () => {
        const now = performance.now();
        while (due <= now) {
          const scheduled = due;
          due += interval;
          if (scheduled >= measureTo) {
            clearInterval(timer);
            const settle = () => (outstanding === 0 ? finish() : setTimeout(settle, 5));
            return settle();
          }
          const op = pick();
          if (outstanding >= task.inFlight) {
            errorCodes.OVERLOADED = (errorCodes.OVERLOADED ?? 0) + 1;
            firstError ??= `${op}: more than ${task.inFlight} calls outstanding at ${rate}/s`;
            record(op, scheduled, scheduled, true);
            continue;
          }
          const pool = requests[op]!;
          const request = pool.length === 1 ? pool[0] : pool[Math.floor(rnd() * pool.length)];
          outstanding++;
          clients[next++ % clients.length].makeUnaryRequest(METHODS[op], passThrough, passThrough, request, new grpc.Metadata(), {}, (err) => {
            outstanding--;
            if (err) {
              errorCodes[grpc.status[err.code] ?? String(err.code)] = (errorCodes[grpc.status[err.code] ?? String(err.code)] ?? 0) + 1;
              firstError ??= `${op}: ${grpc.status[err.code]} ${err.details}`;
            }
            record(op, scheduled, performance.now(), err !== null);
          });
        }
      };
      const timer = setInterval(tick, Math.max(1, Math.min(5, interval)));
      tick();
    };

    const begin = () => {
      if (task.rate !== undefined) return openLoop(task.rate);
      for (let i = 0; i < task.inFlight; i++) slot(clients[i % clients.length]);
    };
    const wait = origin - performance.now();
    if (wait > 0) setTimeout(begin, wait);
    else begin();
  });
}

export function close(prepared: Prepared): void {
  for (const c of prepared.clients) c.close();
}

// Run as a forked process: prepare, report ready, wait for "go", run, report.
if (process.send !== undefined && process.argv[2] === "--worker") {
  const send = (m: WorkerMessage) => process.send!(m);
  let prepared: Prepared | undefined;
  process.on("message", (message: ParentMessage) => {
    if (message.type === "prepare") {
      prepare(message.task).then(
        (p) => {
          prepared = p;
          send({ type: "ready" });
        },
        (err: Error) => send({ type: "failed", message: err.message }),
      );
    } else if (message.type === "go" && prepared) {
      const p = prepared;
      run(p, message.startAt).then((result) => {
        close(p);
        send({ type: "result", result });
        process.disconnect();
      });
    }
  });
}
