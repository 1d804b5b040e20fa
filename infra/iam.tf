# One service account per service, each with only what its code does.
# infra/README.md explains every grant.

resource "google_service_account" "service" {
  for_each     = local.service_names
  account_id   = "parascribe-${each.value}"
  display_name = "parascribe ${each.value}"
}

# Identity Pub/Sub presents (OIDC) when it pushes to the router, Deepgram worker and merger.
resource "google_service_account" "push" {
  account_id   = "parascribe-push"
  display_name = "parascribe Pub/Sub push invoker"
}

# Identity the router function's source build runs as.
resource "google_service_account" "function_build" {
  account_id   = "parascribe-fn-build"
  display_name = "parascribe router function build"
}

locals {
  pubsub_agent = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"

  bucket_grants = [
    { service = "router", bucket = "uploads", role = "roles/storage.objectViewer" },
    { service = "router", bucket = "state", role = "roles/storage.objectUser" },
    { service = "asr_worker", bucket = "uploads", role = "roles/storage.objectViewer" },
    # The workers only read a job's status (to skip chunks of jobs that already failed); they never write state.
    { service = "asr_worker", bucket = "state", role = "roles/storage.objectViewer" },
    { service = "asr_worker", bucket = "models", role = "roles/storage.objectViewer" },
    { service = "deepgram_worker", bucket = "uploads", role = "roles/storage.objectViewer" },
    { service = "deepgram_worker", bucket = "state", role = "roles/storage.objectViewer" },
    { service = "merger", bucket = "state", role = "roles/storage.objectUser" },
    # Outputs are written once with ifGenerationMatch=0 and never read. objectCreator would do for the
    # first write, but a repeated write (a redelivery after a crash) must fail with 412, which the merger
    # takes as "already written"; an upload over an existing object needs storage.objects.delete, and
    # without it GCS may answer 403 instead. infra/README.md explains.
    { service = "merger", bucket = "transcripts", role = "roles/storage.objectUser" },
    # The API creates objects under api/<request_id>/ (server-side copies, resumable upload sessions) with
    # ifGenerationMatch=0 under fresh names, and reads them back to learn an upload's generation (its job id).
    { service = "api", bucket = "uploads", role = "roles/storage.objectCreator" },
    { service = "api", bucket = "uploads", role = "roles/storage.objectViewer" },
    { service = "api", bucket = "state", role = "roles/storage.objectUser" },         # requests/ records (CAS), index; job status reads
    { service = "api", bucket = "transcripts", role = "roles/storage.objectViewer" }, # what its signed URLs read, as it
    { service = "ingest_worker", bucket = "uploads", role = "roles/storage.objectCreator" },
    { service = "ingest_worker", bucket = "state", role = "roles/storage.objectUser" }, # updates requests/ records (CAS)
  ]

  # Topic roles (keys of var.topics) each service publishes to.
  publish_grants = [
    { service = "router", topic = "asr_gpu" },
    { service = "router", topic = "asr_deepgram" },
    { service = "router", topic = "asr_results" }, # JobFailed for uploads it rejects
    { service = "asr_worker", topic = "asr_results" },
    { service = "asr_worker", topic = "asr_deepgram" }, # chunks the GPU engine cannot take fall back
    { service = "deepgram_worker", topic = "asr_results" },
    # The dead-letter handler falls back once: a GPU task goes to Deepgram (never the other way).
    { service = "merger", topic = "asr_deepgram" },
    { service = "api", topic = "ingest_requests" }, # URLs for the ingest worker
    { service = "api", topic = "asr_results" },     # JobFailed for a job cancelled through the API
  ]

  project_roles = ["roles/logging.logWriter", "roles/monitoring.metricWriter"]

  # Push targets: the router function's underlying Cloud Run service and the two push services.
  invoked_services = {
    router          = google_cloudfunctions2_function.router.name
    deepgram_worker = google_cloud_run_v2_service.http["deepgram_worker"].name
    merger          = google_cloud_run_v2_service.http["merger"].name
  }
}

resource "google_storage_bucket_iam_member" "service" {
  for_each = { for g in local.bucket_grants : "${g.service}/${g.bucket}/${g.role}" => g }
  bucket   = google_storage_bucket.buckets[each.value.bucket].name
  role     = each.value.role
  member   = google_service_account.service[each.value.service].member
}

