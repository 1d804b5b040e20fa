# Buckets from parascribe.names.BUCKETS, plus a build bucket for the router's source zip.

locals {
  # Days after which objects are deleted, by bucket role; roles not listed keep objects.
  retention_days = {
    state   = var.state_retention_days
    uploads = var.uploads_retention_days
  }
}

resource "google_storage_bucket" "buckets" {
  for_each = var.buckets

  name                        = local.bucket_names[each.key]
  location                    = var.region
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false
  labels                      = merge(var.labels, { role = each.key })

  dynamic "lifecycle_rule" {
    for_each = lookup(local.retention_days, each.key, 0) > 0 ? [local.retention_days[each.key]] : []
    content {
      condition {
        age = lifecycle_rule.value
      }
      action {
        type = "Delete"
      }
    }
  }

  # Half-finished resumable uploads of large audio otherwise linger and are billed.
  lifecycle_rule {
    condition {
      age = 7
    }
    action {
      type = "AbortIncompleteMultipartUpload"
    }
  }

  depends_on = [google_project_service.apis]
}

# Source archives for the router function; only Terraform and the function build read it.
resource "google_storage_bucket" "build" {
  name                        = "${var.bucket_prefix}-build"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = true
  labels                      = merge(var.labels, { role = "build" })
  depends_on                  = [google_project_service.apis]
}

# Every finalized upload publishes a JSON_API_V1 notification to audio-uploaded,
# the same message fake-gcs-server publishes locally.
data "google_storage_project_service_account" "gcs" {
  project = var.project_id
}

resource "google_pubsub_topic_iam_member" "gcs_publishes_uploads" {
  topic  = google_pubsub_topic.topics[var.topics.audio_uploaded].id
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${data.google_storage_project_service_account.gcs.email_address}"
}

resource "google_storage_notification" "uploads" {
  bucket         = google_storage_bucket.buckets["uploads"].name
  payload_format = "JSON_API_V1"
  topic          = google_pubsub_topic.topics[var.topics.audio_uploaded].id
  event_types    = ["OBJECT_FINALIZE"]
  depends_on     = [google_pubsub_topic_iam_member.gcs_publishes_uploads]
}
