import { v } from "convex/values";
import { internalMutation, query } from "./_generated/server";
import { jobFields } from "./jobFields";

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
