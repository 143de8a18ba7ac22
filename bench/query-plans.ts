// EXPLAIN (ANALYZE, BUFFERS) of the statements on the hot paths, as the server
// runs them: prepared, so PostgreSQL plans them for the actual values for the
// first five executions (custom plan) and may then switch to one plan for any
// value (generic plan). Both are shown. Writes run inside a rolled-back
// transaction.

import type postgres from "postgres";
import { listPrefix, readPath } from "./load-protocol.js";
import { GET_SQL as FLOOR_GET_SQL } from "./database-floor.js";

export interface QueryPlan {
  readonly label: string;
  readonly planMode: "custom" | "generic";
  readonly plan: string;
  readonly executionMs: number;
}

/** SecretStore.listPaths (first page), as in src/store/secret-store.ts. */
const LIST_SQL = `SELECT path FROM secrets
        WHERE path >= $1 AND path < $2 AND path > $3 AND (expires_at IS NULL OR expires_at > now())
        ORDER BY path
        LIMIT $4`;

/** SecretStore.readVersion(path, 0): the statement the database floor runs, with a positional parameter. */
const GET_SQL = FLOOR_GET_SQL.replace(":path", "$1");

export async function explainHotStatements(sql: postgres.Sql): Promise<QueryPlan[]> {
  const plans: QueryPlan[] = [];
  const conn = await sql.reserve();
  try {
    const prefix = listPrefix(0x3f);
    const upper = prefix.slice(0, -1) + String.fromCharCode(prefix.charCodeAt(prefix.length - 1) + 1);
    await conn.unsafe(`PREPARE bench_list(text, text, text, int) AS ${LIST_SQL}`);
    await conn.unsafe(`PREPARE bench_get(text) AS ${GET_SQL}`);
    for (const mode of ["custom", "generic"] as const) {
      await conn.unsafe(`SET plan_cache_mode = force_${mode}_plan`);
      plans.push(await explain(conn, `ListSecrets: SecretStore.listPaths('${prefix}', after '', limit 101)`, mode, `EXECUTE bench_list('${prefix}', '${upper}', '', 101)`));
      plans.push(await explain(conn, `GetSecret: SecretStore.readVersion('${readPath(42)}', 0)`, mode, `EXECUTE bench_get('${readPath(42)}')`));
    }
    await conn.unsafe("RESET plan_cache_mode");
    await conn.unsafe("DEALLOCATE bench_list");
    await conn.unsafe("DEALLOCATE bench_get");
  } finally {
    conn.release();
  }
  return plans;
}

async function explain(conn: postgres.ReservedSql, label: string, planMode: "custom" | "generic", statement: string): Promise<QueryPlan> {
  // Run once unmeasured so the plan and the buffers are warm, as in steady state.
  await conn.unsafe(statement);
  const rows = await conn.unsafe(`EXPLAIN (ANALYZE, BUFFERS) ${statement}`);
  const plan = rows.map((r) => r["QUERY PLAN"] as string).join("\n");
  const executionMs = Number(/Execution Time: ([\d.]+) ms/.exec(plan)?.[1] ?? NaN);
  return { label, planMode, plan, executionMs };
}
