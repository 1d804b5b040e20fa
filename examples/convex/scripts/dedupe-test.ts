/**
 * A repeated webhook-id is ignored: runs the HTTP action and the mutation of convex/ in Node,
 * on an in-memory stand-in for ctx.db, and exits non-zero if a check fails.
 *   npm test    (= esbuild scripts/dedupe-test.ts --bundle --platform=node, then node)
 * parascribe's Python tests run it too (tests/unit/test_convex_example.py).
 */
import assert from "node:assert/strict";
import { getFunctionName } from "convex/server";
import type { DatabaseWriter } from "../convex/_generated/server";
import http from "../convex/http";
import { applyWebhook, applyWebhookOnce, type WebhookArgs } from "../convex/jobs";

type Row = Record<string, unknown> & { _id: string };

/** Just what the mutation uses of ctx.db: an equality index lookup, insert, patch and replace. */
class MemoryDb {
  readonly tables = new Map<string, Row[]>();
  private nextId = 0;

  rows(table: string): Row[] {
    if (!this.tables.has(table)) this.tables.set(table, []);
    return this.tables.get(table)!;
  }

  query(table: string) {
    return {
      withIndex: (_index: string, range: (q: { eq(field: string, value: unknown): unknown }) => unknown) => {
        const wanted: [string, unknown][] = [];
        const q = { eq: (field: string, value: unknown) => (wanted.push([field, value]), q) };
        range(q);
        const hits = this.rows(table).filter((row) => wanted.every(([field, value]) => row[field] === value));
        return {
          unique: async () => {
            assert.ok(hits.length <= 1, `${table}: more than one row for ${JSON.stringify(wanted)}`);
            return hits[0] === undefined ? null : { ...hits[0] };
          },
        };
      },
    };
  }

  async insert(table: string, doc: Record<string, unknown>): Promise<string> {
    const _id = `${table}:${++this.nextId}`;
    this.rows(table).push({ ...doc, _id });
    return _id;
  }

  private find(id: string): Row {
    const row = this.rows(id.split(":")[0]).find((r) => r._id === id);
    assert.ok(row, `no document ${id}`);
    return row;
  }

  async patch(id: string, fields: Record<string, unknown>): Promise<void> {
    Object.assign(this.find(id), fields);
  }

  async replace(id: string, doc: Record<string, unknown>): Promise<void> {
    const row = this.find(id);
    for (const key of Object.keys(row)) if (key !== "_id") delete row[key];
    Object.assign(row, doc);
  }
}

const encoder = new TextEncoder();
const SECRET = "whsec_" + Buffer.from("a test secret of 32 bytes, ok?!!").toString("base64");

