import { v, type Infer } from "convex/values";
import { internalMutation, query, type DatabaseWriter } from "./_generated/server";
import { jobFields } from "./jobFields";

/** What the HTTP action passes on: the `webhook-id` header and the job fields of the verified body. */
export const webhookArgs = { webhookId: v.string(), ...jobFields };
const webhookArgsObject = v.object(webhookArgs);
export type WebhookArgs = Infer<typeof webhookArgsObject>;
export type WebhookOutcome = "applied" | "duplicate";

/**
 * Apply a verified webhook once per `webhook-id`.
 *
 * parascribe delivers at least once: a retry after a lost answer, a merger that crashed after
 * sending and before recording the delivery, or `parascribe webhook redeliver` send the same
 * webhook again, always with the same `webhook-id` (the job id). The first delivery of an id
 * records it in `processedWebhooks` and writes the job; a repeat only counts itself there and
 * leaves the job as it was. A mutation is one serializable transaction, so two copies arriving
 * at once cannot both apply: one commits, the other is retried by Convex and finds the id.
 */
export async function applyWebhookOnce(
  db: DatabaseWriter,
  args: WebhookArgs,
  nowMs: number,
): Promise<WebhookOutcome> {
  const { webhookId, ...job } = args;
  const seen = await db
    .query("processedWebhooks")
    .withIndex("by_webhookId", (q) => q.eq("webhookId", webhookId))
    .unique();
  if (seen !== null) {
    await db.patch(seen._id, { deliveries: seen.deliveries + 1, lastDeliveredAt: nowMs });
    return "duplicate";
  }
  await db.insert("processedWebhooks", { webhookId, deliveries: 1, firstDeliveredAt: nowMs, lastDeliveredAt: nowMs });
  const existing = await db
    .query("transcriptionJobs")
    .withIndex("by_jobId", (q) => q.eq("jobId", job.jobId))
    .unique();
  if (existing === null) {
    await db.insert("transcriptionJobs", job);
  } else {
    await db.replace(existing._id, job);
  }
  return "applied";
}

/** The HTTP action's mutation: the job once per `webhook-id`, repeats ignored (see applyWebhookOnce). */
export const applyWebhook = internalMutation({
  args: webhookArgs,
  returns: v.union(v.literal("applied"), v.literal("duplicate")),
  handler: async (ctx, args) => await applyWebhookOnce(ctx.db, args, Date.now()),
});

/** A job by parascribe job id, for your app's UI. */
export const byJobId = query({
  args: { jobId: v.string() },
  handler: async (ctx, { jobId }) =>
    await ctx.db
      .query("transcriptionJobs")
      .withIndex("by_jobId", (q) => q.eq("jobId", jobId))
      .unique(),
});
