// What the harness reads from /proc about processes it did not write: CPU time
// (utime + stime) of one process or a process tree, resident memory (VmRSS),
// and machine-wide CPU busy time. Linux only, like the machines we measure on.

import { readFileSync, readdirSync } from "node:fs";

/** Clock ticks per second for /proc/<pid>/stat times; 100 on every Linux we run on. */
const CLOCK_TICKS = 100;

/** CPU seconds (user + system) used so far by a process; NaN once it is gone. */
export function processCpuSeconds(pid: number): number {
  try {
    const fields = statFields(pid);
    return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS;
  } catch {
    return NaN;
  }
}

/**
 * CPU seconds used so far by a process and all its descendants: those alive
 * now, and those that have exited and been waited for (their time is in their
 * parent's cutime + cstime) — PostgreSQL's autovacuum and parallel workers
 * come and go within a measured window.
 */
export function processTreeCpuSeconds(rootPid: number): number {
  const children = new Map<number, number[]>();
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const ppid = Number(statFields(Number(entry))[1]);
      const list = children.get(ppid) ?? [];
      list.push(Number(entry));
      children.set(ppid, list);
    } catch {
      // the process exited while we looked
    }
  }
  let total = 0;
  const stack = [rootPid];
  while (stack.length > 0) {
    const pid = stack.pop()!;
    try {
      const fields = statFields(pid);
      total += (Number(fields[11]) + Number(fields[12]) + Number(fields[13]) + Number(fields[14])) / CLOCK_TICKS;
    } catch {
      // the process exited while we looked
    }
    stack.push(...(children.get(pid) ?? []));
  }
  return total;
}

/** Resident set size in MB (VmRSS); NaN once the process is gone. */
export function processRssMb(pid: number): number {
  try {
    const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) / 1024 : NaN;
  } catch {
    return NaN;
  }
}

/** Machine-wide busy and total CPU time in seconds (all cores), from /proc/stat. */
export function machineCpu(): { busy: number; total: number } {
  const line = readFileSync("/proc/stat", "utf8").split("\n")[0];
  const v = line.trim().split(/\s+/).slice(1).map(Number);
  const idle = v[3] + (v[4] ?? 0); // idle + iowait
  const total = v.reduce((a, b) => a + b, 0);
  return { busy: (total - idle) / CLOCK_TICKS, total: total / CLOCK_TICKS };
}

/** Samples a process's RSS every `everyMs` until stopped; reports the maximum. */
export function sampleRss(pid: number, everyMs = 100): { stop(): number } {
  let max = processRssMb(pid);
  const timer = setInterval(() => {
    const rss = processRssMb(pid);
    if (!Number.isNaN(rss) && !(rss <= max)) max = rss;
  }, everyMs);
  return {
    stop() {
      clearInterval(timer);
      const rss = processRssMb(pid);
      return Number.isNaN(rss) ? max : Math.max(max, rss);
    },
  };
}

// Fields after the command name (which may contain spaces and parentheses):
// index 0 is the state, 1 the ppid, 11 utime, 12 stime.
function statFields(pid: number): string[] {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  return stat.slice(stat.lastIndexOf(")") + 2).split(" ");
}
