// What allocated the objects a forced collection kept: `node
// dist/bench/heap-sampling-summary.js file.heapprofile [top]`, for a sampling
// heap profile from bench/server-probe.ts (BENCH_HEAP_SAMPLING_FILE). Sampled
// bytes still alive, by allocating function (self), and by the first frame of
// the stack that is in this repository's code (src/ or bench/), so a
// library's allocation is charged to the Nexus code that asked for it.

import { readFileSync } from "node:fs";

interface Frame {
  readonly functionName: string;
  readonly url: string;
  readonly lineNumber: number;
}
interface ProfileNode {
  readonly callFrame: Frame;
  readonly selfSize: number;
  readonly children: ProfileNode[];
}

const file = process.argv[2];
const top = Number(process.argv[3] ?? 30);
if (!file) throw new Error("usage: heap-sampling-summary file.heapprofile [top]");
const profile = JSON.parse(readFileSync(file, "utf8")) as { head: ProfileNode };

const where = (f: Frame) => `${f.functionName || "(anonymous)"} ${f.url.replace(/^.*\/(node_modules|dist)\//, "$1/")}:${f.lineNumber + 1}`;
const ours = (f: Frame) => /\/dist\/(src|bench)\//.test(f.url);
const bySelf = new Map<string, number>();
const byOurs = new Map<string, number>();
const byLibrary = new Map<string, number>();
let total = 0;
const walk = (node: ProfileNode, stack: Frame[]) => {
  const here = [...stack, node.callFrame];
  if (node.selfSize > 0) {
    total += node.selfSize;
    bySelf.set(where(node.callFrame), (bySelf.get(where(node.callFrame)) ?? 0) + node.selfSize);
    const mine = [...here].reverse().find(ours);
    const key = mine ? where(mine) : "(no Nexus frame)";
    byOurs.set(key, (byOurs.get(key) ?? 0) + node.selfSize);
    const lib = /node_modules\/(@[^/]+\/[^/]+|[^/]+)/.exec(node.callFrame.url)?.[1] ?? (node.callFrame.url.startsWith("node:") ? "node:" + node.callFrame.url.slice(5).split("/")[0] : ours(node.callFrame) ? "nexus" : node.callFrame.url || "(native)");
    byLibrary.set(lib, (byLibrary.get(lib) ?? 0) + node.selfSize);
  }
  for (const c of node.children) walk(c, here);
};
walk(profile.head, []);
const mb = (n: number) => (n / 1024 / 1024).toFixed(2).padStart(8);
const show = (title: string, m: Map<string, number>) => {
  console.log(`\n## ${title}\n`);
  for (const [k, v] of [...m].sort((a, b) => b[1] - a[1]).slice(0, top)) console.log(`${mb(v)} MB  ${k}`);
};
console.log(`sampled live bytes: ${mb(total)} MB`);
show("by library of the allocating function", byLibrary);
show("by allocating function", bySelf);
show("by the innermost Nexus frame on the allocating stack", byOurs);
