// What a V8 heap snapshot holds, as text: `node dist/bench/heap-summary.js
// file.heapsnapshot [top]`. Self size by kind and constructor, then the
// dominator tree (Cooper–Harvey–Kennedy over strong edges, as DevTools
// computes "retained size"): the nodes that retain the most, each with the
// chain of its dominators up to a GC root, and the retained size summed by
// constructor over the children of each big container. Snapshots come from
// bench/server-probe.ts (BENCH_HEAP_SNAPSHOT_DIR) after a full collection
// under load. Bench-only; reads everything into memory (a 150 MB heap makes a
// ~250 MB snapshot and needs about 1.5 GB here).

import { readFileSync } from "node:fs";

interface Snapshot {
  snapshot: { meta: { node_fields: string[]; node_types: [string[]]; edge_fields: string[]; edge_types: [string[]] }; node_count: number };
  nodes: number[];
  edges: number[];
  strings: string[];
}

const file = process.argv[2];
const top = Number(process.argv[3] ?? 40);
if (!file) throw new Error("usage: heap-summary file.heapsnapshot [top]");
const snap = JSON.parse(readFileSync(file, "utf8")) as Snapshot;
const meta = snap.snapshot.meta;
const NF = meta.node_fields.length;
const EF = meta.edge_fields.length;
const nType = meta.node_fields.indexOf("type");
const nName = meta.node_fields.indexOf("name");
const nSelf = meta.node_fields.indexOf("self_size");
const nEdges = meta.node_fields.indexOf("edge_count");
const eType = meta.edge_fields.indexOf("type");
const eName = meta.edge_fields.indexOf("name_or_index");
const eTo = meta.edge_fields.indexOf("to_node");
const nodeTypes = meta.node_types[0];
const edgeTypes = meta.edge_types[0];
const WEAK = edgeTypes.indexOf("weak");
const SHORTCUT = edgeTypes.indexOf("shortcut");
const ELEMENT = edgeTypes.indexOf("element");
const HIDDEN = edgeTypes.indexOf("hidden");
const { nodes, edges, strings } = snap;
const N = nodes.length / NF;

const firstEdge = new Uint32Array(N + 1);
for (let i = 0, e = 0; i < N; i++) {
  firstEdge[i] = e;
  e += nodes[i * NF + nEdges] * EF;
}
firstEdge[N] = edges.length;

const typeOf = (i: number) => nodeTypes[nodes[i * NF + nType]];
const nameOf = (i: number) => strings[nodes[i * NF + nName]];
const selfOf = (i: number) => nodes[i * NF + nSelf];
const label = (i: number) => {
  const t = typeOf(i);
  const n = nameOf(i);
  if (t === "string" || t === "concatenated string" || t === "sliced string") return `(string) ${JSON.stringify(n.slice(0, 40))}`;
  return t === "object" || t === "closure" ? `${n}${t === "closure" ? "()" : ""}` : `(${t}) ${n.slice(0, 60)}`;
};
const edgeLabel = (e: number) => {
  const t = edges[e + eType];
  const n = edges[e + eName];
  return t === ELEMENT || t === HIDDEN ? `[${n}]` : String(strings[n]);
};
const mb = (n: number) => (n / 1024 / 1024).toFixed(2);

// Self size by kind/constructor.
const bySelf = new Map<string, { size: number; count: number }>();
let total = 0;
for (let i = 0; i < N; i++) {
  const t = typeOf(i);
  const key = t === "object" || t === "closure" || t === "native" ? `${t}: ${nameOf(i).slice(0, 80)}` : t;
  const s = selfOf(i);
  total += s;
  const v = bySelf.get(key) ?? { size: 0, count: 0 };
  v.size += s;
  v.count++;
  bySelf.set(key, v);
}
console.log(`nodes ${N}, total self size ${mb(total)} MB\n\n## Self size by kind / constructor (top ${top})\n`);
for (const [k, v] of [...bySelf].sort((a, b) => b[1].size - a[1].size).slice(0, top)) console.log(`${mb(v.size).padStart(8)} MB ${String(v.count).padStart(9)}  ${k}`);

