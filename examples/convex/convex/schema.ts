import { defineSchema, defineTable } from "convex/server";
import { v } from "convex/values";
import { jobFields } from "./jobFields";

/** One document per parascribe job, kept small: pointers to GCS, never the transcript. */
export default defineSchema({
  transcriptionJobs: defineTable({
    ...jobFields,
    deliveries: v.number(),
  }).index("by_jobId", ["jobId"]),
});
