import { v } from "convex/values";
import { internalMutation, query } from "./_generated/server";

export const jobFields = {
  jobId: v.string(),
  status: v.union(v.literal("done"), v.literal("failed")),
  reason: v.union(v.string(), v.null()),
  outputs: v.array(v.object({ format: v.string(), uri: v.string() })),
  summary: v.object({
    durationS: v.union(v.number(), v.null()),
    wordCount: v.number(),
    engines: v.array(v.string()),
    costUsd: v.number(),
    deepgramOnlyUsd: v.number(),
    savingsUsd: v.number(),
  }),
  source: v.union(
    v.object({ bucket: v.string(), name: v.string(), generation: v.string(), uri: v.string() }),
    v.null(),
  ),
  createdAt: v.string(),
  finishedAt: v.union(v.string(), v.null()),
  webhookTimestamp: v.number(),
};

/**
 * Insert or update a job from a verified webhook. Idempotent: the webhook is
 * delivered at least once (retries, `parascribe webhook redeliver`), and a
 * delivery older than the one already applied changes nothing.
 */
export const upsertFromWebhook = internalMutation({
  args: jobFields,
  returns: v.union(v.literal("inserted"), v.literal("updated"), v.literal("stale")),
  handler: async (ctx, args) => {
    const existing = await ctx.db
      .query("transcriptionJobs")
      .withIndex("by_jobId", (q) => q.eq("jobId", args.jobId))
      .unique();
    if (existing === null) {
      await ctx.db.insert("transcriptionJobs", { ...args, deliveries: 1 });
      return "inserted";
    }
    if (args.webhookTimestamp < existing.webhookTimestamp) {
      return "stale";
    }
    await ctx.db.patch(existing._id, { ...args, deliveries: existing.deliveries + 1 });
    return "updated";
  },
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
