// The WatchSecrets fan-out scenario (issue 12): `watchers` streams spread
// evenly over two replicas, in groups of five sharing a prefix, so each put
// matches at most five of them; puts at `putsPerSecond` through replica A for
// `durationMs`. Delivery latency is measured per delivered event from just
// before its PutSecret was sent (every put has its own path) to its arrival
// at a watcher — on either replica, so half the deliveries cross replicas.
// Memory per idle stream is the growth of each replica's RSS from opening its
// streams, over how many it opened. Watchers are the bench reader (READ and
// LIST on bench/read/.*), so each event goes through the policy check; every
// ten watchers share one connection (a sidecar has its own, so this counts
// the stream, not a TLS connection).

import { performance } from "node:perf_hooks";
import { SecretService, WatchEventType } from "../gen/spike/nexus/v1/secret_pb.js";
import { grpcNexusClient, type NexusClient } from "../src/client/nexus-client.js";
import { NEXUS_ID, type BenchPki } from "./bench-pki.js";
import { processRssMb } from "./process-stats.js";
import { timings, type Timings } from "./replica-timings.js";

export interface WatchFanoutOptions {
  readonly watchers: number;
  readonly putsPerSecond: number;
  readonly durationMs: number;
}

export interface WatchFanoutResult {
  readonly watchers: number;
  readonly puts: number;
  readonly delivered: number;
  /** Deliveries expected (five per put while every watcher is open) that never came. */
  readonly missing: number;
  readonly latencyMs: Timings;
  /** RSS growth per idle stream, per replica (KB). */
  readonly idleStreamKb: { readonly a: number; readonly b: number };
  readonly errors: number;
}

const GROUP = 5;
const PER_CONNECTION = 10;

interface Replica {
  readonly address: string;
  readonly pid: number;
}

export async function watchFanout(a: Replica, b: Replica, pki: BenchPki, o: WatchFanoutOptions): Promise<WatchFanoutResult> {
  const groups = Math.ceil(o.watchers / GROUP);
  const run = `bench/read/watch/r${Date.now()}`;
  const identity = { ...pki.callers.reader, ca: pki.ca, serverId: NEXUS_ID };
  const clients: NexusClient[] = [];
  const sentAt = new Map<string, number>();
  const samples: number[] = [];
  let errors = 0;
  const stops: Array<() => void> = [];
  const ended: Array<Promise<void>> = [];

  const open = async (replica: Replica, indexes: number[]) => {
    const before = processRssMb(replica.pid);
    let opened = 0;
    for (let i = 0; i < indexes.length; i += PER_CONNECTION) {
      const client = grpcNexusClient(replica.address, identity);
      clients.push(client);
      for (const w of indexes.slice(i, i + PER_CONNECTION)) {
        const prefix = `${run}/g${w % groups}/`;
        let stopped = false;
        let markOpen!: () => void;
        const isOpen = new Promise<void>((resolve) => (markOpen = resolve));
        stops.push(() => (stopped = true));
        ended.push(
          (async () => {
            try {
              for await (const e of client.stream(SecretService.method.watchSecrets, { prefix })) {
                markOpen();
                if (stopped) break;
                if (e.type !== WatchEventType.VERSION_CREATED) continue;
                const sent = sentAt.get(e.path);
                if (sent !== undefined) samples.push(performance.now() - sent);
              }
            } catch {
              if (!stopped) errors++;
            } finally {
              markOpen();
            }
          })(),
        );
        await isOpen; // the first response (a heartbeat) comes when the stream is open
        opened++;
      }
    }
    await new Promise((r) => setTimeout(r, 2000));
    return ((processRssMb(replica.pid) - before) * 1024) / Math.max(1, opened);
  };

  const all = Array.from({ length: o.watchers }, (_, i) => i);
  const idleA = await open(a, all.filter((i) => i % 2 === 0));
  const idleB = await open(b, all.filter((i) => i % 2 === 1));

  const writer = grpcNexusClient(a.address, { ...pki.superuser, ca: pki.ca, serverId: NEXUS_ID });
  clients.push(writer);
  const interval = 1000 / o.putsPerSecond;
  const started = performance.now();
  let puts = 0;
  const inFlight: Array<Promise<void>> = [];
  while (performance.now() - started < o.durationMs) {
    const path = `${run}/g${puts % groups}/p${puts}`;
    sentAt.set(path, performance.now());
    inFlight.push(
      writer.call(SecretService.method.putSecret, { path, data: { k: "v" } }).then((r) => {
        if (r.code !== "OK") errors++;
      }),
    );
    puts++;
    const next = started + puts * interval;
    await new Promise((r) => setTimeout(r, Math.max(0, next - performance.now())));
  }
  await Promise.all(inFlight);
  await new Promise((r) => setTimeout(r, 2000)); // the last deliveries
  stops.forEach((stop) => stop());
  clients.forEach((c) => c.close());
  await Promise.allSettled(ended);
  const expected = puts * Math.min(GROUP, o.watchers);
  return {
    watchers: o.watchers,
    puts,
    delivered: samples.length,
    missing: Math.max(0, expected - samples.length),
    latencyMs: { ...timings(samples), samples: [] }, // the distribution, not 10,000 numbers in the report
    idleStreamKb: { a: idleA, b: idleB },
    errors,
  };
}
