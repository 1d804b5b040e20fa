import { defineSchema, defineTable } from "convex/server";
import { v } from "convex/values";
import { jobFields } from "./jobFields";

export default defineSchema({
  /** One document per parascribe job, kept small: pointers to GCS, never the transcript. */
  transcriptionJobs: defineTable({
    ...jobFields,
    /** Only in documents written by an earlier version of this example (now in processedWebhooks). */
    deliveries: v.optional(v.number()),
  }).index("by_jobId", ["jobId"]),
  /**
   * Every `webhook-id` already applied, so a repeated delivery is ignored (delivery is at least
   * once). One row per job; `deliveries` counts how often it arrived.
   */
  processedWebhooks: defineTable({
    webhookId: v.string(),
    deliveries: v.number(),
    firstDeliveredAt: v.number(),
    lastDeliveredAt: v.number(),
  }).index("by_webhookId", ["webhookId"]),
});