/** A webhook signed as parascribe signs it (Standard Webhooks, HMAC-SHA256 over id.timestamp.body). */
async function signedRequest(jobId: string, status: "done" | "failed", timestamp: number): Promise<Request> {
  const body = JSON.stringify({
    type: `transcription.${status}`,
    job_id: jobId,
    status,
    reason: status === "failed" ? "a chunk failed" : null,
    outputs: status === "done" ? { json: `gs://transcripts/talk/${jobId}/talk.json` } : {},
    summary: { duration_s: 60, word_count: 150, engines: ["parakeet"], cost_usd: 0.01, deepgram_only_usd: 0.05,
               savings_usd: 0.04 },
    source: { bucket: "uploads", name: "talk.mp3", generation: "1", uri: "gs://uploads/talk.mp3" },
    created_at: "2026-05-01T10:00:00+00:00",
    finished_at: "2026-05-01T10:03:12+00:00",
  });
  const key = await crypto.subtle.importKey("raw", Buffer.from(SECRET.slice("whsec_".length), "base64"),
    { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  const mac = await crypto.subtle.sign("HMAC", key, encoder.encode(`${jobId}.${timestamp}.${body}`));
  return new Request("https://example.convex.site/parascribe/webhook", {
    method: "POST",
    body,
    headers: {
      "content-type": "application/json",
      "webhook-id": jobId,
      "webhook-timestamp": String(timestamp),
      "webhook-signature": `v1,${Buffer.from(mac).toString("base64")}`,
    },
  });
}

type Handler<Ctx, Arg, Out> = { _handler: (ctx: Ctx, arg: Arg) => Promise<Out> };

async function main(): Promise<void> {
  const db = new MemoryDb();
  const outcomes: string[] = [];
  // The registered mutation, run the way Convex runs it from ctx.runMutation.
  const mutation = applyWebhook as unknown as Handler<{ db: DatabaseWriter }, WebhookArgs, string>;
  const ctx = {
    runMutation: async (ref: unknown, args: WebhookArgs) => {
      assert.equal(getFunctionName(ref as Parameters<typeof getFunctionName>[0]), "jobs:applyWebhook");
      const outcome = await mutation._handler({ db: db as unknown as DatabaseWriter }, args);
      outcomes.push(outcome);
      return outcome;
    },
  };
  const match = http.lookup("/parascribe/webhook", "POST");
  assert.ok(match, "no POST /parascribe/webhook route");
  const route = match[0] as unknown as Handler<typeof ctx, Request, Response>;
  process.env.PARASCRIBE_WEBHOOK_SECRET = SECRET;
  const now = Math.floor(Date.now() / 1000);

  // The first delivery of j1 applies it.
  assert.equal((await route._handler(ctx, await signedRequest("j1", "done", now))).status, 204);
  const first = structuredClone(db.rows("transcriptionJobs"));
  assert.equal(first.length, 1);
  assert.equal(first[0].status, "done");

  // The same webhook-id again (a retry, a second merger, a redelivery; fresh timestamp and signature,
  // even a different body) is answered 204 and changes no job.
  assert.equal((await route._handler(ctx, await signedRequest("j1", "done", now + 1))).status, 204);
  assert.equal((await route._handler(ctx, await signedRequest("j1", "failed", now + 2))).status, 204);
  assert.deepEqual(db.rows("transcriptionJobs"), first);

  // Another job applies.
  assert.equal((await route._handler(ctx, await signedRequest("j2", "failed", now))).status, 204);
  assert.deepEqual(outcomes, ["applied", "duplicate", "duplicate", "applied"]);
  assert.deepEqual(db.rows("transcriptionJobs").map((j) => [j.jobId, j.status]), [["j1", "done"], ["j2", "failed"]]);
  const processed = db.rows("processedWebhooks").map((r) => [r.webhookId, r.deliveries]);
  assert.deepEqual(processed, [["j1", 3], ["j2", 1]]);

  // A bad signature never reaches the mutation.
  const forged = await signedRequest("j3", "done", now);
  forged.headers.set("webhook-signature", "v1,bm9wZQ==");
  assert.equal((await route._handler(ctx, forged)).status, 401);
  assert.equal(outcomes.length, 4);

  // applyWebhookOnce on its own: a job document left by an earlier version of this example is replaced once.
  const direct = new MemoryDb();
  await direct.insert("transcriptionJobs", { jobId: "j4", status: "failed" });
  const args = { ...(first[0] as unknown as WebhookArgs), webhookId: "j4", jobId: "j4" };
  delete (args as Partial<Row>)._id;
  const db4 = direct as unknown as DatabaseWriter;
  assert.equal(await applyWebhookOnce(db4, args, 1), "applied");
  assert.equal(await applyWebhookOnce(db4, { ...args, status: "failed" }, 2), "duplicate");
  assert.equal(direct.rows("transcriptionJobs").length, 1);
  assert.equal(direct.rows("transcriptionJobs")[0].status, "done");

  process.stdout.write(JSON.stringify({ ok: true, outcomes, processed }) + "\n");
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? err.stack : String(err)}\n`);
  process.exit(1);
});
