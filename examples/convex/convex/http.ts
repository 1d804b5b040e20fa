import { httpRouter } from "convex/server";
import { internal } from "./_generated/api";
import { httpAction } from "./_generated/server";
import { verifyWebhook } from "./webhookSignature";

/** The JSON body parascribe posts when a job is done or failed (pointers and a summary, never the transcript). */
type Payload = {
  job_id: string;
  status: "done" | "failed";
  reason: string | null;
  outputs: Record<string, string>;
  summary: {
    duration_s: number | null;
    word_count: number;
    engines: string[];
    cost_usd: number;
    deepgram_only_usd: number;
    savings_usd: number;
  };
  source: { bucket: string; name: string; generation: string; uri: string } | null;
  created_at: string;
  finished_at: string | null;
};

function text(status: number, message: string): Response {
  return new Response(message, { status, headers: { "content-type": "text/plain" } });
}

const http = httpRouter();

// Serves https://<deployment>.convex.site/parascribe/webhook: set CONVEX_WEBHOOK_URL to it.
http.route({
  path: "/parascribe/webhook",
  method: "POST",
  handler: httpAction(async (ctx, request) => {
    const secret = process.env.PARASCRIBE_WEBHOOK_SECRET;
    if (!secret) return text(500, "PARASCRIBE_WEBHOOK_SECRET is not set on this deployment");
    // Verify the raw bytes: re-serialised JSON would not match the signature.
    const body = new Uint8Array(await request.arrayBuffer());
    const verdict = await verifyWebhook(secret, request.headers, body);
    if (!verdict.ok) return text(verdict.status, verdict.error);

    let payload: Payload;
    try {
      payload = JSON.parse(new TextDecoder().decode(body)) as Payload;
    } catch {
      return text(400, "body is not JSON");
    }
    const webhookId = request.headers.get("webhook-id") ?? ""; // present: verifyWebhook checked it
    if (payload.job_id !== webhookId) return text(400, "job_id does not match webhook-id");
    if (payload.status !== "done" && payload.status !== "failed") return text(400, "status is not done or failed");

    // Delivery is at least once: the mutation applies each webhook-id once and ignores repeats.
    // Both answer 204, so parascribe records the delivery and stops retrying.
    await ctx.runMutation(internal.jobs.applyWebhook, {
      webhookId,
      jobId: payload.job_id,
      status: payload.status,
      reason: payload.reason ?? null,
      outputs: Object.entries(payload.outputs ?? {}).map(([format, uri]) => ({ format, uri })),
      summary: {
        durationS: payload.summary?.duration_s ?? null,
        wordCount: payload.summary?.word_count ?? 0,
        engines: payload.summary?.engines ?? [],
        costUsd: payload.summary?.cost_usd ?? 0,
        deepgramOnlyUsd: payload.summary?.deepgram_only_usd ?? 0,
        savingsUsd: payload.summary?.savings_usd ?? 0,
      },
      source: payload.source ?? null,
      createdAt: payload.created_at,
      finishedAt: payload.finished_at ?? null,
      webhookTimestamp: Number(request.headers.get("webhook-timestamp")),
    });
    return new Response(null, { status: 204 });
  }),
});

export default http;
