# The router: Cloud Functions gen2, python311, entry point handle_upload.
#
# Trigger: the router-push subscription from parascribe.names pushes to the
# function's URL (OIDC-authenticated), exactly as the local stack does. A push
# body becomes a google.cloud.pubsub.topic.v1.messagePublished CloudEvent in
# functions-framework. This keeps the dead-letter policy and retry backoff that
# names.py asks for; an Eventarc trigger would create its own subscription that
# Terraform cannot give a dead-letter topic.

locals {
  router_zip = var.router_zip != "" ? var.router_zip : "${path.module}/../build/router.zip"
  # Where Cloud Functions stages a gen2 function's source (it creates the bucket itself).
  function_sources_bucket = "gcf-v2-sources-${data.google_project.this.number}-${var.region}"
}

# The router's built image and buildpacks cache. A repository of its own, so the build
# account can push here without being able to touch the service images in `images`.
resource "google_artifact_registry_repository" "functions" {
  location      = var.region
  repository_id = "${var.artifact_repository}-functions"
  format        = "DOCKER"
  description   = "parascribe router function images (Cloud Functions builds)"
  labels        = var.labels
  depends_on    = [google_project_service.apis]
}

resource "google_storage_bucket_object" "router_source" {
  # Content-addressed: a new zip is a new object, which redeploys the function.
  name   = "router/router-${filemd5(local.router_zip)}.zip"
  bucket = google_storage_bucket.build.name
  source = local.router_zip
}

resource "google_cloudfunctions2_function" "router" {
  name     = local.service_names.router
  location = var.region
  labels   = var.labels

  build_config {
    runtime           = "python311"
    entry_point       = "handle_upload"
    service_account   = google_service_account.function_build.id
    docker_repository = google_artifact_registry_repository.functions.id
    source {
      storage_source {
        bucket = google_storage_bucket.build.name
        object = google_storage_bucket_object.router_source.name
      }
    }
  }

  service_config {
    service_account_email            = google_service_account.service["router"].email
    available_memory                 = "1Gi"
    available_cpu                    = "1"
    timeout_seconds                  = local.ack_deadline_s.router
    max_instance_count               = var.router_max_instances
    max_instance_request_concurrency = var.router_concurrency
    ingress_settings                 = "ALLOW_INTERNAL_ONLY"
    all_traffic_on_latest_revision   = true
    environment_variables            = local.env.router

    dynamic "secret_environment_variables" {
      for_each = local.secret_env.router
      content {
        key        = secret_environment_variables.key
        project_id = var.project_id
        secret     = google_secret_manager_secret.secrets[secret_environment_variables.value].secret_id
        version    = "latest"
      }
    }
  }

  depends_on = [
    google_project_service.apis,
    google_project_iam_member.function_build_logs,
    google_project_iam_member.function_build_reads_staged_source,
    google_storage_bucket_iam_member.function_build_reads_source,
    google_artifact_registry_repository_iam_member.function_build_pushes,
    google_secret_manager_secret_iam_member.service,
  ]
}
