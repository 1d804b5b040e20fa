import { defineSchema, defineTable } from "convex/server";
import { v } from "convex/values";

/** One document per parascribe job, kept small: pointers to GCS, never the transcript. */
export default defineSchema({
  transcriptionJobs: defineTable({
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
    /** webhook-timestamp of the newest delivery applied; older ones are ignored. */
    webhookTimestamp: v.number(),
    deliveries: v.number(),
  }).index("by_jobId", ["jobId"]),
});
