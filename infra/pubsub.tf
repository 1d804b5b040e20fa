# Topics and subscriptions from parascribe.names (through names.auto.tfvars.json).

resource "google_pubsub_topic" "topics" {
  for_each = toset(values(var.topics))

  name   = each.value
  labels = var.labels
  # Keep a week of dead letters around for inspection even after the handler acked them.
  message_retention_duration = each.value == var.topics.dead_letter ? "604800s" : null
  depends_on                 = [google_project_service.apis]
}

locals {
  # Base URL of each push target; the subscription's push_path is appended.
  push_urls = {
    router          = google_cloudfunctions2_function.router.service_config[0].uri
    deepgram_worker = google_cloud_run_v2_service.http["deepgram_worker"].uri
    merger          = google_cloud_run_v2_service.http["merger"].uri
  }
}

resource "google_pubsub_subscription" "subs" {
  for_each = var.subscriptions

  name                       = each.key
  topic                      = google_pubsub_topic.topics[each.value.topic].id
  ack_deadline_seconds       = each.value.ack_deadline_s
  message_retention_duration = "604800s"
  labels                     = merge(var.labels, { service = local.service_names[each.value.service] })

  expiration_policy {
    ttl = "" # never expire, however quiet the pipeline is
  }

  retry_policy {
    minimum_backoff = var.retry_minimum_backoff
    maximum_backoff = var.retry_maximum_backoff
  }

  dynamic "dead_letter_policy" {
    for_each = each.value.dead_letter ? [each.value.max_delivery_attempts] : []
    content {
      dead_letter_topic     = google_pubsub_topic.topics[var.topics.dead_letter].id
      max_delivery_attempts = dead_letter_policy.value
    }
  }

  dynamic "push_config" {
    for_each = each.value.push_path == null ? [] : [each.value]
    content {
      push_endpoint = "${local.push_urls[push_config.value.service]}${push_config.value.push_path}"
      oidc_token {
        service_account_email = google_service_account.push.email
        audience              = local.push_urls[push_config.value.service]
      }
    }
  }

  # Push and dead-lettering need these grants in place before the first message.
  depends_on = [
    google_pubsub_topic_iam_member.pubsub_agent_dead_letter,
    google_service_account_iam_member.pubsub_agent_mints_push_tokens,
    google_cloud_run_v2_service_iam_member.push_invokes,
  ]
}
