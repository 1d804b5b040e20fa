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

# The month's spend against MONTHLY_BUDGET_USD: the merger writes budget_used_fraction (spend / budget, from
# the ledger in the state bucket, parascribe.budget) after each finished job, when a budget is set.
resource "google_monitoring_metric_descriptor" "budget" {
  count = var.create_metric_descriptors ? 1 : 0

  type         = var.metric_types["budget_used_fraction"]
  metric_kind  = "GAUGE"
  value_type   = var.metric_value_types["budget_used_fraction"]
  unit         = "1"
  display_name = "parascribe budget used fraction"
  description  = "The month's spend over MONTHLY_BUDGET_USD (mean per flush window), written by the merger."
  depends_on   = [google_project_service.apis]
}

locals {
  budget_alerts = {
    "50"  = { threshold = 0.5, doc = "Half of MONTHLY_BUDGET_USD is spent. `parascribe costs` shows where it went and what would cost less." }
    "80"  = { threshold = 0.8, doc = "80% of MONTHLY_BUDGET_USD is spent. Check `parascribe costs`; at 100% BUDGET_EXHAUSTED_POLICY applies (reject, gpu_only or allow)." }
    "100" = { threshold = 1.0, doc = "MONTHLY_BUDGET_USD is spent: new jobs now follow BUDGET_EXHAUSTED_POLICY (reject fails them with a reason; gpu_only sends every chunk to the GPU). Raise the budget or change the policy." }
  }
}

resource "google_monitoring_alert_policy" "budget" {
  for_each = local.budget_alerts

  display_name          = "parascribe: ${each.key}% of the monthly budget spent"
  combiner              = "OR"
  notification_channels = local.alert_channels

  conditions {
    display_name = "${var.metric_types["budget_used_fraction"]} >= ${each.value.threshold}"
    condition_threshold {
      filter          = "metric.type=\"${var.metric_types["budget_used_fraction"]}\""
      comparison      = "COMPARISON_GT"
      threshold_value = each.value.threshold - 0.000001
      duration        = "0s"
      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_MAX"
        cross_series_reducer = "REDUCE_MAX"
      }
      trigger {
        count = 1
      }
    }
  }

  alert_strategy {
    auto_close = "86400s"
  }

  documentation {
    content   = each.value.doc
    mime_type = "text/markdown"
  }

  depends_on = [google_monitoring_metric_descriptor.budget]
}

# The router reads the GPU subscription's backlog and the ASR worker's instance count (parascribe.router.capacity).
resource "google_project_iam_member" "router_monitoring_viewer" {
  project = var.project_id
  role    = "roles/monitoring.viewer"
  member  = "serviceAccount:${google_service_account.service["router"].email}"
}

# The API's web console draws the dashboard's charts from timeSeries.list (parascribe.api.dashboard).
resource "google_project_iam_member" "api_monitoring_viewer" {
  project = var.project_id
  role    = "roles/monitoring.viewer"
  member  = "serviceAccount:${google_service_account.service["api"].email}"
}
