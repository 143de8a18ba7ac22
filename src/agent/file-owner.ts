// Owner and group of output files, by name or numeric id. Names are looked up
// in /etc/passwd and /etc/group (what a container image has; no NSS here).

import { readFile } from "node:fs/promises";

export function resolveUser(nameOrId: string): Promise<number> {
  return resolve(nameOrId, "/etc/passwd", "user");
}

export function resolveGroup(nameOrId: string): Promise<number> {
  return resolve(nameOrId, "/etc/group", "group");
}

async function resolve(nameOrId: string, file: string, what: string): Promise<number> {
  if (/^\d+$/.test(nameOrId)) return Number(nameOrId);
  const lines = (await readFile(file, "utf8").catch(() => "")).split("\n");
  for (const line of lines) {
    const [name, , id] = line.split(":");
    if (name === nameOrId && /^\d+$/.test(id ?? "")) return Number(id);
  }
  throw new Error(`no ${what} named ${nameOrId} in ${file}`);
}