// Depth-first postorder from the root (node 0) over strong edges.
const strong = (e: number) => edges[e + eType] !== WEAK && edges[e + eType] !== SHORTCUT;
const post = new Int32Array(N).fill(-1);
const order = new Uint32Array(N);
let count = 0;
{
  const stack = new Uint32Array(N);
  const cursor = new Uint32Array(N);
  const seen = new Uint8Array(N);
  let sp = 0;
  stack[sp++] = 0;
  seen[0] = 1;
  cursor[0] = firstEdge[0];
  while (sp > 0) {
    const v = stack[sp - 1];
    let pushed = false;
    while (cursor[v] < firstEdge[v + 1]) {
      const e = cursor[v];
      cursor[v] += EF;
      if (!strong(e)) continue;
      const w = edges[e + eTo] / NF;
      if (seen[w]) continue;
      seen[w] = 1;
      cursor[w] = firstEdge[w];
      stack[sp++] = w;
      pushed = true;
      break;
    }
    if (!pushed) {
      sp--;
      post[v] = count;
      order[count++] = v;
    }
  }
}
// Predecessors (strong edges between reachable nodes), compressed.
const predCount = new Uint32Array(N + 1);
for (let v = 0; v < N; v++) {
  if (post[v] < 0) continue;
  for (let e = firstEdge[v]; e < firstEdge[v + 1]; e += EF) if (strong(e)) predCount[edges[e + eTo] / NF]++;
}
const predStart = new Uint32Array(N + 1);
for (let i = 0; i < N; i++) predStart[i + 1] = predStart[i] + predCount[i];
const preds = new Uint32Array(predStart[N]);
const fill = predStart.slice();
for (let v = 0; v < N; v++) {
  if (post[v] < 0) continue;
  for (let e = firstEdge[v]; e < firstEdge[v + 1]; e += EF) if (strong(e)) preds[fill[edges[e + eTo] / NF]++] = v;
}
// Cooper, Harvey, Kennedy: "A Simple, Fast Dominance Algorithm".
const idom = new Int32Array(N).fill(-1);
idom[0] = 0;
const intersect = (a: number, b: number) => {
  while (a !== b) {
    while (post[a] < post[b]) a = idom[a];
    while (post[b] < post[a]) b = idom[b];
  }
  return a;
};
for (let changed = true; changed; ) {
  changed = false;
  for (let k = count - 2; k >= 0; k--) {
    const v = order[k];
    let d = -1;
    for (let p = predStart[v]; p < predStart[v + 1]; p++) {
      const u = preds[p];
      if (idom[u] < 0) continue;
      d = d < 0 ? u : intersect(u, d);
    }
    if (d >= 0 && idom[v] !== d) {
      idom[v] = d;
      changed = true;
    }
  }
}
const retained = new Float64Array(N);
for (let k = 0; k < count; k++) {
  const v = order[k];
  retained[v] += selfOf(v);
  if (v !== 0) retained[idom[v]] += retained[v];
}
console.log(`\nreachable ${count} nodes, ${mb(retained[0])} MB retained by the root\n`);

// The edge from a dominator's subtree into v: a name for v in its dominator chain.
const edgeInto = (from: number, v: number) => {
  for (let e = firstEdge[from]; e < firstEdge[from + 1]; e += EF) if (strong(e) && edges[e + eTo] / NF === v) return edgeLabel(e);
  for (let p = predStart[v]; p < predStart[v + 1]; p++) {
    const u = preds[p];
    for (let e = firstEdge[u]; e < firstEdge[u + 1]; e += EF) if (strong(e) && edges[e + eTo] / NF === v) return `${label(u)}.${edgeLabel(e)}`;
  }
  return "?";
};
const chain = (v: number) => {
  const parts: string[] = [];
  for (let x = v; x !== 0 && parts.length < 12; x = idom[x]) parts.push(`${label(x)} (${mb(retained[x])}) via ${edgeInto(idom[x], x)}`);
  return parts.join("\n      <- ");
};

// Biggest retainers that are not just their single child's wrapper: nodes
// whose retained size is mostly spread over many children.
const candidates: number[] = [];
for (let v = 1; v < N; v++) if (post[v] >= 0 && retained[v] > 1024 * 1024) candidates.push(v);
candidates.sort((a, b) => retained[b] - retained[a]);
console.log(`## Largest retained sizes (nodes > 1 MB, ${candidates.length}; first ${top})\n`);
const children = new Map<number, number[]>();
for (let v = 1; v < N; v++) if (post[v] >= 0) (children.get(idom[v]) ?? children.set(idom[v], []).get(idom[v])!).push(v);
for (const v of candidates.slice(0, top)) {
  const kids = children.get(v) ?? [];
  const byKind = new Map<string, { size: number; count: number }>();
  for (const k of kids) {
    const key = label(k).replace(/^\(string\).*/, "(string)").slice(0, 60);
    const x = byKind.get(key) ?? { size: 0, count: 0 };
    x.size += retained[k];
    x.count++;
    byKind.set(key, x);
  }
  const parts = [...byKind].sort((a, b) => b[1].size - a[1].size).slice(0, 4).map(([k, x]) => `${x.count}× ${k} ${mb(x.size)}`);
  console.log(`${mb(retained[v]).padStart(8)} MB  ${chain(v)}\n      children: ${parts.join("; ")}\n`);
}

// HEAP_DETAIL=n: the dominator subtrees (with the edges that reach them) of
// the first n children of each of the 6 largest containers, 3 levels deep: what
// one cache entry holds.
const detail = Number(process.env.HEAP_DETAIL ?? 0);
if (detail > 0) {
  const print = (v: number, via: string, depth: number) => {
    console.log(`${"  ".repeat(depth)}${via}: ${label(v)} self ${selfOf(v)} retained ${retained[v]}`);
    if (depth >= 4 || nameOf(v) === "Buffer") return;
    for (let e = firstEdge[v]; e < firstEdge[v + 1]; e += EF) {
      if (!strong(e)) continue;
      const w = edges[e + eTo] / NF;
      if (idom[w] === v || retained[w] > 4096) print(w, edgeLabel(e) + (idom[w] === v ? "" : " (shared)"), depth + 1);
    }
  };
  for (const v of candidates.filter((c) => typeOf(c) === "array").slice(0, 6)) {
    console.log(`\n## ${label(v)} ${mb(retained[v])} MB: ${chain(v).split("\n")[0]}`);
    for (const k of (children.get(v) ?? []).filter((k) => nameOf(k) === "Object").slice(0, detail)) print(k, "entry", 1);
  }
}