resource "google_pubsub_topic_iam_member" "service_publishes" {
  for_each = { for g in local.publish_grants : "${g.service}/${g.topic}" => g }
  topic    = google_pubsub_topic.topics[var.topics[each.value.topic]].id
  role     = "roles/pubsub.publisher"
  member   = google_service_account.service[each.value.service].member
}

resource "google_pubsub_subscription_iam_member" "pulls" {
  for_each     = local.pull_subscriptions
  subscription = google_pubsub_subscription.subs[each.value].id
  role         = "roles/pubsub.subscriber"
  member       = google_service_account.service[each.key].member
}

resource "google_project_iam_member" "service" {
  for_each = { for pair in setproduct(keys(local.service_names), local.project_roles) : "${pair[0]}/${pair[1]}" => pair }
  project  = var.project_id
  role     = each.value[1]
  member   = google_service_account.service[each.value[0]].member
}

resource "google_secret_manager_secret_iam_member" "service" {
  for_each = merge([
    for svc, env in local.secret_env : { for _, secret in env : "${svc}/${secret}" => { service = svc, secret = secret } }
  ]...)
  secret_id = google_secret_manager_secret.secrets[each.value.secret].id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.service[each.value.service].member
}

# The Deepgram worker hands Deepgram V4 signed URLs. Cloud Run credentials hold no
# private key, so it signs through the IAM signBlob API as itself.
resource "google_service_account_iam_member" "deepgram_worker_signs_urls" {
  service_account_id = google_service_account.service["deepgram_worker"].name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = google_service_account.service["deepgram_worker"].member
}

# The API redirects to V4 signed URLs of transcripts, signed through IAM signBlob as itself.
resource "google_service_account_iam_member" "api_signs_urls" {
  service_account_id = google_service_account.service["api"].name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = google_service_account.service["api"].member
}

# --- Pub/Sub push authentication -------------------------------------------

resource "google_cloud_run_v2_service_iam_member" "push_invokes" {
  for_each = local.invoked_services
  location = var.region
  name     = each.value
  role     = "roles/run.invoker"
  member   = google_service_account.push.member
}

# Pub/Sub's service agent mints the OIDC tokens for the push identity.
resource "google_service_account_iam_member" "pubsub_agent_mints_push_tokens" {
  service_account_id = google_service_account.push.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_agent
}

# --- Dead-lettering: the service agent forwards, so it must publish and subscribe.

resource "google_pubsub_topic_iam_member" "pubsub_agent_dead_letter" {
  topic  = google_pubsub_topic.topics[var.topics.dead_letter].id
  role   = "roles/pubsub.publisher"
  member = local.pubsub_agent
}

resource "google_pubsub_subscription_iam_member" "pubsub_agent_acks_dead_letters" {
  for_each     = { for name, s in var.subscriptions : name => s if s.dead_letter }
  subscription = google_pubsub_subscription.subs[each.key].id
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_agent
}

# --- Router function build ---------------------------------------------------
# What a Cloud Functions gen2 build needs from a user-specified build account, each
# on the one resource it is for: write build logs, read the source archive, push
# the image (and buildpacks cache) to the functions repository.

resource "google_project_iam_member" "function_build_logs" {
  project = var.project_id
  role    = "roles/logging.logWriter"
  member  = google_service_account.function_build.member
}

resource "google_storage_bucket_iam_member" "function_build_reads_source" {
  bucket = google_storage_bucket.build.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.function_build.member
}

# Cloud Functions stages the source in its own bucket, gcf-v2-sources-<project number>-<region>,
# which it creates on the first deploy, so the grant cannot name that bucket as a resource:
# it is a project grant limited by an IAM condition to that bucket and its objects.
resource "google_project_iam_member" "function_build_reads_staged_source" {
  project = var.project_id
  role    = "roles/storage.objectViewer"
  member  = google_service_account.function_build.member
  condition {
    title       = "gcf-v2-sources bucket only"
    description = "Cloud Functions' staged copy of the router's source"
    expression  = "resource.name.startsWith(\"projects/_/buckets/${local.function_sources_bucket}\")"
  }
}

resource "google_artifact_registry_repository_iam_member" "function_build_pushes" {
  project    = google_artifact_registry_repository.functions.project
  location   = google_artifact_registry_repository.functions.location
  repository = google_artifact_registry_repository.functions.name
  role       = "roles/artifactregistry.writer"
  member     = google_service_account.function_build.member
}
