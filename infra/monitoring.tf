# Dashboard and alerts over the metric types of parascribe.metric_names.

resource "google_monitoring_dashboard" "parascribe" {
  # The template's only placeholders are ${metric.<name>}; $${...} stays for Monitoring's legends.
  dashboard_json = templatefile("${path.module}/dashboards/parascribe.json", { metric = var.metric_types })
  depends_on     = [google_project_service.apis]
}

# An alert policy on a custom metric cannot be created before the metric exists.
# These two have no labels; parascribe.metrics writes them as GAUGE points, a count per flush window.
resource "google_monitoring_metric_descriptor" "alerted" {
  for_each = var.create_metric_descriptors ? toset(["deepgram_auth_errors", "webhook_failures"]) : toset([])

  type         = var.metric_types[each.key]
  metric_kind  = "GAUGE"
  value_type   = var.metric_value_types[each.key]
  unit         = "1"
  display_name = "parascribe ${replace(each.key, "_", " ")}"
  description  = "Count per flush interval, written by parascribe's metrics exporter."
  depends_on   = [google_project_service.apis]
}

resource "google_monitoring_notification_channel" "email" {
  for_each     = toset(var.alert_emails)
  display_name = "parascribe alerts: ${each.value}"
  type         = "email"
  labels = {
    email_address = each.value
  }
}

locals {
  alert_channels = [for c in google_monitoring_notification_channel.email : c.id]

  counter_alerts = {
    deepgram_auth_errors = {
      name = "Deepgram rejected the API key"
      doc  = "Deepgram answered 401/403. Rotate the `${local.secrets.deepgram_api_key}` secret in Secret Manager; chunks fall back or fail until then."
    }
    webhook_failures = {
      name = "Convex webhook deliveries failing"
      doc  = "The merger could not deliver a signed webhook after all retries. Check CONVEX_WEBHOOK_URL, the `${local.secrets.convex_webhook_secret}` secret and the Convex HTTP action."
    }
  }
}

resource "google_monitoring_alert_policy" "counter" {
  for_each = local.counter_alerts

  display_name          = "parascribe: ${each.value.name}"
  combiner              = "OR"
  notification_channels = local.alert_channels

  conditions {
    display_name = "${var.metric_types[each.key]} > 0"
    condition_threshold {
      filter          = "metric.type=\"${var.metric_types[each.key]}\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
      }
      trigger {
        count = 1
      }
    }
  }

  alert_strategy {
    auto_close = "1800s"
  }

  documentation {
    content   = each.value.doc
    mime_type = "text/markdown"
  }

  depends_on = [google_monitoring_metric_descriptor.alerted]
}

resource "google_monitoring_alert_policy" "dead_letter_backlog" {
  display_name          = "parascribe: dead-letter backlog"
  combiner              = "OR"
  notification_channels = local.alert_channels

  conditions {
    display_name = "${local.dead_letter_subscription} undelivered messages"
    condition_threshold {
      filter          = "resource.type=\"pubsub_subscription\" AND resource.label.subscription_id=\"${local.dead_letter_subscription}\" AND metric.type=\"pubsub.googleapis.com/subscription/num_undelivered_messages\""
      comparison      = "COMPARISON_GT"
      threshold_value = var.dlq_backlog_threshold
      duration        = "600s"
      aggregations {
        alignment_period   = "60s"
        per_series_aligner = "ALIGN_MAX"
      }
      trigger {
        count = 1
      }
    }
  }

  alert_strategy {
    auto_close = "1800s"
  }

  documentation {
    content   = "Messages that exhausted their delivery attempts are not being handled: the dead-letter handler (merger, `${var.subscriptions[local.dead_letter_subscription].push_path}`) is failing or unreachable. Check the merger's logs."
    mime_type = "text/markdown"
  }

  depends_on = [google_pubsub_subscription.subs]
}
