import { v } from "convex/values";

/** The job fields a verified webhook carries: the table's shape and the upsert's arguments. */
export const jobFields = {
  jobId: v.string(),
  status: v.union(v.literal("done"), v.literal("failed")),
  reason: v.union(v.string(), v.null()),
  /** Output format ("json", "srt", "vtt", "txt", "words.csv", "segments.csv") and its gs:// URI. */
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
  /** webhook-timestamp of the delivery applied (the first one to arrive; repeats are ignored). */
  webhookTimestamp: v.number(),
};
